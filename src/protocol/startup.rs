//! The packets a client sends before the first regular message: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage. They carry no type byte, only a length, so they are
//! read here rather than by the frame scanner.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const SSL_REQUEST_CODE: u32 = 80877103;
const GSSENC_REQUEST_CODE: u32 = 80877104;
const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Largest startup packet accepted (PostgreSQL's own limit is 10000).
const MAX_STARTUP_PACKET: usize = 10_000;

/// One of the packets that may open a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: Vec<u8> },
    Startup(StartupRequest),
}

/// A decoded StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupRequest {
    pub major: u16,
    pub minor: u16,
    /// Parameters sorted by name, each name once (its last value).
    pub parameters: Vec<(String, String)>,
}

impl StartupRequest {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why the first packets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed before the startup packet")]
    Closed,
    #[error("invalid startup packet length {0}")]
    BadLength(usize),
    #[error("unsupported frontend protocol {major}.{minor}: rds-iam-sidecar supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one initial packet, exactly (nothing after it).
pub async fn read_initial_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<InitialPacket, StartupError> {
    let mut length_bytes = [0u8; 4];
    read_length(reader, &mut length_bytes).await?;
    let length = initial_packet_length(&length_bytes)?;
    let mut packet = BytesMut::with_capacity(length);
    packet.put_slice(&length_bytes);
    packet.resize(length, 0);
    reader.read_exact(&mut packet[4..]).await?;
    decode_initial_packet(&packet)
}

/// Reads the rest of a packet's 4-byte length into `length_bytes`; `Closed` when the client
/// closes first.
async fn read_length<R: AsyncRead + Unpin>(
    reader: &mut R,
    length_bytes: &mut [u8],
) -> Result<(), StartupError> {
    match reader.read_exact(length_bytes).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StartupError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Reads the rest of an initial packet whose first bytes `start` (none, part of its length, or
/// more, up to the whole packet) were read already, and decodes it.
pub async fn read_rest_of_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    start: &[u8],
) -> Result<InitialPacket, StartupError> {
    let mut length_bytes = [0u8; 4];
    let have = start.len().min(4);
    length_bytes[..have].copy_from_slice(&start[..have]);
    read_length(reader, &mut length_bytes[have..]).await?;
    let length = initial_packet_length(&length_bytes)?;
    let mut packet = BytesMut::with_capacity(length);
    packet.put_slice(&length_bytes);
    packet.put_slice(start.get(4..length.min(start.len())).unwrap_or_default());
    let have = packet.len();
    packet.resize(length, 0);
    reader.read_exact(&mut packet[have..]).await?;
    decode_initial_packet(&packet)
}

/// The length an initial packet starting with `start` declares (its first 4 bytes), checked.
pub fn initial_packet_length(start: &[u8]) -> Result<usize, StartupError> {
    let Some(&[a, b, c, d]) = start.first_chunk::<4>() else {
        return Err(StartupError::BadLength(start.len()));
    };
    let length = u32::from_be_bytes([a, b, c, d]) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&length) {
        return Err(StartupError::BadLength(length));
    }
    Ok(length)
}

/// Decodes one whole initial packet (`packet` starts with its length, checked by
/// [`initial_packet_length`], and holds exactly that many bytes).
pub fn decode_initial_packet(packet: &[u8]) -> Result<InitialPacket, StartupError> {
    let length = packet.len();
    if length < 8 {
        return Err(StartupError::BadLength(length));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST_CODE if length == 8 => Ok(InitialPacket::SslRequest),
        GSSENC_REQUEST_CODE if length == 8 => Ok(InitialPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if length >= 16 => Ok(InitialPacket::Cancel {
            pid: i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            secret: packet[12..].to_vec(),
        }),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            Err(StartupError::BadLength(length))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(InitialPacket::Startup(StartupRequest {
                major,
                minor,
                parameters: parameters(&packet[8..])?,
            }))
        }
    }
}

/// The parameters of a StartupMessage: name/value pairs of NUL-terminated strings, ended by
/// one more NUL, checked as PostgreSQL checks them; sorted by name, a repeated name keeping its
/// last value (PostgreSQL applies them in order). Read here rather than by pgwire, which takes
/// a last pair without its terminator (a missing user name was then blamed for it) and builds a
/// map of its own: 3,100 instructions a login with the layout walk, 2,000 here (callgrind,
/// pgbench's packet).
fn parameters(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let invalid = || StartupError::Invalid("layout: expected terminator as last byte".to_owned());
    // Each string with its NUL; invalid UTF-8 replaced, as pgwire did (checked as UTF-8 first:
    // the lossy walk cost ~90 instructions a string, callgrind).
    let text = |with_nul: &[u8]| {
        let bytes = &with_nul[..with_nul.len() - 1];
        match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        }
    };
    let mut strings = body.split_inclusive(|b| *b == 0);
    let mut parameters = Vec::with_capacity(4);
    loop {
        let name = strings.next().ok_or_else(invalid)?;
        if name == [0] {
            if strings.next().is_some() {
                return Err(invalid());
            }
            break;
        }
        let value = strings.next().ok_or_else(invalid)?;
        if name.last() != Some(&0) || value.last() != Some(&0) {
            return Err(invalid());
        }
        parameters.push((text(name), text(value)));
    }
    // Stable sort of the reversed list: of a repeated name, the last sent comes first and stays.
    parameters.reverse();
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    parameters.dedup_by(|later, kept| later.0 == kept.0);
    Ok(parameters)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<InitialPacket, StartupError> {
        let mut reader = bytes;
        read_initial_packet(&mut reader).await
    }

    fn startup_bytes(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = vec![0, 3];
        body.extend_from_slice(&minor.to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn decodes_each_kind() {
        assert_eq!(
            parse(&[0, 0, 0, 8, 4, 210, 22, 47]).await.expect("ssl"),
            InitialPacket::SslRequest
        );
        assert_eq!(
            parse(&[0, 0, 0, 8, 4, 210, 22, 48]).await.expect("gss"),
            InitialPacket::GssEncRequest
        );
        assert_eq!(
            parse(&[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 1, 2, 3, 4])
                .await
                .expect("cancel"),
            InitialPacket::Cancel {
                pid: 7,
                secret: vec![1, 2, 3, 4]
            }
        );
        let InitialPacket::Startup(startup) =
            parse(&startup_bytes(0, &[("user", "app"), ("database", "db")]))
                .await
                .expect("startup")
        else {
            panic!("not a startup");
        };
        assert_eq!(startup.get("user"), Some("app"));
        assert_eq!(startup.get("database"), Some("db"));
    }

    #[tokio::test]
    async fn rejects_garbage() {
        assert!(matches!(
            parse(&[0, 0, 0, 2]).await,
            Err(StartupError::BadLength(2))
        ));
        assert!(matches!(
            parse(&[0, 1, 0, 0]).await,
            Err(StartupError::BadLength(_))
        ));
        assert!(matches!(parse(&[]).await, Err(StartupError::Closed)));
        assert!(matches!(
            parse(&[0, 0, 0, 8, 0, 2, 0, 0]).await,
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
    }

    #[tokio::test]
    async fn rejects_a_parameter_list_without_its_terminators() {
        let whole = startup_bytes(0, &[("user", "app")]);
        for cut in [1, 2] {
            // The final NUL gone, then the value's as well (lengths adjusted).
            let mut bytes = whole[..whole.len() - cut].to_vec();
            let length = (bytes.len() as u32).to_be_bytes();
            bytes[..4].copy_from_slice(&length);
            let error = parse(&bytes).await.expect_err("invalid layout");
            assert!(
                error.to_string().contains("expected terminator"),
                "{cut}: {error}"
            );
        }
        let mut name_only = startup_bytes(0, &[]);
        name_only.truncate(name_only.len() - 1);
        name_only.extend_from_slice(b"user\0\0");
        let length = (name_only.len() as u32).to_be_bytes();
        name_only[..4].copy_from_slice(&length);
        assert!(parse(&name_only).await.is_err(), "a name without a value");
        let empty = startup_bytes(0, &[]);
        assert!(parse(&empty).await.is_ok(), "no parameters at all");
    }

    /// Sorted by name; a repeated name keeps the value sent last; invalid UTF-8 is replaced.
    #[tokio::test]
    async fn parameters_are_sorted_and_the_last_of_a_name_wins() {
        let bytes = startup_bytes(
            0,
            &[
                ("user", "app"),
                ("application_name", "one"),
                ("database", "db"),
                ("application_name", "two"),
            ],
        );
        let InitialPacket::Startup(startup) = parse(&bytes).await.expect("startup") else {
            panic!("not a startup");
        };
        let names: Vec<_> = startup
            .parameters
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("application_name", "two"),
                ("database", "db"),
                ("user", "app")
            ]
        );
        let mut bytes = startup_bytes(0, &[("user", "ab")]);
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        let InitialPacket::Startup(startup) = parse(&bytes).await.expect("startup") else {
            panic!("not a startup");
        };
        assert_eq!(startup.get("user"), Some("a\u{fffd}"));
    }
}
