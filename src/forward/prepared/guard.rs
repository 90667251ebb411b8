//! The result-type guard of transaction mode: a Bind of a client's statement runs only where
//! the connection's statement has the shape the client was told ([`super::shape`]).
//!
//! PostgreSQL refuses to run a prepared statement whose result shape changed since it was
//! prepared (`0A000 cached plan must not change result type`), and drivers that cache a
//! statement's description rely on it: asyncpg prepares again by itself on that error, and
//! reads rows with the cached description otherwise. The sidecar prepares a client's statement
//! again on connections that never held it, so after a migration PostgreSQL would run it there
//! and send rows of the new shape (asyncpg: a column-count error; a retyped column read in
//! binary: wrong values). So, when the client was told a shape and the connection's shape is
//! unknown or different:
//! 1. the statement is prepared afresh (Close + Parse; a Describe of the old plan would be
//!    refused by the server itself) and described, with a Flush, and the Bind waits
//!    ([`Verdict::Learn`]: the client side pauses until the answer comes, one round trip per
//!    statement and connection);
//! 2. the same shape: the Bind runs; another: the Bind is replaced by the execution of a
//!    prepared `DO` block raising PostgreSQL's own error ([`Verdict::Refuse`]), so that the
//!    server aborts the transaction and skips to Sync exactly as it would for the Bind.

use std::sync::LazyLock;

use super::outgoing::Outgoing;
use super::*;

/// The server statement that raises the refusal.
const REFUSAL_NAME: &str = "rdsiam_result_type_changed";
/// What it runs: PostgreSQL's words for the error, with what the sidecar knows.
const REFUSAL_SQL: &str = "DO $rdsiam$ BEGIN RAISE EXCEPTION USING \
     ERRCODE = '0A000', \
     MESSAGE = 'cached plan must not change result type', \
     DETAIL = 'The result columns of this prepared statement changed since it was described \
     (a schema change); rds-iam-sidecar prepared it again on another upstream connection.', \
     HINT = 'Prepare the statement again (asyncpg and pgJDBC do so by themselves on this error).'; \
     END $rdsiam$";

static REFUSAL: LazyLock<Statement> = LazyLock::new(|| {
    let mut body = REFUSAL_NAME.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(REFUSAL_SQL.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    Statement {
        server_name: REFUSAL_NAME.to_owned(),
        parse: message(b'P', &body),
        described: AtomicU64::new(0),
    }
});

/// What becomes of a client's Bind of one of its statements.
pub(super) enum Verdict {
    /// It runs (its statement's Parse sent first where the connection lacked it).
    Run,
    /// It waits: the statement's shape on this connection was asked for.
    Learn,
    /// It was refused with 0A000: the refusal's messages went in its place.
    Refuse,
}

impl Outgoing<'_> {
    /// Decides a Bind of the client's `statement`; `resumed` once its shape was asked for (an
    /// unknown shape then means the server failed the Describe and skips to Sync).
    pub(super) fn guard(&mut self, statement: &Arc<Statement>, resumed: bool) -> Verdict {
        let told = statement.described();
        let here = self.prepared.shape(&statement.server_name);
        if told == 0 || here == told || (resumed && here == 0) {
            self.ensure_prepared(statement);
            return Verdict::Run;
        }
        if resumed {
            self.refuse();
            return Verdict::Refuse;
        }
        self.prepared.mark_stale(&statement.server_name);
        self.ensure_prepared(statement);
        let mut body = vec![b'S'];
        body.extend_from_slice(statement.server_name.as_bytes());
        body.push(0);
        let describe = [message(b'D', &body), message(b'H', &[])].concat();
        self.send(&describe, Expect::Learn(statement.clone()));
        Verdict::Learn
    }

    /// Runs the refusal in the Bind's place: its BindComplete swallowed, its error forwarded.
    fn refuse(&mut self) {
        self.ensure_prepared(&REFUSAL);
        let mut bind = vec![0];
        bind.extend_from_slice(REFUSAL_NAME.as_bytes());
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        self.send(&message(b'B', &bind), Expect::InjectedBind);
        let answer = Expect::Forward {
            ends: b"CIs",
            sync: false,
        };
        self.send(&message(b'E', &[0, 0, 0, 0, 0]), answer);
    }
}
