//! What a session-mode client built on its upstream connection that the sidecar can build again
//! on another: its protocol-level named statements (their Parse messages) and its plain `SET`
//! statements (their text). When a cancel closes the connection (RDS Proxy has no other way),
//! the client goes on with another connection on which these are replayed first; when it leaves,
//! its named statements are closed with Close messages. Bounded: past the bounds the session
//! counts as holding state the sidecar cannot rebuild.

use crate::protocol::framing::message;

/// A named statement: the client's name for it and its Parse message.
type NamedParse = (Box<[u8]>, Box<[u8]>);

/// The replayable part of one client's session state.
#[derive(Debug, Default)]
pub struct SessionReplay {
    /// Named statements, in the order first seen.
    statements: Vec<NamedParse>,
    /// Plain `SET` statements, as sent.
    settings: Vec<Box<[u8]>>,
    bytes: usize,
}

impl SessionReplay {
    /// More than this many statements plus settings, or bytes, are not kept.
    const MOST_ENTRIES: usize = 256;
    const MOST_BYTES: usize = 256 * 1024;

    /// The names of the named statements.
    pub fn statement_names(&self) -> impl Iterator<Item = &[u8]> {
        self.statements.iter().map(|(name, _)| &name[..])
    }

    /// The Parse messages of the named statements.
    pub fn parse_messages(&self) -> impl Iterator<Item = &[u8]> {
        self.statements.iter().map(|(_, parse)| &parse[..])
    }

    /// The texts of the plain `SET` statements.
    pub fn settings(&self) -> impl Iterator<Item = &[u8]> {
        self.settings.iter().map(|text| &text[..])
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.settings.is_empty()
    }

    pub fn has_settings(&self) -> bool {
        !self.settings.is_empty()
    }

    pub fn has_statements(&self) -> bool {
        !self.statements.is_empty()
    }

    /// Keeps the named Parse whose body is `body` (its name first); false past the bounds.
    pub(super) fn add_parse(&mut self, name: &[u8], body: &[u8]) -> bool {
        self.remove_statement(name);
        let message = message(b'P', body);
        if !self.room_for(message.len()) {
            return false;
        }
        self.bytes += message.len();
        self.statements.push((name.into(), message.into()));
        true
    }

    /// The client closed `name` itself.
    pub(super) fn remove_statement(&mut self, name: &[u8]) {
        if let Some(at) = self.statements.iter().position(|(n, _)| n[..] == *name) {
            let (_, parse) = self.statements.remove(at);
            self.bytes -= parse.len();
        }
    }

    /// Keeps a plain `SET` statement's text; false past the bounds.
    pub(super) fn add_setting(&mut self, text: &[u8]) -> bool {
        if !self.room_for(text.len()) {
            return false;
        }
        self.bytes += text.len();
        self.settings.push(text.into());
        true
    }

    fn room_for(&self, bytes: usize) -> bool {
        self.statements.len() + self.settings.len() < Self::MOST_ENTRIES
            && self.bytes + bytes <= Self::MOST_BYTES
    }
}

/// One `SET name …` statement (not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`), alone in
/// its text: what can be sent again as it is. Runs on every statement a session-mode client
/// sends, so it looks at bytes and returns at the first one that rules a SET out.
pub(super) fn is_plain_set(text: &[u8]) -> bool {
    let text = text.trim_ascii_start();
    let set = text
        .get(..4)
        .is_some_and(|w| w[..3].eq_ignore_ascii_case(b"set") && w[3].is_ascii_whitespace());
    if !set {
        return false;
    }
    // Alone: no `;` but trailing ones.
    let body = text.trim_ascii_end();
    let body = &body[..body.len() - body.iter().rev().take_while(|&&b| b == b';').count()];
    if memchr::memchr(b';', body).is_some() || std::str::from_utf8(body).is_err() {
        return false;
    }
    let second = body[3..]
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    !second.is_empty()
        && !second.eq_ignore_ascii_case(b"local")
        && !second.eq_ignore_ascii_case(b"transaction")
        && !second.eq_ignore_ascii_case(b"constraints")
}

/// The text begins a transaction (`BEGIN`, `START TRANSACTION`), so that a cancel of what follows
/// in the same batch leaves the client inside one.
pub(super) fn opens_transaction(text: &[u8]) -> bool {
    let text = text.trim_ascii_start();
    let word = |w: &[u8]| {
        text.get(..w.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(w))
            && !text
                .get(w.len())
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    word(b"begin") || word(b"start")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sets_are_told_apart() {
        for text in [
            &b"SET extra_float_digits = 3"[..],
            b"set search_path to a, b;",
            b"SET SESSION x = 1",
        ] {
            assert!(is_plain_set(text), "{text:?}");
        }
        for text in [
            &b"set local x = 1"[..],
            b"SET TRANSACTION READ ONLY",
            b"set a = 1; set b = 2",
            b"select 1",
            b"set",
        ] {
            assert!(!is_plain_set(text), "{text:?}");
        }
        assert!(opens_transaction(b" BEGIN"));
        assert!(opens_transaction(b"start transaction"));
        assert!(!opens_transaction(b"beginning"));
    }

    #[test]
    fn statements_are_kept_once_and_forgotten_when_closed() {
        let mut replay = SessionReplay::default();
        assert!(replay.add_parse(b"s1", b"s1\0select 1\0\0\0"));
        assert!(replay.add_parse(b"s1", b"s1\0select 2\0\0\0"));
        assert_eq!(replay.statement_names().count(), 1);
        assert!(replay.add_setting(b"SET x = 1"));
        replay.remove_statement(b"s1");
        assert!(!replay.has_statements());
        assert!(!replay.is_empty());
        assert_eq!(replay.bytes, 9);
    }
}
