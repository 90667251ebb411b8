//! Header-only framing of a message stream. Every message after startup is a 1-byte tag and a
//! 4-byte big-endian length that counts itself; the forwarder passes bytes through unchanged
//! and [`FrameScanner`] walks the headers to see where messages end and to catch
//! ReadyForQuery (`Z`) with its transaction status. It allocates nothing and copies at most
//! five header bytes when a header straddles two reads.

/// ReadyForQuery message tag.
pub const READY_FOR_QUERY: u8 = b'Z';

/// A length field smaller than the length itself: the stream is not PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {length} for message type '{}'", char::from(*.tag))]
pub struct FramingError {
    pub tag: u8,
    pub length: u32,
}

/// Transaction status from the most recent ReadyForQuery.
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
    fn from_byte(byte: u8) -> Self {
        match byte {
            b'I' => Self::Idle,
            b'T' => Self::InTransaction,
            _ => Self::Failed,
        }
    }
}

/// Where the last ReadyForQuery in a chunk ended, and its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyAt {
    /// Offset in the chunk just past the ReadyForQuery message.
    pub end: usize,
    pub status: TransactionStatus,
}

/// Walks message headers across arbitrarily split chunks.
#[derive(Debug, Default, Clone)]
pub struct FrameScanner {
    /// Body bytes of the current message still to pass over.
    skip: usize,
    /// A header that straddles chunks: tag + length (+ the status byte for `Z`).
    partial: [u8; 6],
    partial_len: usize,
}

impl FrameScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the scanner sits exactly on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0 && self.partial_len == 0
    }

    /// Scans one chunk; returns the last complete ReadyForQuery in it, if any.
    pub fn scan(&mut self, chunk: &[u8]) -> Result<Option<ReadyAt>, FramingError> {
        let mut pos = 0;
        let mut last = None;
        while pos < chunk.len() {
            if self.skip > 0 {
                let step = self.skip.min(chunk.len() - pos);
                self.skip -= step;
                pos += step;
                continue;
            }
            if self.partial_len == 0 && chunk.len() - pos >= 6 {
                // Fast path: the whole header (and a possible status byte) is in this chunk.
                let header = &chunk[pos..pos + 6];
                let (tag, length) = header_fields(header)?;
                if tag == READY_FOR_QUERY && length == 5 {
                    pos += 6;
                    last = Some(ReadyAt {
                        end: pos,
                        status: TransactionStatus::from_byte(header[5]),
                    });
                } else {
                    pos += 5;
                    self.skip = length as usize - 4;
                }
                continue;
            }
            // Slow path: gather the header byte by byte across chunks.
            self.partial[self.partial_len] = chunk[pos];
            self.partial_len += 1;
            pos += 1;
            if self.partial_len < 5 {
                continue;
            }
            let (tag, length) = header_fields(&self.partial[..5])?;
            if tag == READY_FOR_QUERY && length == 5 {
                if self.partial_len == 6 {
                    last = Some(ReadyAt {
                        end: pos,
                        status: TransactionStatus::from_byte(self.partial[5]),
                    });
                    self.partial_len = 0;
                }
            } else {
                self.partial_len = 0;
                self.skip = length as usize - 4;
            }
        }
        Ok(last)
    }
}

fn header_fields(header: &[u8]) -> Result<(u8, u32), FramingError> {
    let tag = header[0];
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if length < 4 {
        return Err(FramingError { tag, length });
    }
    Ok((tag, length))
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
        s.extend(message(b'Z', b"T"));
        s.extend(message(b'D', b""));
        s.extend(message(b'Z', b"I"));
        s
    }

    #[test]
    fn finds_ready_for_query_in_one_chunk() {
        let s = stream();
        let mut scanner = FrameScanner::new();
        let ready = scanner.scan(&s).expect("valid").expect("ready");
        assert_eq!(ready.end, s.len());
        assert_eq!(ready.status, TransactionStatus::Idle);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn same_result_for_every_split() {
        let s = stream();
        for split_size in 1..=s.len() {
            let mut scanner = FrameScanner::new();
            let mut seen = Vec::new();
            for (i, chunk) in s.chunks(split_size).enumerate() {
                if let Some(ready) = scanner.scan(chunk).expect("valid") {
                    seen.push((i * split_size + ready.end, ready.status));
                }
            }
            assert_eq!(
                seen.last(),
                Some(&(s.len(), TransactionStatus::Idle)),
                "split {split_size}"
            );
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn rejects_impossible_lengths() {
        let mut scanner = FrameScanner::new();
        assert!(scanner.scan(&[b'D', 0, 0, 0, 3, 0]).is_err());
    }
}
