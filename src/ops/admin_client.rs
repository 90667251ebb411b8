//! The client side of the admin endpoint, for the `healthcheck`, `wait` and `shutdown`
//! subcommands: one HTTP/1.1 request to a loopback address, no TLS, no redirects. Small enough
//! to hand-write, so the image needs neither curl nor an HTTP client stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer read (admin answers are a line, /metrics a few KiB).
const MAX_RESPONSE: u64 = 1 << 20;

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
    let exchange = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect to the admin endpoint {authority}: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Length: 0\r\nUser-Agent: rds-iam-sidecar\r\n\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("sending to {authority}: {e}"))?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading from {authority}: {e}"))?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("the admin endpoint {authority} did not answer within {timeout:?}"))?
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the admin endpoint sent an incomplete HTTP answer".to_owned())?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "the admin endpoint's answer has no HTTP status".to_owned())?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response { status, body })
}

/// Joins the chunks of a chunked body (sizes in hex, each line ended by CRLF).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        // `get`, not indexing: a size from the wire may not end on a character boundary.
        let (Some(chunk), Some(after)) = (rest.get(..size), rest.get(size..)) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        body = after.trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\r\nnot ready\n";
        assert_eq!(
            parse_response(plain),
            Ok(Response {
                status: 503,
                body: "not ready\n".to_owned()
            })
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n3\r\ndy\n\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).map(|r| r.body),
            Ok("ready\n".to_owned())
        );
        assert!(parse_response(b"garbage").is_err());
    }
}
