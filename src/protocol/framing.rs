//! Header-only framing of a message stream. Every message after startup is a 1-byte tag and a
//! 4-byte big-endian length that counts itself; the forwarder passes bytes through unchanged
//! and [`FrameScanner`] walks the headers, telling a [`FrameVisitor`] about each message and
//! handing it the body only of the few messages it asks for (ReadyForQuery, ParameterStatus).
//! Bodies that sit inside one read are handed over in place; only a header or a requested body
//! that straddles two reads is copied.

/// ReadyForQuery message tag.
pub const READY_FOR_QUERY: u8 = b'Z';
/// ParameterStatus message tag (server to client).
pub const PARAMETER_STATUS: u8 = b'S';

/// A requested body larger than this is not captured (ParameterStatus values are short).
pub const MAX_CAPTURE: usize = 64 * 1024;

/// The largest length field PostgreSQL sends or accepts (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB - 1):
/// a message longer than that can only be garbage, or an attack on the server's memory.
pub const MAX_MESSAGE_LENGTH: u32 = 0x3fff_ffff;

/// A length field smaller than the length itself, or larger than [`MAX_MESSAGE_LENGTH`]: the
/// stream is not PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {length} for message type '{}'", char::from(*.tag))]
pub struct FramingError {
    pub tag: u8,
    pub length: u32,
}

/// Transaction status from a ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            b'I' => Self::Idle,
            b'T' => Self::InTransaction,
            _ => Self::Failed,
        }
    }
}

/// Receives the messages a [`FrameScanner`] walks over.
pub trait FrameVisitor {
    /// A message starts at offset `start` of the chunk being scanned (negative when its
    /// header began in an earlier chunk); return true to be handed its whole body in
    /// [`FrameVisitor::message`].
    fn header(&mut self, tag: u8, body_len: usize, start: isize) -> bool;
    /// A message whose body was asked for is complete; `end` is the offset just past it in the
    /// chunk being scanned.
    fn message(&mut self, tag: u8, body: &[u8], end: usize);
}

/// Walks message headers across arbitrarily split chunks.
#[derive(Debug, Default, Clone)]
pub struct FrameScanner {
    /// Body bytes of the current message still to pass over (or to capture).
    remaining: usize,
    /// Tag of the message being passed over or captured.
    tag: u8,
    /// The current body is being captured into `captured`.
    capturing: bool,
    captured: Vec<u8>,
    /// A header that straddles chunks.
    partial: [u8; 5],
    partial_len: usize,
}

impl FrameScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the scanner sits exactly on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.partial_len == 0
    }

    /// How many bytes at the end of the last chunk are the start of a header not yet complete.
    pub fn partial_header_len(&self) -> usize {
        self.partial_len
    }

    /// Scans one chunk, calling `visitor` for every message header and requested body.
    pub fn scan<V: FrameVisitor>(
        &mut self,
        chunk: &[u8],
        visitor: &mut V,
    ) -> Result<(), FramingError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let step = self.remaining.min(chunk.len() - pos);
                if self.capturing {
                    self.captured.extend_from_slice(&chunk[pos..pos + step]);
                }
                self.remaining -= step;
                pos += step;
                if self.remaining == 0 && self.capturing {
                    self.capturing = false;
                    let mut body = std::mem::take(&mut self.captured);
                    visitor.message(self.tag, &body, pos);
                    // Keep a small buffer for the next split body, not a large one for life.
                    if body.capacity() <= 4096 {
                        body.clear();
                        self.captured = body;
                    }
                }
                continue;
            }
            let (tag, body_len) = if self.partial_len == 0 && chunk.len() - pos >= 5 {
                let fields = header_fields(&chunk[pos..pos + 5])?;
                pos += 5;
                fields
            } else {
                self.partial[self.partial_len] = chunk[pos];
                self.partial_len += 1;
                pos += 1;
                if self.partial_len < 5 {
                    continue;
                }
                self.partial_len = 0;
                header_fields(&self.partial)?
            };
            let wants_body = visitor.header(tag, body_len, pos as isize - 5);
            if wants_body && body_len <= MAX_CAPTURE {
                if chunk.len() - pos >= body_len {
                    // The whole body is in this chunk: hand it over in place.
                    let end = pos + body_len;
                    visitor.message(tag, &chunk[pos..end], end);
                    pos = end;
                    continue;
                }
                self.capturing = true;
                self.captured.clear();
            }
            self.tag = tag;
            self.remaining = body_len;
        }
        Ok(())
    }
}

fn header_fields(header: &[u8]) -> Result<(u8, usize), FramingError> {
    let tag = header[0];
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if !(4..=MAX_MESSAGE_LENGTH).contains(&length) {
        return Err(FramingError { tag, length });
    }
    Ok((tag, length as usize - 4))
}

/// A whole message: `tag`, the length, `body`. Bodies the sidecar builds are bounded far below
/// the 4 GiB a length can say.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The bytes before the first NUL (all of them without one): a C string of a message body.
/// memchr, not a byte-by-byte split: every statement a session-mode client sends passes here.
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    memchr::memchr(0, bytes).map_or(bytes, |end| &bytes[..end])
}

/// Splits a ParameterStatus body into name and value.
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let mut parts = body.split(|b| *b == 0);
    let name = std::str::from_utf8(parts.next()?).ok()?;
    let value = std::str::from_utf8(parts.next()?).ok()?;
    Some((name.to_owned(), value.to_owned()))
}

/// Replaces or adds one ParameterStatus value.
pub fn set_parameter(parameters: &mut Vec<(String, String)>, name: String, value: String) {
    match parameters.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => parameters.push((name, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(message(b'T', b"row description"));
        s.extend(message(b'D', &[7u8; 300]));
        s.extend(message(b'C', b"SELECT 1\0"));
        s.extend(message(b'S', b"TimeZone\0UTC\0"));
        s.extend(message(b'Z', b"T"));
        s.extend(message(b'D', b""));
        s.extend(message(b'Z', b"I"));
        s
    }

    /// Records what it sees, with absolute offsets.
    #[derive(Default)]
    struct Recorder {
        base: usize,
        tags: Vec<u8>,
        ready: Vec<(usize, TransactionStatus)>,
        parameters: Vec<(String, String)>,
    }

    impl FrameVisitor for Recorder {
        fn header(&mut self, tag: u8, _body_len: usize, start: isize) -> bool {
            assert!(start >= -4, "a header starts at most 4 bytes back");
            self.tags.push(tag);
            tag == READY_FOR_QUERY || tag == PARAMETER_STATUS
        }

        fn message(&mut self, tag: u8, body: &[u8], end: usize) {
            match tag {
                READY_FOR_QUERY => self
                    .ready
                    .push((self.base + end, TransactionStatus::from_byte(body[0]))),
                PARAMETER_STATUS => self.parameters.extend(parameter_status(body)),
                _ => {}
            }
        }
    }

    #[test]
    fn same_events_for_every_split() {
        let s = stream();
        let first_ready = s.len() - 6 - 5;
        for split_size in 1..=s.len() {
            let mut scanner = FrameScanner::new();
            let mut recorder = Recorder::default();
            for (i, chunk) in s.chunks(split_size).enumerate() {
                recorder.base = i * split_size;
                scanner.scan(chunk, &mut recorder).expect("valid");
            }
            assert_eq!(recorder.tags, b"TDCSZDZ", "split {split_size}");
            assert_eq!(
                recorder.ready,
                vec![
                    (first_ready, TransactionStatus::InTransaction),
                    (s.len(), TransactionStatus::Idle)
                ],
                "split {split_size}"
            );
            assert_eq!(
                recorder.parameters,
                vec![("TimeZone".to_owned(), "UTC".to_owned())]
            );
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn rejects_impossible_lengths() {
        let mut scanner = FrameScanner::new();
        assert!(
            scanner
                .scan(&[b'D', 0, 0, 0, 3, 0], &mut Recorder::default())
                .is_err()
        );
        let mut scanner = FrameScanner::new();
        assert!(
            scanner
                .scan(&[b'Q', 0x7f, 0xff, 0xff, 0xff, 0], &mut Recorder::default())
                .is_err(),
            "over PostgreSQL's 1 GiB"
        );
    }
}
