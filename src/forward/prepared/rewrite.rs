//! [`Rewrite`]: one complete Parse, Bind, Describe or Close of the client's, renamed for the
//! attached connection (see [`super`]), with what the server will answer recorded in the plan.

use super::guard::{Guard, Verdict};
use super::outgoing::Outgoing;
use super::*;
use crate::forward::replay::opens_transaction;

/// How the rewrite of one message ended.
pub(super) enum Step {
    Done,
    /// A Bind waits for its statement's shape on the connection ([`super::guard`]).
    Pause,
}

/// One rewrite, with the connection's statements locked. Each method returns `None` for a
/// malformed message.
pub(super) struct Rewrite<'a> {
    pub(super) statements: &'a mut ClientStatements,
    pub(super) to: Outgoing<'a>,
    /// Set when a Parse begins a transaction.
    pub(super) opened: &'a mut bool,
}

impl Rewrite<'_> {
    /// Rewrites message `tag` with `body`; `guard` says how a Bind is checked.
    pub(super) fn message(&mut self, tag: u8, body: &[u8], guard: Guard) -> Option<Step> {
        match tag {
            b'P' => self.parse(body).map(|()| Step::Done),
            b'B' => self.bind(body, guard),
            b'D' => self.describe(body).map(|()| Step::Done),
            b'C' => self.close(body).map(|()| Step::Done),
            _ => {
                self.to.out.extend_from_slice(&message(tag, body));
                Some(Step::Done)
            }
        }
    }

    /// A named Parse becomes a Parse of the shared server statement, after a Close where the
    /// connection holds it: PostgreSQL parses afresh for every session, and a plan the
    /// connection holds may predate a schema change (answering the Parse ourselves, as
    /// PgBouncer does, a driver's next Describe then got 0A000 where PostgreSQL refuses
    /// nothing: asyncpg surfaced it at prepare, pgJDBC inside transactions).
    fn parse(&mut self, body: &[u8]) -> Option<()> {
        let (name, rest) = cstr(body)?;
        *self.opened |= opens_transaction(rest);
        if drops_all_statements(rest) {
            // Forgotten when sent, not when run: a named Parse after it in this pipeline must
            // reach the server, which will have dropped everything by then.
            self.to.prepared.clear();
        }
        if name.is_empty() {
            let answer = Expect::Forward {
                ends: b"1",
                sync: false,
            };
            self.to.send(&message(b'P', body), answer);
            return Some(());
        }
        let (query, types) = cstr(rest)?;
        let (client_name, statement) = Statement::renamed(name, query, types, rest);
        self.to.prepared.mark_stale(&statement.server_name);
        self.to.send_parse(&statement);
        self.to
            .plan
            .push(Expect::ClientParse(statement.server_name.clone()));
        self.statements.insert(client_name, statement);
        Some(())
    }

    fn bind(&mut self, body: &[u8], guard: Guard) -> Option<Step> {
        let (portal, rest) = cstr(body)?;
        let (name, rest) = cstr(rest)?;
        let statement = self.client_statement(name);
        if let Some(statement) = &statement {
            match self.to.guard(statement, guard) {
                Verdict::Run => {}
                Verdict::Learn => return Some(Step::Pause),
                Verdict::Refuse => {
                    self.statements.set_bound(portal, None);
                    return Some(Step::Done);
                }
            }
        }
        self.statements.set_bound(portal, statement.as_ref());
        let Some(statement) = statement else {
            let answer = Expect::Forward {
                ends: b"2",
                sync: false,
            };
            self.to.send(&message(b'B', body), answer);
            return Some(Step::Done);
        };
        let mut renamed = portal.to_vec();
        renamed.push(0);
        renamed.extend_from_slice(statement.server_name.as_bytes());
        renamed.push(0);
        renamed.extend_from_slice(rest);
        let answer = Expect::UsesStatement {
            ends: b"2",
            statement,
        };
        self.to.send(&message(b'B', &renamed), answer);
        Some(Step::Done)
    }

    fn describe(&mut self, body: &[u8]) -> Option<()> {
        let kind = *body.first()?;
        let (name, _) = cstr(&body[1..])?;
        // A statement's answer, or that of the portal bound last, tells the statement's shape.
        let described = match kind {
            b'S' => self.ensure(name),
            b'P' => self.statements.bound(name),
            _ => None,
        };
        let Some(statement) = described else {
            let answer = Expect::Forward {
                ends: b"Tn",
                sync: false,
            };
            self.to.send(&message(b'D', body), answer);
            return Some(());
        };
        let renamed = if kind == b'S' {
            let mut renamed = vec![b'S'];
            renamed.extend_from_slice(statement.server_name.as_bytes());
            renamed.push(0);
            message(b'D', &renamed)
        } else {
            message(b'D', body)
        };
        let answer = Expect::UsesStatement {
            ends: b"Tn",
            statement,
        };
        self.to.send(&renamed, answer);
        Some(())
    }

    fn close(&mut self, body: &[u8]) -> Option<()> {
        let kind = *body.first()?;
        let (name, _) = cstr(&body[1..])?;
        if kind == b'S' && !name.is_empty() {
            // The server statement may serve other clients: keep it, answer ourselves.
            self.statements
                .remove(String::from_utf8_lossy(name).as_ref());
            self.to.plan.push(Expect::Synthetic(&CLOSE_COMPLETE));
        } else {
            let answer = Expect::Forward {
                ends: b"3",
                sync: false,
            };
            self.to.send(&message(b'C', body), answer);
        }
        Some(())
    }

    /// A client statement, its Parse sent first if the connection lacks it. `None` for the
    /// unnamed statement or a name the client never prepared.
    fn ensure(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let statement = self.client_statement(name)?;
        self.to.ensure_prepared(&statement);
        Some(statement)
    }

    /// The client's statement `name`; `None` for the unnamed statement or a name the client
    /// never prepared.
    fn client_statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if name.is_empty() {
            return None;
        }
        self.statements
            .get(String::from_utf8_lossy(name).as_ref())
            .cloned()
    }
}
