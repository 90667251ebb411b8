//! Reading whole server messages outside the hot loop: the upstream login, the session-mode
//! reset query and `doctor`'s query all read with [`ServerReader`], which parses with
//! postgres-protocol's zero-copy backend parser and refuses a message whose declared length is
//! over a limit before reserving room for it. [`error_response`] turns an ErrorResponse into the
//! [`PgError`] the client would see.

use std::io;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{PgError, Severity};

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the server sent a {0}-byte message, more than the {1} bytes expected here")]
    TooLarge(usize, usize),
    #[error("the server closed the connection")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Whole backend messages from a stream, one at a time.
pub struct ServerReader {
    buffer: BytesMut,
    limit: usize,
}

impl ServerReader {
    /// A reader whose messages are at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::with_capacity(1024),
            limit,
        }
    }

    /// The next message.
    pub async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<backend::Message, ReadError> {
        loop {
            // Check the declared length before the parser reserves room for it.
            if self.buffer.len() >= 5 {
                let declared = u32::from_be_bytes([
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                    self.buffer[4],
                ]) as usize;
                if declared > self.limit {
                    return Err(ReadError::TooLarge(declared, self.limit));
                }
            }
            if let Some(message) = backend::Message::parse(&mut self.buffer)? {
                return Ok(message);
            }
            if stream.read_buf(&mut self.buffer).await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Bytes read past the last message returned.
    pub fn into_rest(self) -> BytesMut {
        self.buffer
    }
}

/// An ErrorResponse's fields as a [`PgError`] (PANIC counts as FATAL: the session is over).
pub fn error_response(body: &backend::ErrorResponseBody) -> io::Result<PgError> {
    let mut error = PgError::fatal("", "");
    let mut severity = None;
    let mut fields = body.fields();
    while let Some(field) = fields.next()? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            // 'V' is never localised; 'S' may be, so it only counts without 'V'.
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    if severity.as_deref() == Some("ERROR") {
        error.severity = Severity::Error;
    }
    Ok(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_message(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in fields {
            body.push(*kind);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut message = vec![b'E'];
        message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(&body);
        message
    }

    #[tokio::test]
    async fn reads_messages_across_reads_and_keeps_the_rest() {
        let mut bytes = error_message(&[(b'V', "ERROR"), (b'C', "42P01"), (b'M', "no table")]);
        bytes.extend_from_slice(b"Z\0\0\0\x05I");
        bytes.extend_from_slice(b"extra");
        let (mut client, mut server) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = server.write_all(&bytes).await;
        });
        let mut reader = ServerReader::new(1 << 10);
        match reader.next(&mut client).await.expect("error response") {
            backend::Message::ErrorResponse(body) => {
                let error = error_response(&body).expect("fields");
                assert_eq!(
                    (error.severity, error.code.as_str(), error.message.as_str()),
                    (Severity::Error, "42P01", "no table")
                );
            }
            _ => panic!("expected an ErrorResponse"),
        }
        assert!(matches!(
            reader.next(&mut client).await,
            Ok(backend::Message::ReadyForQuery(_))
        ));
        let mut rest = reader.into_rest().to_vec();
        client.read_to_end(&mut rest).await.expect("read the rest");
        let _ = writer.await;
        assert_eq!(&rest[..], b"extra");
    }

    #[tokio::test]
    async fn refuses_an_oversized_message_and_reports_a_close() {
        let mut reader = ServerReader::new(100);
        let mut oversized = &b"D\0\x10\0\0rest"[..];
        assert!(matches!(
            reader.next(&mut oversized).await,
            Err(ReadError::TooLarge(1_048_576, 100))
        ));
        let mut reader = ServerReader::new(100);
        let mut short = &b"Z\0\0"[..];
        assert!(matches!(
            reader.next(&mut short).await,
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn fatal_unless_the_server_says_error() {
        let bytes = error_message(&[(b'S', "FATAL"), (b'C', "28P01"), (b'M', "no")]);
        let mut buffer = BytesMut::from(&bytes[..]);
        let Ok(Some(backend::Message::ErrorResponse(body))) = backend::Message::parse(&mut buffer)
        else {
            panic!("expected an ErrorResponse");
        };
        let error = error_response(&body).expect("fields");
        assert_eq!(
            (error.severity, error.code.as_str()),
            (Severity::Fatal, "28P01")
        );
    }
}
