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
//!    prepared `DO` block raising an error ([`Verdict::Refuse`]), so that the server aborts
//!    the transaction and skips to Sync exactly as it would for the Bind; the client gets
//!    [`REFUSAL_ERROR`] in its place, PostgreSQL's own error for the Bind down to its routine
//!    (`RevalidateCachedQuery`), which asyncpg and pgJDBC look at before they prepare again by
//!    themselves (with the `DO` block's own fields, they did not, and failed at every use).

use std::sync::LazyLock;

use tracing::info;

use super::outgoing::Outgoing;
use super::*;

/// The server statement that raises the refusal.
const REFUSAL_NAME: &str = "rdsiam_result_type_changed";
/// What it runs (its error, in the server's log, says whose it is).
const REFUSAL_SQL: &str = "DO $rdsiam$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', \
     MESSAGE = 'rds-iam-sidecar: cached plan must not change result type (a Bind refused)'; \
     END $rdsiam$";

/// What the client gets for a refused Bind: PostgreSQL 15's ErrorResponse for it (severity,
/// SQLSTATE, message, file, routine: drivers match the routine), with a detail and a hint.
pub(super) static REFUSAL_ERROR: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let fields: [(u8, &str); 8] = [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', "0A000"),
        (b'M', "cached plan must not change result type"),
        (
            b'D',
            "The result columns of this prepared statement changed (a schema change) since \
             it was described; rds-iam-sidecar prepared it again on another upstream connection.",
        ),
        (b'H', "Prepare the statement again."),
        (b'F', "plancache.c"),
        (b'R', "RevalidateCachedQuery"),
    ];
    let mut body = Vec::new();
    for (kind, value) in fields {
        body.push(kind);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
});

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

/// How a Bind is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// Its shapes compared, pausing to learn the connection's.
    Check,
    /// Compared again after the pause: an unknown shape then means the server failed the
    /// Describe and skips to Sync, so it runs (to be skipped too).
    Resumed,
    /// Not compared: the client describes the portal next in the same batch, and reads the
    /// rows with the shape it is told then (libpq does, for every prepared query).
    DescribedNext,
}

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
    /// Decides a Bind of the client's `statement`, checked as `guard` says.
    pub(super) fn guard(&mut self, statement: &Arc<Statement>, guard: Guard) -> Verdict {
        let told = statement.described();
        if told == 0 || guard == Guard::DescribedNext {
            self.ensure_prepared(statement);
            return Verdict::Run;
        }
        // One lookup per Bind: a known shape is a usable statement's, so nothing to prepare.
        let here = self.prepared.shape(&statement.server_name);
        if here == told {
            return Verdict::Run;
        }
        let resumed = guard == Guard::Resumed;
        if resumed && here == 0 {
            self.ensure_prepared(statement);
            return Verdict::Run;
        }
        if resumed {
            info!(
                statement = %statement.server_name,
                "refused a Bind: the statement's result columns changed since the client described it (0A000, as PostgreSQL answers)"
            );
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

    /// Runs the refusal in the Bind's place: its BindComplete swallowed, its error replaced by
    /// [`REFUSAL_ERROR`].
    fn refuse(&mut self) {
        self.ensure_prepared(&REFUSAL);
        let mut bind = vec![0];
        bind.extend_from_slice(REFUSAL_NAME.as_bytes());
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        self.send(&message(b'B', &bind), Expect::InjectedBind);
        self.send(&message(b'E', &[0, 0, 0, 0, 0]), Expect::Refusal);
    }
}
