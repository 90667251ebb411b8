//! Making a session-mode connection clean for the next client: the reset query (`DISCARD ALL`
//! by default) must complete without error and leave the connection idle. ParameterStatus
//! messages it causes (RESET ALL reports defaults) update the connection's parameters.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::forward::set_parameter;
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
}

/// Runs `query` and waits for ReadyForQuery 'I'.
pub async fn reset(server: &mut ServerConnection, query: &str) -> Result<(), ResetError> {
    tokio::time::timeout(RESET_TIMEOUT, run(server, query))
        .await
        .map_err(|_| ResetError::Timeout)?
}

async fn run(server: &mut ServerConnection, query: &str) -> Result<(), ResetError> {
    let mut out = BytesMut::new();
    frontend::query(query, &mut out)?;
    server.stream.write_all(&out).await?;
    server.stream.flush().await?;
    let mut buf = BytesMut::with_capacity(512);
    let mut failure = None;
    loop {
        if buf.len() >= 5 {
            let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if length > MAX_MESSAGE {
                return Err(ResetError::Failed("oversized message".to_owned()));
            }
        }
        match backend::Message::parse(&mut buf)? {
            Some(backend::Message::ErrorResponse(body)) => {
                let error = crate::upstream::login::server_error(&body)
                    .map_err(|e| ResetError::Failed(e.to_string()))?;
                failure = Some(format!("{} {}", error.code, error.message));
            }
            Some(backend::Message::ParameterStatus(body)) => {
                set_parameter(
                    &mut server.parameters,
                    body.name()?.to_owned(),
                    body.value()?.to_owned(),
                );
            }
            Some(backend::Message::ReadyForQuery(body)) => {
                return match (failure, body.status()) {
                    (None, b'I') => Ok(()),
                    (Some(error), _) => Err(ResetError::Failed(error)),
                    (None, status) => Err(ResetError::Failed(format!(
                        "transaction status '{}' after reset",
                        char::from(status)
                    ))),
                };
            }
            Some(_) => {}
            None => {
                if server.stream.read_buf(&mut buf).await? == 0 {
                    return Err(ResetError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )));
                }
            }
        }
    }
}
