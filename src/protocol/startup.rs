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
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    /// Boxed: the login's futures hold this enum (and what it becomes) at several levels.
    Startup(Box<StartupRequest>),
}

/// A decoded StartupMessage: its parameter list kept as one string and read in place, with an
/// index of where each name and value is. Three allocations with its box; a `String` for each
/// name and value, and the pool key built from them, took ten and ~1,400 instructions of a
/// transaction-mode `pgbench -C` connection's 31,300 (callgrind, issue 16). (The parameters as
/// one sorted `name\0value\0...` string without an index cost more: each of the login's six
/// walks over them searched every NUL again.)
#[derive(Clone)]
pub struct StartupRequest {
    pub major: u16,
    pub minor: u16,
    /// The packet's parameter list as sent, NULs included; invalid UTF-8 replaced.
    text: String,
    /// Where each parameter is in `text`, sorted by name, each name once (its last value).
    parameters: Vec<Parameter>,
}

/// Where one name and its value are in a [`StartupRequest`]'s text: `text[name..name_end]`
/// and `text[name_end + 1..value_end]`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Parameter {
    name: u32,
    name_end: u32,
    value_end: u32,
}

impl StartupRequest {
    /// The value of parameter `name`, if the client sent it.
    pub fn get(&self, name: &str) -> Option<&str> {
        let text = self.text.as_bytes();
        let at = self
            .parameters
            .iter()
            .find(|at| at.name_bytes(text) == name.as_bytes())?;
        Some(at.read(&self.text).1)
    }

    /// The parameters, sorted by name, each name once.
    pub fn parameters(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        self.parameters.iter().map(|at| at.read(&self.text))
    }
}

impl Parameter {
    /// The name's bytes in `text`: compared as bytes, names need no check of where their
    /// characters start (the login looks names up six times over).
    fn name_bytes(self, text: &[u8]) -> &[u8] {
        text.get(self.name as usize..self.name_end as usize)
            .unwrap_or_default()
    }

    /// The name and value in `text`.
    fn read(self, text: &str) -> (&str, &str) {
        let piece = |from: u32, to: u32| text.get(from as usize..to as usize).unwrap_or("");
        (
            piece(self.name, self.name_end),
            piece(self.name_end + 1, self.value_end),
        )
    }
}

/// Equal when they ask for the same: version and parameters (not how the packet spelled them).
impl PartialEq for StartupRequest {
    fn eq(&self, other: &Self) -> bool {
        (self.major, self.minor) == (other.major, other.minor)
            && self.parameters().eq(other.parameters())
    }
}

impl Eq for StartupRequest {}

impl std::fmt::Debug for StartupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupRequest")
            .field("major", &self.major)
            .field("minor", &self.minor)
            .field("parameters", &self.parameters().collect::<Vec<_>>())
            .finish()
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
            Ok(InitialPacket::Startup(Box::new(startup_request(
                major,
                minor,
                &packet[8..],
            )?)))
        }
    }
}

/// A StartupMessage's body (after its version): name/value pairs of NUL-terminated strings,
/// ended by one more NUL, checked as PostgreSQL checks them; sorted by name, a repeated name
/// keeping its last value (PostgreSQL applies them in order). Read here rather than by
/// pgwire, which takes a last pair without its terminator (a missing user name was then
/// blamed for it) and builds a map of its own. Invalid UTF-8 is replaced, as pgwire did: a
/// NUL ends any invalid sequence, so the replacement keeps every string in its place.
fn startup_request(major: u16, minor: u16, body: &[u8]) -> Result<StartupRequest, StartupError> {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let mut parameters = index(&text)?;
    // Stable sort of the reversed list: of a repeated name, the last sent comes first and stays.
    parameters.reverse();
    let name = |at: &Parameter| at.name_bytes(text.as_bytes());
    parameters.sort_by(|a, b| name(a).cmp(name(b)));
    parameters.dedup_by(|later, kept| name(later) == name(kept));
    Ok(StartupRequest {
        major,
        minor,
        parameters,
        text,
    })
}

/// Where each name and value of a StartupMessage's parameter list is, in the order sent; an
/// error when its terminators are not where they belong.
fn index(text: &str) -> Result<Vec<Parameter>, StartupError> {
    let invalid = || StartupError::Invalid("layout: expected terminator as last byte".to_owned());
    let bytes = text.as_bytes();
    let mut parameters = Vec::with_capacity(4);
    let nul_after = |from: usize| {
        let rest = bytes.get(from..)?;
        rest.iter().position(|b| *b == 0).map(|at| from + at)
    };
    // Within u32: the text is at most 3 x MAX_STARTUP_PACKET bytes.
    let mut at = 0;
    loop {
        let name_end = nul_after(at).ok_or_else(invalid)?;
        // An empty name ends the list; nothing may follow it.
        if name_end == at {
            return if at + 1 == bytes.len() {
                Ok(parameters)
            } else {
                Err(invalid())
            };
        }
        let value_end = nul_after(name_end + 1).ok_or_else(invalid)?;
        parameters.push(Parameter {
            name: at as u32,
            name_end: name_end as u32,
            value_end: value_end as u32,
        });
        at = value_end + 1;
    }
}

#[cfg(test)]
#[path = "startup_tests.rs"]
mod tests;
