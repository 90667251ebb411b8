//! Closing an upstream connection the way a well-behaved client leaves: a Terminate message,
//! then TLS's close_notify and a FIN. Dropping the socket alone makes PostgreSQL log each
//! retired connection (`could not receive data from client: Connection reset by peer`, or
//! `SSL error: unexpected eof while reading` with OpenSSL 3) and RDS Proxy count it as an
//! abrupt disconnect. Done in a task of its own, bounded, off every client's path.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::ServerConnection;
use crate::stream::UpstreamStream;

/// Terminate: tag `X`, length 4.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// How long the goodbye may take before the socket is simply dropped.
const GOODBYE_WITHIN: Duration = Duration::from_secs(1);

impl ServerConnection {
    /// Closes the connection in the background (at once, without a goodbye, outside a tokio
    /// runtime). For a connection idle at a message boundary: one in the middle of a message
    /// would read the Terminate as part of it.
    pub fn close_in_background(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut stream = self.stream;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(GOODBYE_WITHIN, goodbye(&mut stream)).await;
        });
    }
}

async fn goodbye(stream: &mut UpstreamStream) -> std::io::Result<()> {
    stream.write_all(&TERMINATE).await?;
    stream.flush().await?;
    stream.shutdown().await
}
