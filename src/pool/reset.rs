//! Round trips the sidecar makes on a pooled connection of its own accord: the proof that an
//! idle one is alive (an empty query), and making a session-mode connection clean for the next
//! client: the reset query (`DISCARD ALL` by default), or Close messages for the
//! protocol-level named statements a client left (no SQL, so nothing that pins behind RDS
//! Proxy), must complete without error and leave the connection idle. ParameterStatus messages it causes (RESET ALL reports defaults) update the
//! connection's parameters.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use tokio::io::AsyncWriteExt;

use crate::protocol::framing::set_parameter;
use crate::protocol::server::{ReadError, ServerReader, error_response};
use crate::upstream::ServerConnection;

/// How long the reset may take before the connection is given up.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// A reset answer larger than this is not a reset answer.
const MAX_MESSAGE: usize = 1 << 20;

/// Why a connection was not reset (it is then closed).
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("reset query failed: {0}")]
    Failed(String),
    #[error("reset query timed out")]
    Timeout,
    #[error("connection broken during reset: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the reset's answer: {0}")]
    Read(#[from] ReadError),
}

/// Runs `query` and waits for ReadyForQuery 'I'.
pub async fn reset(server: &mut ServerConnection, query: &str) -> Result<(), ResetError> {
    tokio::time::timeout(RESET_TIMEOUT, run(server, query))
        .await
        .map_err(|_| ResetError::Timeout)?
}

/// Proves a pooled connection alive: an empty query answered within `within`.
pub async fn probe(server: &mut ServerConnection, within: Duration) -> bool {
    let mut out = BytesMut::new();
    if frontend::query("", &mut out).is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(within, send_and_wait(server, &out, 1)).await,
        Ok(Ok(()))
    )
}

/// Closes the named statements `names` (Close messages, then Sync).
pub async fn close_statements<'a>(
    server: &mut ServerConnection,
    names: impl Iterator<Item = &'a [u8]>,
) -> Result<(), ResetError> {
    let mut out = BytesMut::new();
    for name in names {
        let name = std::str::from_utf8(name)
            .map_err(|_| ResetError::Failed("a statement name is not UTF-8".to_owned()))?;
        frontend::close(b'S', name, &mut out)?;
    }
    frontend::sync(&mut out);
    tokio::time::timeout(RESET_TIMEOUT, send_and_wait(server, &out, 1))
        .await
        .map_err(|_| ResetError::Timeout)?
}

/// Builds a client's session again on a fresh connection: its `SET` statements (`settings`,
/// each a simple query), which must all succeed, and its named statements (`parses`, Parse
/// messages), each with a Sync of its own. A Parse that fails is passed over: the replay keeps
/// what the client sent, so it is most likely one that failed for the client too (a typo
/// asyncpg named), which the client knows does not exist.
pub async fn replay<'a>(
    server: &mut ServerConnection,
    settings: impl Iterator<Item = &'a [u8]>,
    parses: impl Iterator<Item = &'a [u8]>,
) -> Result<(), ResetError> {
    let mut out = BytesMut::new();
    let mut strict = 0;
    for text in settings {
        let text = std::str::from_utf8(text)
            .map_err(|_| ResetError::Failed("a kept SET is not UTF-8".to_owned()))?;
        frontend::query(text, &mut out)?;
        strict += 1;
    }
    let mut ready = strict;
    for parse in parses {
        out.extend_from_slice(parse);
        frontend::sync(&mut out);
        ready += 1;
    }
    if ready == 0 {
        return Ok(());
    }
    let answers = Answers { ready, strict };
    tokio::time::timeout(RESET_TIMEOUT, send_and_check(server, &out, answers))
        .await
        .map_err(|_| ResetError::Timeout)?
}

async fn run(server: &mut ServerConnection, query: &str) -> Result<(), ResetError> {
    let mut out = BytesMut::new();
    frontend::query(query, &mut out)?;
    send_and_wait(server, &out, 1).await
}

/// Sends `out` and reads the answers up to its `ready`-th ReadyForQuery, each `I`, with no
/// error.
async fn send_and_wait(
    server: &mut ServerConnection,
    out: &[u8],
    ready: usize,
) -> Result<(), ResetError> {
    let answers = Answers {
        ready,
        strict: ready,
    };
    send_and_check(server, out, answers).await
}

/// How many ReadyForQuery messages a batch the sidecar sent gets (`ready`), and how many of
/// the first must come without an error (`strict`; the others may carry one).
struct Answers {
    ready: usize,
    strict: usize,
}

/// Sends `out` and reads the answers up to its last ReadyForQuery, each `I`, with no error in
/// the first `answers.strict`.
async fn send_and_check(
    server: &mut ServerConnection,
    out: &[u8],
    answers: Answers,
) -> Result<(), ResetError> {
    server.stream.write_all(out).await?;
    server.stream.flush().await?;
    let mut reader = ServerReader::new(MAX_MESSAGE);
    let mut answered = 0;
    let mut failure = None;
    loop {
        match reader.next(&mut server.stream).await? {
            backend::Message::ErrorResponse(body) => {
                let error = error_response(&body)?;
                if answered < answers.strict {
                    failure = Some(format!("{} {}", error.code, error.message));
                } else {
                    tracing::debug!(code = %error.code, "a kept statement failed to prepare again; passed over");
                }
            }
            backend::Message::ParameterStatus(body) => {
                set_parameter(
                    std::sync::Arc::make_mut(&mut server.parameters),
                    body.name()?.to_owned(),
                    body.value()?.to_owned(),
                );
            }
            backend::Message::ReadyForQuery(body) => {
                answered += 1;
                if answered < answers.ready && failure.is_none() && body.status() == b'I' {
                    continue;
                }
                return match (failure, body.status()) {
                    (None, b'I') => Ok(()),
                    (Some(error), _) => Err(ResetError::Failed(error)),
                    (None, status) => Err(ResetError::Failed(format!(
                        "transaction status '{}' after reset",
                        char::from(status)
                    ))),
                };
            }
            _ => {}
        }
    }
}
