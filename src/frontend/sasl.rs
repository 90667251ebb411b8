//! The SASL messages of a client login, as the frontend protocol frames them:
//! AuthenticationSASL / SASLContinue / SASLFinal out, SASLInitialResponse and SASLResponse in
//! (bounded in size, malformed ones answered 08P01), and the certificate form channel binding
//! takes. The SCRAM exchange itself is in [`super::client_auth`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{PgError, sqlstate};
use crate::stream::ClientStream;

pub(super) const SCRAM: &str = "SCRAM-SHA-256";
pub(super) const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The largest SASL message a client may send.
const MAX_SASL_MESSAGE: usize = 4096;

/// A DER certificate as PEM, as pgwire's channel binding takes it.
pub(super) fn pem_of(der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// AuthenticationSASL with the mechanisms offered.
pub(super) fn sasl_request(mechanisms: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for mechanism in mechanisms {
        body.extend_from_slice(mechanism.as_bytes());
        body.push(0);
    }
    body.push(0);
    sasl_message(10, &body)
}

/// An Authentication message with `code` (10 SASL, 11 SASLContinue, 12 SASLFinal).
pub(super) fn sasl_message(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    crate::protocol::framing::message(b'R', &body)
}

pub(super) async fn send(stream: &mut ClientStream, bytes: &[u8]) -> Result<(), AuthFailure> {
    stream
        .write_all(bytes)
        .await
        .map_err(|_| AuthFailure::Gone)?;
    stream.flush().await.map_err(|_| AuthFailure::Gone)
}

/// One `p` message's body.
async fn read_password_message(stream: &mut ClientStream) -> Result<Vec<u8>, AuthFailure> {
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|_| AuthFailure::Gone)?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if header[0] != b'p' || !(4..=MAX_SASL_MESSAGE).contains(&length) {
        return Err(protocol_error(
            "expected a SASL response (a password message)".to_owned(),
        ));
    }
    let mut body = vec![0u8; length - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| AuthFailure::Gone)?;
    Ok(body)
}

/// SASLInitialResponse: the mechanism chosen and the client-first message.
pub(super) async fn read_initial_response(
    stream: &mut ClientStream,
) -> Result<(String, Vec<u8>), AuthFailure> {
    let body = read_password_message(stream).await?;
    let malformed = || protocol_error("malformed SASLInitialResponse".to_owned());
    let end = body.iter().position(|b| *b == 0).ok_or_else(malformed)?;
    let mechanism = String::from_utf8_lossy(&body[..end]).into_owned();
    let length = body.get(end + 1..end + 5).ok_or_else(malformed)?;
    let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
    let data = body.get(end + 5..).ok_or_else(malformed)?;
    if usize::try_from(length).ok() != Some(data.len()) {
        return Err(malformed());
    }
    Ok((mechanism, data.to_vec()))
}

/// SASLResponse: the client-final message.
pub(super) async fn read_response(stream: &mut ClientStream) -> Result<Vec<u8>, AuthFailure> {
    read_password_message(stream).await
}

/// Why a client was not let in.
#[derive(Debug)]
pub enum AuthFailure {
    /// Wrong password or unknown user: answered 28P01 after [`FAILURE_DELAY`].
    Password(PgError),
    /// Not the SASL exchange PostgreSQL speaks: 08P01.
    Protocol(PgError),
    /// The connection ended.
    Gone,
}

pub(super) fn protocol_error(message: String) -> AuthFailure {
    AuthFailure::Protocol(PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("rds-iam-sidecar: {message}"),
    ))
}
