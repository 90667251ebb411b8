//! Hand-rolled PostgreSQL wire-protocol helpers shared by the emulator and raw-protocol tests.
//!
//! This module owns byte-level encoding and decoding of the few messages tests and the RDS Proxy
//! emulator need (startup / SSLRequest / CancelRequest packets, password, query, ErrorResponse)
//! and a minimal raw client: SSLRequest → TLS → startup → cleartext password → ReadyForQuery.
//! It is deliberately independent of the sidecar's own protocol code.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Largest startup-phase packet we accept (PostgreSQL uses 10 000).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Largest regular message the helpers accept (tests never need more).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A tagged message: tag byte, length (counts itself), body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&len_prefix(body.len() + 4));
    out.extend_from_slice(body);
    out
}

/// An untagged startup-phase packet: length (counts itself), code, rest.
pub fn startup_packet(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len() + 8);
    out.extend_from_slice(&len_prefix(rest.len() + 8));
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(rest);
    out
}

/// StartupMessage (protocol 3.0) with the given parameters, in order.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut rest = Vec::new();
    for (k, v) in params {
        push_cstr(&mut rest, k);
        push_cstr(&mut rest, v);
    }
    rest.push(0);
    startup_packet(PROTOCOL_3_0, &rest)
}

/// SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    startup_packet(SSL_REQUEST_CODE, &[])
}

/// GSSENCRequest.
pub fn gssenc_request() -> Vec<u8> {
    startup_packet(GSSENC_REQUEST_CODE, &[])
}

/// CancelRequest for a backend's (process id, secret key).
pub fn cancel_request(pid: u32, key: u32) -> Vec<u8> {
    let mut rest = pid.to_be_bytes().to_vec();
    rest.extend_from_slice(&key.to_be_bytes());
    startup_packet(CANCEL_REQUEST_CODE, &rest)
}

/// PasswordMessage ('p').
pub fn password_message(password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    push_cstr(&mut body, password);
    message(b'p', &body)
}

/// Simple Query ('Q').
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    push_cstr(&mut body, sql);
    message(b'Q', &body)
}

/// Terminate ('X').
pub fn terminate_message() -> Vec<u8> {
    message(b'X', &[])
}

/// AuthenticationRequest ('R') with the given code (0 = Ok, 3 = cleartext password).
pub fn authentication(code: u32) -> Vec<u8> {
    message(b'R', &code.to_be_bytes())
}

/// ErrorResponse ('E') with severity (localized and not), SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, msg: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', msg),
    ] {
        body.push(field);
        push_cstr(&mut body, value);
    }
    body.push(0);
    message(b'E', &body)
}

/// Reads one tagged message: (tag, body).
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(u8, Vec<u8>)> {
    let tag = r.read_u8().await?;
    let len = r.read_u32().await? as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(invalid(format!(
            "message '{}' has bad length {len}",
            tag as char
        )));
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Reads one startup-phase packet and returns (code, rest after the code).
pub async fn read_startup_packet<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(u32, Vec<u8>)> {
    let len = r.read_u32().await? as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&len) {
        return Err(invalid(format!("startup packet has bad length {len}")));
    }
    let code = r.read_u32().await?;
    let mut rest = vec![0; len - 8];
    r.read_exact(&mut rest).await?;
    Ok((code, rest))
}

/// Parses the key/value pairs of a StartupMessage (the part after the version).
pub fn parse_startup_params(rest: &[u8]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut fields = rest.split(|b| *b == 0);
    loop {
        let key = fields.next()?;
        if key.is_empty() {
            return Some(params);
        }
        let value = fields.next()?;
        params.push((
            String::from_utf8(key.to_vec()).ok()?,
            String::from_utf8(value.to_vec()).ok()?,
        ));
    }
}

/// Fields of an ErrorResponse / NoticeResponse body, keyed by field type ('S', 'C', 'M', ...).
pub fn parse_error_fields(body: &[u8]) -> BTreeMap<char, String> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

/// The first NUL-terminated string of a body (e.g. a PasswordMessage).
pub fn first_cstr(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// A server error seen by the raw client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub fields: BTreeMap<char, String>,
}

impl ServerError {
    pub fn from_body(body: &[u8]) -> ServerError {
        let fields = parse_error_fields(body);
        let get = |c| fields.get(&c).cloned().unwrap_or_default();
        ServerError {
            severity: get('S'),
            code: get('C'),
            message: get('M'),
            fields: fields.clone(),
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// How a raw login ended.
#[derive(Debug)]
pub enum LoginError {
    Io(io::Error),
    /// The server sent an ErrorResponse.
    Server(ServerError),
    /// The server sent something the raw client did not expect.
    Protocol(String),
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Server(e) => write!(f, "server error: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

impl From<io::Error> for LoginError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What the server told the raw client during a successful login.
#[derive(Debug, Clone, Default)]
pub struct LoginInfo {
    /// Authentication request codes seen, in order (e.g. `[3, 0]`).
    pub auth_codes: Vec<u32>,
    /// ParameterStatus values.
    pub parameters: BTreeMap<String, String>,
    /// BackendKeyData (process id, secret key), if sent.
    pub backend_key: Option<(u32, u32)>,
    /// ReadyForQuery transaction status ('I', 'T', 'E').
    pub ready_status: u8,
}

/// TCP connect, SSLRequest, expect 'S' (reading exactly one byte), TLS handshake verifying
/// `server_name` against `config`'s roots.
pub async fn connect_tls(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&ssl_request()).await?;
    let answer = tcp.read_u8().await?;
    if answer != b'S' {
        return Err(io::Error::other(format!(
            "server answered SSLRequest with {:?}, not 'S'",
            answer as char
        )));
    }
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| invalid(format!("bad server name {server_name}: {e}")))?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends a StartupMessage and answers a cleartext-password request (if any) with `password`,
/// then reads until ReadyForQuery. md5/SCRAM are not supported by this raw client.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    params: &[(&str, &str)],
    password: &str,
) -> Result<LoginInfo, LoginError> {
    stream.write_all(&startup_message(params)).await?;
    stream.flush().await?;
    let mut info = LoginInfo::default();
    loop {
        let (tag, body) = read_message(stream).await?;
        match tag {
            b'R' => {
                let code = body
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| LoginError::Protocol("short authentication request".into()))?;
                info.auth_codes.push(code);
                match code {
                    0 => {}
                    3 => {
                        stream.write_all(&password_message(password)).await?;
                        stream.flush().await?;
                    }
                    other => {
                        return Err(LoginError::Protocol(format!(
                            "unsupported authentication request {other}"
                        )));
                    }
                }
            }
            b'S' => {
                let mut parts = body.split(|b| *b == 0);
                let key = parts.next().unwrap_or_default();
                let value = parts.next().unwrap_or_default();
                info.parameters.insert(
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                );
            }
            b'K' if body.len() >= 8 => {
                info.backend_key = Some((
                    u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                ));
            }
            b'N' => {}
            b'Z' => {
                info.ready_status = body.first().copied().unwrap_or(0);
                return Ok(info);
            }
            b'E' => return Err(LoginError::Server(ServerError::from_body(&body))),
            other => {
                return Err(LoginError::Protocol(format!(
                    "unexpected message '{}' during login",
                    other as char
                )));
            }
        }
    }
}

/// The next message, which must be an ErrorResponse arriving within `limit` (`what` names the
/// bound in the failure); its fields by code letter.
pub async fn error_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: std::time::Duration,
    what: &str,
) -> BTreeMap<char, String> {
    let (tag, body) = tokio::time::timeout(limit, read_message(stream))
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: {what}"))
        .unwrap_or_else(|e| panic!("an ErrorResponse, not a bare close ({what}): {e}"));
    assert_eq!(tag, b'E', "an ErrorResponse ({what})");
    parse_error_fields(&body)
}

/// Runs a simple query and returns the text values of all data rows (NULL → None).
pub async fn simple_query<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, LoginError> {
    stream.write_all(&query_message(sql)).await?;
    stream.flush().await?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (tag, body) = read_message(stream).await?;
        match tag {
            b'D' => rows.push(parse_data_row(&body)?),
            b'E' => error = Some(ServerError::from_body(&body)),
            b'Z' => {
                return match error {
                    Some(e) => Err(LoginError::Server(e)),
                    None => Ok(rows),
                };
            }
            _ => {}
        }
    }
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, LoginError> {
    let short = || LoginError::Protocol("short DataRow".into());
    let count = u16::from_be_bytes([
        *body.first().ok_or_else(short)?,
        *body.get(1).ok_or_else(short)?,
    ]);
    let mut pos = 2;
    let mut values = Vec::with_capacity(count.into());
    for _ in 0..count {
        let len_bytes = body.get(pos..pos + 4).ok_or_else(short)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        pos += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        let end = pos + len as usize;
        let value = body.get(pos..end).ok_or_else(short)?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        pos = end;
    }
    Ok(values)
}

fn push_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

fn len_prefix(len: usize) -> [u8; 4] {
    u32::try_from(len)
        .expect("message length fits in u32")
        .to_be_bytes()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
