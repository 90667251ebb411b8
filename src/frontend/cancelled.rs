//! After a cancel closed a client's upstream connection (RDS Proxy issues no cancel keys, so
//! closing is how a cancel is done there): the client gets PostgreSQL's own answer,
//! `ERROR 57014 canceling statement due to user request`, and stays connected. Inside an
//! explicit transaction that transaction is gone with the connection, so, as PostgreSQL does for
//! a failed transaction, every statement gets `25P02` and ReadyForQuery `E` until the client
//! ends the transaction (ROLLBACK, or COMMIT, which PostgreSQL answers with ROLLBACK there);
//! the sidecar answers all of that itself and the client's next transaction gets another
//! upstream connection.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{PgError, Severity, sqlstate};
use crate::forward::Outcome;
use crate::protocol::framing::TransactionStatus;
use crate::protocol::messages;

use super::session::{Session, cancelled_error};

/// A message from a client in a failed transaction larger than this is refused.
const MAX_MESSAGE: usize = 1 << 20;

impl Session {
    /// The upstream connection was closed for a cancel: a client waiting for an answer gets the
    /// one PostgreSQL would give and stays (in a failed transaction if it was inside one);
    /// `Some(outcome)` when the session ends instead.
    pub(super) async fn answer_cancelled(&mut self) -> Option<Outcome> {
        if !self.state.awaiting_answer() {
            // It sent more than it waits for: what it is owed cannot be told.
            self.cancelled_fatal().await;
            return Some(Outcome::Cancelled);
        }
        let inside = self.state.status() != TransactionStatus::Idle;
        let status = if inside { b'E' } else { b'I' };
        let mut answer = BytesMut::new();
        messages::error_response(&mut answer, &cancelled_error(Severity::Error));
        messages::ready_for_query(&mut answer, status);
        self.state.answered_locally(status);
        self.state.set_aborted(inside);
        if self.stream.write_all(&answer).await.is_err() {
            return Some(Outcome::ClientError);
        }
        None
    }

    /// Answers the client while its transaction is failed with no upstream connection, from its
    /// bytes `first` until it ends the transaction and reaches a sync point; `Some(outcome)`
    /// when the session ends.
    pub(super) async fn serve_aborted(&mut self, first: &[u8]) -> Option<Outcome> {
        let mut input = BytesMut::from(first);
        let mut batch = Batch::default();
        let mut answer = BytesMut::new();
        loop {
            while let Some((tag, body)) = next_message(&mut input) {
                if tag == b'X' {
                    return Some(Outcome::ClientTerminated);
                }
                self.answer_aborted(tag, &body, &mut batch, &mut answer);
            }
            if !answer.is_empty() && self.stream.write_all(&answer).await.is_err() {
                return Some(Outcome::ClientError);
            }
            answer.clear();
            if input.is_empty() && batch.is_empty() {
                return None;
            }
            if input.len() > MAX_MESSAGE + 5 {
                return Some(Outcome::ClientError);
            }
            match self.stream.read_buf(&mut input).await {
                Ok(0) => return Some(Outcome::ClientClosed),
                Ok(_) => {}
                Err(_) => return Some(Outcome::ClientError),
            }
        }
    }

    /// One message in a failed transaction.
    fn answer_aborted(&mut self, tag: u8, body: &[u8], batch: &mut Batch, out: &mut BytesMut) {
        match tag {
            b'Q' => {
                if ends_transaction(cstr(body)) {
                    messages::command_complete(out, "ROLLBACK");
                    self.state.set_aborted(false);
                } else if !cstr(body).trim().is_empty() {
                    messages::error_response(out, &in_failed_transaction());
                }
                self.ready(out);
            }
            b'P' => {
                batch.started = true;
                let query = body
                    .iter()
                    .position(|&b| b == 0)
                    .map_or("", |end| cstr(&body[end + 1..]));
                if !batch.failed && ends_transaction(query) {
                    batch.ends = true;
                    messages::parse_complete(out);
                } else {
                    batch.fail(out);
                }
            }
            b'B' | b'D' | b'C' | b'E' if batch.ends && !batch.failed => match tag {
                b'B' => messages::bind_complete(out),
                // The statement returns no rows; its Close is acknowledged.
                b'D' => out.extend_from_slice(&[b'n', 0, 0, 0, 4]),
                b'C' => out.extend_from_slice(&[b'3', 0, 0, 0, 4]),
                _ => {
                    messages::command_complete(out, "ROLLBACK");
                    self.state.set_aborted(false);
                }
            },
            b'S' => {
                *batch = Batch::default();
                self.ready(out);
            }
            b'F' => {
                messages::error_response(out, &in_failed_transaction());
                self.ready(out);
            }
            // Flush, Describe, Close and the rest of a failed batch: ignored until Sync.
            b'H' => {}
            _ => {
                batch.started = true;
                batch.fail(out);
            }
        }
    }

    /// ReadyForQuery for the client's state: `E` while its transaction is failed.
    fn ready(&self, out: &mut BytesMut) {
        messages::ready_for_query(out, if self.state.is_aborted() { b'E' } else { b'I' });
    }
}

/// An extended-protocol batch up to its Sync.
#[derive(Debug, Default)]
struct Batch {
    started: bool,
    /// It parsed a statement that ends the transaction.
    ends: bool,
    /// Its error was sent; the rest is ignored until Sync.
    failed: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        !self.started
    }

    fn fail(&mut self, out: &mut BytesMut) {
        if !self.failed {
            messages::error_response(out, &in_failed_transaction());
            self.failed = true;
        }
    }
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
    fn messages_are_taken_whole() {
        let mut input = BytesMut::from(&b"Q\0\0\0\x0dROLLBACK\0X\0\0"[..]);
        let (tag, body) = next_message(&mut input).expect("a whole query");
        assert_eq!((tag, &body[..]), (b'Q', &b"ROLLBACK\0"[..]));
        assert!(next_message(&mut input).is_none(), "a partial header waits");
        assert_eq!(input.len(), 3);
    }
}
