//! The hot loop: bytes between a client and its upstream connection, unchanged. Both
//! directions run concurrently (so neither side can deadlock the other with a full socket
//! buffer); the server-to-client direction walks message headers with
//! [`FrameScanner`] to track the transaction status. Nothing is allocated per message.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::framing::{FrameScanner, TransactionStatus};

/// Size of each direction's copy buffer.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// How long closing the upstream side may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How a forwarding session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed its side (after Terminate, or by dropping the socket).
    ClientClosed,
    /// The server closed its side.
    ServerClosed,
    /// A read or write failed on the client side.
    ClientError,
    /// A read or write failed on the server side, or it broke the framing.
    ServerError,
}

/// Totals of one forwarding session.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub ending: Ending,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub last_status: Option<TransactionStatus>,
}

/// Which side of a copy failed.
enum CopyEnd {
    ReaderClosed,
    ReaderFailed,
    WriterFailed,
    BadFraming,
}

/// Forwards in both directions until either side closes; `pending` (bytes the server already
/// sent) goes to the client first.
pub async fn forward<C, S>(client: C, server: S, pending: &[u8]) -> Summary
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let mut to_server = 0u64;
    let mut to_client = 0u64;
    let mut scanner = FrameScanner::new();
    let mut last_status = None;

    if !pending.is_empty() {
        match scanner.scan(pending) {
            Ok(Some(ready)) => last_status = Some(ready.status),
            Ok(None) => {}
            Err(_) => {
                return Summary {
                    ending: Ending::ServerError,
                    bytes_to_server: 0,
                    bytes_to_client: 0,
                    last_status,
                };
            }
        }
        if client_write.write_all(pending).await.is_err() || client_write.flush().await.is_err() {
            return Summary {
                ending: Ending::ClientError,
                bytes_to_server: 0,
                bytes_to_client: 0,
                last_status,
            };
        }
        to_client += pending.len() as u64;
    }

    let upward = copy(&mut client_read, &mut server_write, &mut to_server, None);
    let downward = copy(
        &mut server_read,
        &mut client_write,
        &mut to_client,
        Some((&mut scanner, &mut last_status)),
    );
    let ending = tokio::select! {
        end = upward => match end {
            CopyEnd::ReaderClosed => Ending::ClientClosed,
            CopyEnd::ReaderFailed => Ending::ClientError,
            CopyEnd::WriterFailed | CopyEnd::BadFraming => Ending::ServerError,
        },
        end = downward => match end {
            CopyEnd::ReaderClosed => Ending::ServerClosed,
            CopyEnd::ReaderFailed | CopyEnd::BadFraming => Ending::ServerError,
            CopyEnd::WriterFailed => Ending::ClientError,
        },
    };
    // Polite close (TLS close_notify), but never wait on a server that stopped reading.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, server_write.shutdown()).await;
    Summary {
        ending,
        bytes_to_server: to_server,
        bytes_to_client: to_client,
        last_status,
    }
}

async fn copy<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &mut u64,
    mut scan: Option<(&mut FrameScanner, &mut Option<TransactionStatus>)>,
) -> CopyEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) => return CopyEnd::ReaderClosed,
            Ok(n) => n,
            // A TLS peer that closes without close_notify: a close, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return CopyEnd::ReaderClosed;
            }
            Err(_) => return CopyEnd::ReaderFailed,
        };
        let chunk = &buffer[..n];
        if let Some((scanner, status)) = scan.as_mut() {
            match scanner.scan(chunk) {
                Ok(Some(ready)) => **status = Some(ready.status),
                Ok(None) => {}
                Err(_) => return CopyEnd::BadFraming,
            }
        }
        // TLS writers may keep encrypted records buffered until flushed.
        if writer.write_all(chunk).await.is_err() || writer.flush().await.is_err() {
            return CopyEnd::WriterFailed;
        }
        *counter += n as u64;
    }
}
