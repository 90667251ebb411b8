//! A prepared statement's result shape, as the server describes it: what PostgreSQL compares
//! before it answers `0A000 cached plan must not change result type`. In transaction mode a
//! client's statement may be prepared again for it on a connection that never held the old
//! one; PostgreSQL would then run it and send rows of the new shape, which a driver that cached
//! the old description (asyncpg, pgJDBC) reads wrongly. So the sidecar remembers the shape each
//! client was told and the shape each connection's statement has, and refuses a Bind where they
//! differ, as PostgreSQL refuses one after a schema change ([`super::guard`]).
//!
//! A shape is a 64-bit FNV-1a hash of a RowDescription's column count and, per column, its name,
//! type OID, type length and type modifier (not its source table and column, which PostgreSQL
//! does not compare either, nor its format, which differs between a statement's and a portal's
//! description). It is computed as the message streams past, with no allocation.

/// A shape; 0 means none is known.
pub type Shape = u64;

/// The shape of a statement that returns no rows (NoData).
pub const NO_DATA: Shape = 1;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// A column's fixed part after its name: table OID (4), column number (2), type OID (4), type
/// length (2), type modifier (4), format (2). Only bytes 6..16 are hashed.
const FIXED: u8 = 18;
const HASHED: std::ops::Range<u8> = 6..16;

/// Hashes a RowDescription body fed in pieces.
#[derive(Debug)]
pub struct ShapeHasher {
    hash: u64,
    /// Bytes of the column count still to come.
    count_left: u8,
    /// Within a column: in its name, or at this byte of its fixed part.
    in_name: bool,
    fixed_at: u8,
    /// The answer was NoData, not a RowDescription.
    no_data: bool,
}

impl Default for ShapeHasher {
    fn default() -> Self {
        Self {
            hash: FNV_OFFSET,
            count_left: 2,
            in_name: true,
            fixed_at: 0,
            no_data: false,
        }
    }
}

impl ShapeHasher {
    /// The hasher of a NoData answer: its shape is [`NO_DATA`].
    pub fn no_data() -> Self {
        Self {
            no_data: true,
            ..Self::default()
        }
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.count_left > 0 {
                self.count_left -= 1;
                self.add(byte);
            } else if self.in_name {
                self.add(byte);
                self.in_name = byte != 0;
            } else {
                if HASHED.contains(&self.fixed_at) {
                    self.add(byte);
                }
                self.fixed_at += 1;
                if self.fixed_at == FIXED {
                    self.fixed_at = 0;
                    self.in_name = true;
                }
            }
        }
    }

    fn add(&mut self, byte: u8) {
        self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }

    /// The shape of the body fed so far (never 0, and [`NO_DATA`] only for NoData).
    pub fn finish(&self) -> Shape {
        if self.no_data {
            return NO_DATA;
        }
        self.hash.max(NO_DATA + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RowDescription body with `columns` of (name, type OID, typmod, format).
    fn row_description(columns: &[(&str, u32, i32, i16)], table: u32) -> Vec<u8> {
        let mut body = (columns.len() as i16).to_be_bytes().to_vec();
        for (n, (name, oid, typmod, format)) in columns.iter().enumerate() {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&(n as i16 + 1).to_be_bytes());
            body.extend_from_slice(&oid.to_be_bytes());
            body.extend_from_slice(&4i16.to_be_bytes());
            body.extend_from_slice(&typmod.to_be_bytes());
            body.extend_from_slice(&format.to_be_bytes());
        }
        body
    }

    fn shape(body: &[u8], piece: usize) -> Shape {
        let mut hasher = ShapeHasher::default();
        for bytes in body.chunks(piece) {
            hasher.feed(bytes);
        }
        hasher.finish()
    }

    #[test]
    fn pieces_do_not_matter_nor_formats_nor_source_columns() {
        let text = row_description(&[("a", 23, -1, 0), ("b", 25, -1, 0)], 16384);
        let binary_elsewhere = row_description(&[("a", 23, -1, 1), ("b", 25, -1, 1)], 99999);
        let whole = shape(&text, text.len());
        assert_eq!(shape(&text, 1), whole);
        assert_eq!(shape(&text, 5), whole);
        assert_eq!(shape(&binary_elsewhere, 3), whole);
        assert!(whole > NO_DATA);
    }

    #[test]
    fn a_column_added_renamed_retyped_or_resized_changes_the_shape() {
        let before = shape(&row_description(&[("a", 23, -1, 0)], 1), 1);
        for after in [
            row_description(&[("a", 23, -1, 0), ("b", 23, -1, 0)], 1),
            row_description(&[("c", 23, -1, 0)], 1),
            row_description(&[("a", 700, -1, 0)], 1),
            row_description(&[("a", 23, 14, 0)], 1),
            row_description(&[], 1),
        ] {
            assert_ne!(shape(&after, 2), before, "{after:?}");
        }
    }
}
