//! The client side of the admin endpoint, for the `healthcheck`, `wait` and `shutdown`
//! subcommands: one HTTP/1.1 request to a loopback address, no TLS, no redirects, on hyper's
//! connection-level client (already in the binary for the AWS SDK), so the image needs no curl.
//! The Lambda Extensions API client sends its requests through the same [`exchange`].

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest answer read (admin answers are a line, /metrics a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// An HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` to `admin` (`http://host:port` or `host:port`) within `timeout`.
pub async fn request(
    admin: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, String> {
    let authority = admin
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || admin.starts_with("https://") {
        return Err(format!(
            "'{admin}' is not an admin address like http://127.0.0.1:9090"
        ));
    }
    let exchanged = exchange("the admin endpoint", authority, method, path, &[], "");
    tokio::time::timeout(timeout, exchanged)
        .await
        .map_err(|_| format!("the admin endpoint {authority} did not answer within {timeout:?}"))?
        .map(|(response, _)| response)
}

/// One HTTP/1.1 request to `authority` (named `what` in errors) with extra `headers` and a
/// text `body`; the answer and its headers. Shared by the admin subcommands and the Lambda
/// Extensions API client.
pub(crate) async fn exchange(
    what: &str,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(Response, hyper::HeaderMap), String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {what} {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("talking to {authority}: {e}"))?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "rds-iam-sidecar");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| format!("'{method} {path}' is not a valid request: {e}"))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("sending to {authority}: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading from {authority}: {e}"))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok((Response { status, body }, headers))
    };
    // The connection is driven here, not spawned, so nothing outlives the request. Once it
    // ends, the answer is complete or failed: either way it no longer waits.
    tokio::pin!(answer, connection);
    tokio::select! {
        answer = &mut answer => answer,
        _ = &mut connection => answer.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `raw` to whatever it is asked.
    async fn answer_with(raw: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(raw).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_plain_and_chunked_answers() {
        let plain = answer_with(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\r\nnot ready\n",
        )
        .await;
        let response = request(&plain, "GET", "/readyz", Duration::from_secs(5))
            .await
            .expect("answer");
        assert_eq!(
            response,
            Response {
                status: 503,
                body: "not ready\n".to_owned()
            }
        );
        let chunked = answer_with(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n3\r\ndy\n\r\n0\r\n\r\n",
        )
        .await;
        let url = format!("http://{chunked}/");
        let response = request(&url, "GET", "/readyz", Duration::from_secs(5))
            .await
            .expect("answer");
        assert_eq!((response.status, response.body.as_str()), (200, "ready\n"));
        let garbage = answer_with(b"garbage\r\n\r\n").await;
        assert!(
            request(&garbage, "GET", "/", Duration::from_secs(5))
                .await
                .is_err()
        );
        assert!(
            request("https://x:1", "GET", "/", Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
