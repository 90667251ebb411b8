//! [`Outgoing`]: what one rewrite sends the server and what it records the server will answer,
//! with the attached connection's statements locked. Shared by the rewrite of the client's
//! messages and by the result-type guard, which both add messages of the sidecar's own.

use super::*;

/// The server-bound bytes of one rewrite, its plan, and the connection's statements.
pub(super) struct Outgoing<'a> {
    pub(super) prepared: &'a mut ServerStatements,
    pub(super) plan: &'a Plan,
    pub(super) out: &'a mut Vec<u8>,
}

impl Outgoing<'_> {
    /// Sends `bytes`, whose answers are `expect`.
    pub(super) fn send(&mut self, bytes: &[u8], expect: Expect) {
        self.out.extend_from_slice(bytes);
        self.plan.push(expect);
    }

    /// Sends `statement`'s Parse, after a Close when the connection holds a stale one.
    pub(super) fn send_parse(&mut self, statement: &Statement) {
        if self.prepared.prepare(&statement.server_name) {
            let close = close_statement(&statement.server_name);
            self.send(&close, Expect::InjectedClose(statement.server_name.clone()));
        }
        self.out.extend_from_slice(&statement.parse);
    }

    /// Sends `statement`'s Parse (its ParseComplete swallowed) if the connection lacks it.
    pub(super) fn ensure_prepared(&mut self, statement: &Statement) {
        if !self.prepared.contains(&statement.server_name) {
            self.send_parse(statement);
            self.plan
                .push(Expect::InjectedParse(statement.server_name.clone()));
        }
    }
}
