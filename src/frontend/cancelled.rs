//! After a cancel closed a client's upstream connection (RDS Proxy issues no cancel keys, so
//! closing is how a cancel is done there): the client gets PostgreSQL's own answer,
//! `ERROR 57014 canceling statement due to user request`, and stays connected. Inside an
//! explicit transaction that transaction is gone with the connection, so, as PostgreSQL does for
//! a failed transaction, every statement gets `25P02` and ReadyForQuery `E` until the client
//! ends the transaction (ROLLBACK, or COMMIT, which PostgreSQL answers with ROLLBACK there);
//! the sidecar answers all of that itself and the client's next transaction gets another
//! upstream connection.

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

use crate::error::{PgError, Severity, sqlstate};
use crate::forward::Outcome;
use crate::protocol::messages;

use super::session::{Session, cancelled_error};

/// A message from a client in a failed transaction larger than this is refused.
const MAX_MESSAGE: usize = 1 << 20;

impl Session {
    /// The upstream connection was closed for a cancel: a client waiting for one answer gets
    /// the one PostgreSQL would give and stays (in a failed transaction if it was inside one);
    /// `Some(outcome)` when the session ends instead.
    pub(super) async fn answer_cancelled(&mut self) -> Option<Outcome> {
        self.cancel_key.state().connection_replaced();
        if !self.cancel_key.state().awaiting_one_answer() {
            // Several answers owed, or unsynced messages: what it is owed cannot be told.
            self.cancelled_fatal().await;
            return Some(Outcome::Cancelled);
        }
        let inside = self.cancel_key.state().inside_transaction();
        let status = if inside { b'E' } else { b'I' };
        let mut answer = BytesMut::new();
        messages::error_response(&mut answer, &cancelled_error(Severity::Error));
        messages::ready_for_query(&mut answer, status);
        self.cancel_key.state().answered_locally(status);
        self.cancel_key.state().set_aborted(inside);
        if self.stream.write_flushed(&answer).await.is_err() {
            return Some(Outcome::ClientError);
        }
        None
    }

    /// Answers the client while its transaction is failed with no upstream connection, from its
    /// bytes `first` until it ends the transaction and reaches a sync point. `Ok(rest)`: what
    /// it sent after that, for an upstream connection; `Err` when the session ends.
    pub(super) async fn serve_aborted(&mut self, first: &[u8]) -> Result<BytesMut, Outcome> {
        let mut input = BytesMut::from(first);
        let mut batch = Batch::default();
        if self.cancel_key.state().take_batch_failed() {
            batch.started = true;
            batch.failed = true;
        }
        let mut answer = BytesMut::new();
        loop {
            while self.cancel_key.state().is_aborted() || batch.started {
                let Some((tag, body)) = next_message(&mut input) else {
                    break;
                };
                if tag == b'X' {
                    return Err(Outcome::ClientTerminated);
                }
                self.answer_aborted(tag, &body, &mut batch, &mut answer);
            }
            if !answer.is_empty() && self.stream.write_flushed(&answer).await.is_err() {
                return Err(Outcome::ClientError);
            }
            answer.clear();
            if !self.cancel_key.state().is_aborted() && !batch.started {
                return Ok(input);
            }
            if input.len() > MAX_MESSAGE + 5 {
                return Err(Outcome::ClientError);
            }
            match self.stream.read_buf(&mut input).await {
                Ok(0) => return Err(Outcome::ClientClosed),
                Ok(_) => {}
                Err(_) => return Err(Outcome::ClientError),
            }
        }
    }

    /// One message in a failed transaction, answered as PostgreSQL answers it there.
    fn answer_aborted(&mut self, tag: u8, body: &[u8], batch: &mut Batch, out: &mut BytesMut) {
        match tag {
            b'Q' => {
                match statement_kind(body) {
                    Statement::Empty => out.extend_from_slice(&EMPTY_QUERY_RESPONSE),
                    Statement::EndsTransaction => {
                        messages::command_complete(out, "ROLLBACK");
                        self.cancel_key.state().set_aborted(false);
                    }
                    Statement::Other => messages::error_response(out, &in_failed_transaction()),
                }
                self.ready(out);
            }
            b'S' => {
                *batch = Batch::default();
                self.ready(out);
            }
            b'F' => {
                messages::error_response(out, &in_failed_transaction());
                self.ready(out);
            }
            // Flush; COPY data, done and fail of a COPY the cancel ended: nothing to answer.
            b'H' | b'd' | b'c' | b'f' => {}
            _ => {
                batch.started = true;
                if !batch.failed {
                    self.answer_extended(tag, body, batch, out);
                }
            }
        }
    }

    /// Parse, Bind, Describe, Execute and Close in a failed transaction: only a statement that
    /// ends the transaction runs (its rollback), a Close always works, the rest is an error and
    /// everything after it is ignored until Sync.
    fn answer_extended(&mut self, tag: u8, body: &[u8], batch: &mut Batch, out: &mut BytesMut) {
        match tag {
            b'P' if statement_kind(after_cstr(body)) == Statement::EndsTransaction => {
                // A named one must exist on the next connection too (transaction mode; a
                // session-mode client with named statements does not get here).
                self.statements.record_parse(body);
                messages::parse_complete(out);
                batch.parsed_end = true;
            }
            b'B' if self.binds_an_end(body, batch) => {
                messages::bind_complete(out);
                batch.bound_end = true;
            }
            b'D' if batch.bound_end || batch.parsed_end => {
                if body.first() == Some(&b'S') {
                    // ParameterDescription: no parameters.
                    out.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]);
                }
                out.extend_from_slice(&NO_DATA);
            }
            b'E' if batch.bound_end => {
                messages::command_complete(out, "ROLLBACK");
                self.cancel_key.state().set_aborted(false);
            }
            b'C' => {
                if let Some((b'S', name)) = body.split_first() {
                    self.statements.forget(cstr(name).as_bytes());
                }
                out.extend_from_slice(&CLOSE_COMPLETE);
            }
            _ => {
                messages::error_response(out, &in_failed_transaction());
                batch.failed = true;
            }
        }
    }

    /// A Bind of the statement just parsed, or of a named statement prepared earlier, that
    /// ends the transaction.
    fn binds_an_end(&self, body: &[u8], batch: &Batch) -> bool {
        let statement = after_cstr(body);
        let name = statement
            .iter()
            .position(|&b| b == 0)
            .map_or(statement, |end| &statement[..end]);
        if name.is_empty() {
            return batch.parsed_end;
        }
        self.statements
            .query_of(name)
            .is_some_and(|query| statement_kind(query) == Statement::EndsTransaction)
    }

    /// ReadyForQuery for the client's state: `E` while its transaction is failed.
    fn ready(&self, out: &mut BytesMut) {
        let status = if self.cancel_key.state().is_aborted() {
            b'E'
        } else {
            b'I'
        };
        // Nothing is owed (the sidecar answers each sync point at once): this sets the status.
        self.cancel_key.state().answered_locally(status);
        messages::ready_for_query(out, status);
    }
}

/// EmptyQueryResponse.
const EMPTY_QUERY_RESPONSE: [u8; 5] = [b'I', 0, 0, 0, 4];
/// NoData.
const NO_DATA: [u8; 5] = [b'n', 0, 0, 0, 4];
/// CloseComplete.
const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];

/// An extended-protocol batch up to its Sync.
#[derive(Debug, Default)]
struct Batch {
    started: bool,
    /// It parsed (unnamed) a statement that ends the transaction.
    parsed_end: bool,
    /// It bound a statement that ends the transaction.
    bound_end: bool,
    /// Its error was sent; the rest is ignored until Sync.
    failed: bool,
}

/// What a statement text is, for a failed transaction.
#[derive(Debug, PartialEq, Eq)]
enum Statement {
    /// Nothing but white space and comments.
    Empty,
    /// ROLLBACK, ABORT, COMMIT or END.
    EndsTransaction,
    Other,
}

fn statement_kind(text: &[u8]) -> Statement {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let Ok(sql) = std::str::from_utf8(&text[..end]) else {
        return Statement::Other;
    };
    let sql = without_comments(sql);
    if sql.trim().trim_matches(';').trim().is_empty() {
        Statement::Empty
    } else if ends_transaction(&sql) {
        Statement::EndsTransaction
    } else {
        Statement::Other
    }
}

/// `sql` with `-- …` line comments and (unnested) `/* … */` comments taken out.
fn without_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.find('\n').map_or("", |end| &after[end..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |end| &after[end + 2..]);
            out.push(' ');
        } else {
            let mut chars = rest.chars();
            out.extend(chars.next());
            rest = chars.as_str();
        }
    }
    out
}

fn in_failed_transaction() -> PgError {
    PgError::new(
        Severity::Error,
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
    .with_detail(
        "a cancel closed the transaction's upstream connection (RDS Proxy cannot cancel a \
         statement any other way)",
    )
}

/// ROLLBACK, ABORT, COMMIT or END (with TRANSACTION / WORK, a trailing semicolon), not
/// ROLLBACK TO SAVEPOINT nor the two-phase forms.
fn ends_transaction(sql: &str) -> bool {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut words = sql.split_ascii_whitespace().map(str::to_ascii_lowercase);
    let Some(first) = words.next() else {
        return false;
    };
    let rest: Vec<String> = words.collect();
    let plain =
        rest.is_empty() || matches!(rest.as_slice(), [w] if w == "work" || w == "transaction");
    matches!(first.as_str(), "rollback" | "abort" | "commit" | "end") && plain
}

/// The next complete message in `input` (tag and body), taken off its front.
fn next_message(input: &mut BytesMut) -> Option<(u8, BytesMut)> {
    if input.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize;
    // A length below 4 cannot be framed: treat the rest as one message and let it fail.
    let len = len.max(4);
    if input.len() < 1 + len {
        return None;
    }
    let tag = input[0];
    input.advance(5);
    Some((tag, input.split_to(len - 4)))
}

/// What follows the first NUL-terminated string of `body`.
fn after_cstr(body: &[u8]) -> &[u8] {
    body.iter()
        .position(|&b| b == 0)
        .map_or(&[][..], |end| &body[end + 1..])
}

fn cstr(body: &[u8]) -> &str {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    std::str::from_utf8(&body[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_ends_a_failed_transaction() {
        for sql in [
            "ROLLBACK",
            "rollback;",
            " abort work ",
            "COMMIT TRANSACTION",
            "end",
        ] {
            assert!(ends_transaction(sql), "{sql}");
        }
        for sql in [
            "rollback to savepoint a",
            "commit prepared 'x'",
            "select 1",
            "",
            "begin",
        ] {
            assert!(!ends_transaction(sql), "{sql}");
        }
    }

    #[test]
    fn statements_in_a_failed_transaction() {
        assert_eq!(statement_kind(b"  -- ping\0"), Statement::Empty);
        assert_eq!(statement_kind(b"/* x */ ;\0"), Statement::Empty);
        assert_eq!(
            statement_kind(b"ROLLBACK -- done\0"),
            Statement::EndsTransaction
        );
        assert_eq!(statement_kind(b"select 1\0"), Statement::Other);
        assert_eq!(statement_kind(b"\xff\0"), Statement::Other);
    }

    #[test]
    fn messages_are_taken_whole() {
        let mut input = BytesMut::from(&b"Q\0\0\0\x0dROLLBACK\0X\0\0"[..]);
        let (tag, body) = next_message(&mut input).expect("a whole query");
        assert_eq!((tag, &body[..]), (b'Q', &b"ROLLBACK\0"[..]));
        assert!(next_message(&mut input).is_none(), "a partial header waits");
        assert_eq!(input.len(), 3);
    }
}
