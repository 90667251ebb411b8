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

/// The admin address to use: `--admin` / RDS_IAM_SIDECAR_ADMIN_URL, else the sidecar's own
/// setting as `run` would read it in the same container: RDS_IAM_SIDECAR_ADMIN_LISTEN, else
/// `admin-listen` in the file RDS_IAM_SIDECAR_CONFIG names (a wildcard address is reached
/// through loopback), else the default.
pub fn admin_address(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    if let Some(url) = flag {
        return url.to_owned();
    }
    let from_file = || {
        let path = env("RDS_IAM_SIDECAR_CONFIG")?;
        crate::config::FileConfig::load(std::path::Path::new(&path))
            .ok()?
            .admin_listen
    };
    match env("RDS_IAM_SIDECAR_ADMIN_LISTEN").or_else(from_file) {
        Some(listen) if !listen.eq_ignore_ascii_case("off") => listen
            .replacen("0.0.0.0:", "127.0.0.1:", 1)
            .replacen("[::]:", "[::1]:", 1),
        _ => crate::config::DEFAULT_ADMIN_LISTEN.to_owned(),
    }
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
    fn admin_address_prefers_the_flag_then_the_sidecars_own_setting() {
        let none = |_: &str| None;
        assert_eq!(admin_address(Some("http://h:1"), &none), "http://h:1");
        assert_eq!(admin_address(None, &none), "127.0.0.1:9090");
        let wildcard = |_: &str| Some("0.0.0.0:9191".to_owned());
        assert_eq!(admin_address(None, &wildcard), "127.0.0.1:9191");
        let off = |_: &str| Some("off".to_owned());
        assert_eq!(admin_address(None, &off), "127.0.0.1:9090");
    }

    #[test]
    fn admin_address_follows_the_config_file_the_sidecar_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, "admin-listen = \"0.0.0.0:9191\"\n").expect("write");
        let path = path.to_string_lossy().into_owned();
        let env = |name: &str| (name == "RDS_IAM_SIDECAR_CONFIG").then(|| path.clone());
        assert_eq!(admin_address(None, &env), "127.0.0.1:9191");
        // The variable wins over the file, as for `run`.
        let both = |name: &str| match name {
            "RDS_IAM_SIDECAR_CONFIG" => Some(path.clone()),
            "RDS_IAM_SIDECAR_ADMIN_LISTEN" => Some("127.0.0.1:9292".to_owned()),
            _ => None,
        };
        assert_eq!(admin_address(None, &both), "127.0.0.1:9292");
    }

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
