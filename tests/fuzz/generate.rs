//! Inputs for the parser fuzz run: what a client could send before and after login, built to
//! look like PostgreSQL's frontend protocol (so that the parsers get past their first checks)
//! and then damaged (lengths that lie, bodies cut short, bytes flipped, garbage spliced in),
//! and cut into chunks at random points as a socket would deliver them. Every input comes from
//! a seed, so a failure is reproduced by its seed alone.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// SQL the session-state and transaction trackers look for, and some they must not mistake.
const SQL: &[&str] = &[
    "select 1",
    "SET search_path = app",
    "set local statement_timeout = 5",
    "RESET ALL",
    "BEGIN",
    "begin isolation level serializable",
    "START TRANSACTION",
    "COMMIT",
    "rollback",
    "END",
    "ABORT",
    "DISCARD ALL",
    "LISTEN chan",
    "UNLISTEN *",
    "PREPARE p AS select 1",
    "DEALLOCATE ALL",
    "create temp table t(x int)",
    "CREATE TEMPORARY TABLE t2 AS select 1",
    "select pg_advisory_lock(1)",
    "select pg_advisory_unlock_all()",
    "select set_config('a.b', 'c', false)",
    "DECLARE c CURSOR WITH HOLD FOR select 1",
    "DO $$ begin perform 1; end $$",
    "copy t from stdin",
    "/* comment */ SET x = 1",
    "-- line\nBEGIN",
    "SET",
    "",
    " ",
    "\u{feff}SET ä = 'ö'",
];

/// Startup parameter names the sidecar treats specially, and others.
const PARAMETERS: &[&str] = &[
    "user",
    "database",
    "options",
    "application_name",
    "client_encoding",
    "replication",
    "DateStyle",
    "search_path",
    "_pq_.something",
    "",
];

/// Frontend message tags, with a few no frontend sends.
const TAGS: &[u8] = b"QPBDCESHXdcfFp\0\xffZ";

/// A seeded source of inputs.
pub struct Generator {
    rng: StdRng,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Bytes a client could send after login: a run of messages, then damage.
    pub fn message_stream(&mut self) -> Vec<u8> {
        let count = self.rng.random_range(0..12);
        let mut out = Vec::new();
        for _ in 0..count {
            let message = self.message();
            out.extend_from_slice(&message);
        }
        self.damage(&mut out);
        out
    }

    /// Well-formed messages only (no damage), each as its own `(tag, body)`.
    pub fn well_formed_messages(&mut self) -> Vec<(u8, Vec<u8>)> {
        let count = self.rng.random_range(0..12);
        (0..count)
            .map(|_| {
                let tag = self.pick(TAGS);
                (tag, self.body(tag))
            })
            .collect()
    }

    /// The first packet of a connection: SSLRequest, GSSENCRequest, CancelRequest or a
    /// StartupMessage, then damage.
    pub fn initial_packet(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        let code: u32 = match self.rng.random_range(0..8) {
            0 => 80877103,
            1 => 80877104,
            2 => 80877102,
            3 => self.rng.next_u32(),
            4 => 196608 + self.rng.random_range(0..4),
            _ => 196608,
        };
        body.extend_from_slice(&code.to_be_bytes());
        if code == 80877102 {
            body.extend_from_slice(&self.rng.next_u32().to_be_bytes());
            let secret = self.random_bytes(8);
            body.extend_from_slice(&secret);
        } else if code >> 16 == 3 {
            for _ in 0..self.rng.random_range(0..8) {
                let name = self.pick_str(PARAMETERS).as_bytes().to_vec();
                body.extend_from_slice(&name);
                body.push(0);
                let value = self.text();
                body.extend_from_slice(&value);
                body.push(0);
            }
            body.push(0);
        }
        let mut packet = self.length_field(body.len() + 4).to_vec();
        packet.extend_from_slice(&body);
        self.damage(&mut packet);
        packet
    }

    /// `bytes` cut into chunks at random points (at least one chunk).
    pub fn chunks<'a>(&mut self, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = bytes;
        while rest.len() > 1 && self.rng.random_bool(0.7) {
            let at = self.rng.random_range(1..rest.len());
            let (head, tail) = rest.split_at(at);
            chunks.push(head);
            rest = tail;
        }
        chunks.push(rest);
        chunks
    }

    fn message(&mut self) -> Vec<u8> {
        let tag = if self.rng.random_bool(0.05) {
            self.rng.random()
        } else {
            self.pick(TAGS)
        };
        let body = self.body(tag);
        let mut out = vec![tag];
        out.extend_from_slice(&self.length_field(body.len() + 4));
        out.extend_from_slice(&body);
        out
    }

    /// A length that is usually right and sometimes a lie.
    fn length_field(&mut self, right: usize) -> [u8; 4] {
        let length = match self.rng.random_range(0..20) {
            0 => self.rng.next_u32(),
            1 => self.rng.random_range(0..8),
            2 => (right as u32).wrapping_add(self.rng.random_range(1..16)),
            3 => (right as u32).saturating_sub(self.rng.random_range(1..8)),
            _ => right as u32,
        };
        length.to_be_bytes()
    }

    fn body(&mut self, tag: u8) -> Vec<u8> {
        let mut body = Vec::new();
        match tag {
            b'Q' => self.cstr(&mut body, |g| g.sql()),
            b'P' => {
                self.cstr(&mut body, |g| g.name());
                self.cstr(&mut body, |g| g.sql());
                let types = self.rng.random_range(0..4u16);
                body.extend_from_slice(&types.to_be_bytes());
                for _ in 0..types {
                    body.extend_from_slice(&self.rng.next_u32().to_be_bytes());
                }
            }
            b'B' => self.bind(&mut body),
            b'D' | b'C' => {
                body.push(if self.rng.random_bool(0.5) {
                    b'S'
                } else {
                    b'P'
                });
                self.cstr(&mut body, |g| g.name());
            }
            b'E' => {
                self.cstr(&mut body, |g| g.name());
                body.extend_from_slice(&self.rng.random_range(0..3u32).to_be_bytes());
            }
            b'S' | b'H' | b'X' | b'c' => {}
            _ => body = self.random_bytes(64),
        }
        body
    }

    fn bind(&mut self, body: &mut Vec<u8>) {
        self.cstr(body, |g| g.name());
        self.cstr(body, |g| g.name());
        let formats = self.rng.random_range(0..3u16);
        body.extend_from_slice(&formats.to_be_bytes());
        for _ in 0..formats {
            body.extend_from_slice(&self.rng.random_range(0..2u16).to_be_bytes());
        }
        let values = self.rng.random_range(0..3u16);
        body.extend_from_slice(&values.to_be_bytes());
        for _ in 0..values {
            if self.rng.random_bool(0.2) {
                body.extend_from_slice(&(-1i32).to_be_bytes());
            } else {
                let value = self.text();
                body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                body.extend_from_slice(&value);
            }
        }
        body.extend_from_slice(&0u16.to_be_bytes());
    }

    fn cstr(&mut self, body: &mut Vec<u8>, part: impl FnOnce(&mut Self) -> Vec<u8>) {
        let text = part(self);
        body.extend_from_slice(&text);
        body.push(0);
    }

    fn sql(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..10) {
            0 => self.random_bytes(40),
            1 => {
                let a = self.pick_str(SQL);
                let b = self.pick_str(SQL);
                format!("{a}; {b}").into_bytes()
            }
            _ => self.pick_str(SQL).as_bytes().to_vec(),
        }
    }

    fn name(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..6) {
            0 | 1 => Vec::new(),
            2 => b"s1".to_vec(),
            3 => b"s2".to_vec(),
            4 => b"sidecar_s1".to_vec(),
            _ => self.random_bytes(12),
        }
    }

    fn text(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..4) {
            0 => self.random_bytes(20),
            1 => b"-c search_path=app -c statement_timeout=5 --work_mem=64kB".to_vec(),
            2 => b"x\\ y".to_vec(),
            _ => b"UTF8".to_vec(),
        }
    }

    /// Random bytes without NUL (so that C strings stay where they were put).
    fn random_bytes(&mut self, most: usize) -> Vec<u8> {
        let len = self.rng.random_range(0..=most);
        (0..len).map(|_| self.rng.random_range(1..=255u8)).collect()
    }

    /// Flips, cuts or splices, now and then.
    fn damage(&mut self, bytes: &mut Vec<u8>) {
        for _ in 0..self.rng.random_range(0..3) {
            match self.rng.random_range(0..8) {
                0 if !bytes.is_empty() => {
                    let at = self.rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << self.rng.random_range(0..8);
                }
                1 if !bytes.is_empty() => {
                    let at = self.rng.random_range(0..bytes.len());
                    bytes.truncate(at);
                }
                2 => {
                    let at = self.rng.random_range(0..=bytes.len());
                    let garbage = self.random_bytes(16);
                    bytes.splice(at..at, garbage);
                }
                _ => {}
            }
        }
    }

    fn pick(&mut self, from: &[u8]) -> u8 {
        from[self.rng.random_range(0..from.len())]
    }

    fn pick_str(&mut self, from: &[&'static str]) -> &'static str {
        from[self.rng.random_range(0..from.len())]
    }
}
