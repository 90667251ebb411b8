//! What a client left on its upstream connection that outlives a transaction (session mode):
//! settings, prepared statements, listeners, cursors, temporary objects, session advisory
//! locks. A connection its client left clean goes back to the pool as it is; one with state is
//! reset, or closed where a reset would pin it (RDS Proxy pins after DISCARD); one whose only
//! state is protocol-level named statements has them closed with Close messages (no SQL, so
//! nothing that pins). Seen from the bytes already passing: CommandComplete tags and
//! ParameterStatus from the server, named Parse messages and a byte search of Query and Parse
//! texts for what tags do not show (`set_config`, advisory locks, temporary objects, `DO`).
//! What a function changes inside its body (a `set_config` of a setting the server does not
//! report) cannot be seen from here: RDS Proxy cannot see it either, and multiplexes such a
//! connection too.

/// A kind of session state a client left (several may be); the lowest one is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SessionChange {
    /// SET, RESET, set_config, a reported parameter changed.
    Setting = 1,
    /// PREPARE, DEALLOCATE (SQL-level prepared statements).
    PreparedStatement,
    /// LISTEN, UNLISTEN.
    Listen,
    /// DECLARE CURSOR (WITH HOLD outlives the transaction).
    Cursor,
    /// CREATE TABLE / SEQUENCE / VIEW (temporary ones live as long as the session).
    TempObject,
    /// pg_advisory_lock and the other session-level advisory locks.
    AdvisoryLock,
    /// DISCARD, LOAD, a statement too long to read, too many named statements to track.
    Other,
    /// Protocol-level named statements (a named Parse): closed with Close messages, prepared
    /// again on another connection.
    NamedStatement,
}

impl SessionChange {
    pub(super) fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Setting,
            2 => Self::PreparedStatement,
            3 => Self::Listen,
            4 => Self::Cursor,
            5 => Self::TempObject,
            6 => Self::AdvisoryLock,
            7 => Self::Other,
            8 => Self::NamedStatement,
            _ => return None,
        })
    }

    /// Its bit in a set of changes.
    pub(super) fn bit(self) -> u8 {
        1 << (self as u8 - 1)
    }

    /// The lowest change in a set of bits.
    pub(super) fn lowest(bits: u8) -> Option<Self> {
        if bits == 0 {
            return None;
        }
        Self::from_u8(bits.trailing_zeros() as u8 + 1)
    }

    /// The bits of the changes [`crate::forward::replay::SessionReplay`] can rebuild (kept
    /// `SET`s are not a change here: the replay holds them).
    pub(super) fn replayable_bits() -> u8 {
        Self::NamedStatement.bit()
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Setting => "setting",
            Self::PreparedStatement => "prepared_statement",
            Self::Listen => "listen",
            Self::Cursor => "cursor",
            Self::TempObject => "temp_object",
            Self::AdvisoryLock => "advisory_lock",
            Self::Other => "other",
            Self::NamedStatement => "named_statement",
        }
    }
}

/// The session state a CommandComplete tag leaves (the tag without its row count).
pub(super) fn change_of_tag(tag: &[u8]) -> Option<SessionChange> {
    let starts = |prefix: &[u8]| tag.starts_with(prefix);
    // The first byte rules out nearly every tag a workload sends (SELECT, INSERT, UPDATE, ...).
    match tag.first()? {
        b'S' if starts(b"SET") && !starts(b"SET CONSTRAINTS") => Some(SessionChange::Setting),
        b'R' if starts(b"RESET") => Some(SessionChange::Setting),
        b'P' if starts(b"PREPARE") => Some(SessionChange::PreparedStatement),
        b'D' if starts(b"DEALLOCATE") => Some(SessionChange::PreparedStatement),
        b'D' if starts(b"DECLARE CURSOR") => Some(SessionChange::Cursor),
        b'D' if starts(b"DISCARD") => Some(SessionChange::Other),
        b'L' if starts(b"LISTEN") => Some(SessionChange::Listen),
        b'L' if starts(b"LOAD") => Some(SessionChange::Other),
        b'U' if starts(b"UNLISTEN") => Some(SessionChange::Listen),
        b'C' if starts(b"CREATE TABLE") || starts(b"CREATE SEQUENCE") || starts(b"CREATE VIEW") => {
            Some(SessionChange::TempObject)
        }
        _ => None,
    }
}

/// The session state a statement's text shows where its tag does not: a session advisory lock
/// (`pg_advisory_lock`, `pg_try_advisory_lock_shared`, ...; the `_xact_` ones end with the
/// transaction), `set_config`, a temporary object (`CREATE TEMP TABLE … AS`, `SELECT … INTO
/// TEMP`, whose tag is `SELECT n`), or a `DO` block (which may do anything). Case-insensitive;
/// looks only around each `_` and each `t`.
pub(super) fn change_in_text(text: &[u8]) -> Option<SessionChange> {
    const ADVISORY: &[u8] = b"advisory_lock";
    const SET_CONFIG: &[u8] = b"set_config";
    for underscore in memchr::memchr_iter(b'_', text) {
        if around(text, underscore, ADVISORY, 8) {
            return Some(SessionChange::AdvisoryLock);
        }
        if around(text, underscore, SET_CONFIG, 3) {
            return Some(SessionChange::Setting);
        }
    }
    if memchr::memchr2_iter(b't', b'T', text)
        .any(|at| is_word(text, at, b"temp") || is_word(text, at, b"temporary"))
    {
        return Some(SessionChange::TempObject);
    }
    if starts_do_block(text) {
        return Some(SessionChange::Other);
    }
    None
}

/// `word` stands alone at `at` (no letter, digit or `_` on either side).
fn is_word(text: &[u8], at: usize, word: &[u8]) -> bool {
    let ident = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    text.get(at..at + word.len())
        .is_some_and(|found| found.eq_ignore_ascii_case(word))
        && !at
            .checked_sub(1)
            .and_then(|before| text.get(before))
            .is_some_and(ident)
        && !text.get(at + word.len()).is_some_and(ident)
}

/// The text starts with `DO` followed by a space, a quote or a dollar quote.
fn starts_do_block(text: &[u8]) -> bool {
    let text = text.trim_ascii_start();
    text.get(..2).is_some_and(|w| w.eq_ignore_ascii_case(b"do"))
        && text
            .get(2)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'$' || *b == b'\'')
}

/// `needle`, whose `_` is at `offset`, is in `text` around the `_` at `at`.
fn around(text: &[u8], at: usize, needle: &[u8], offset: usize) -> bool {
    at.checked_sub(offset)
        .and_then(|start| text.get(start..start + needle.len()))
        .is_some_and(|found| found.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_that_leave_state() {
        for (tag, change) in [
            (&b"SET"[..], SessionChange::Setting),
            (b"RESET", SessionChange::Setting),
            (b"PREPARE", SessionChange::PreparedStatement),
            (b"DEALLOCATE ALL", SessionChange::PreparedStatement),
            (b"DECLARE CURSOR", SessionChange::Cursor),
            (b"DISCARD ALL", SessionChange::Other),
            (b"LISTEN", SessionChange::Listen),
            (b"CREATE TABLE", SessionChange::TempObject),
        ] {
            assert_eq!(change_of_tag(tag), Some(change), "{tag:?}");
        }
        for tag in [
            &b"SELECT 1"[..],
            b"INSERT 0 1",
            b"BEGIN",
            b"COMMIT",
            b"SET CONSTRAINTS",
            b"",
        ] {
            assert_eq!(change_of_tag(tag), None, "{tag:?}");
        }
    }

    #[test]
    fn texts_that_leave_state() {
        assert_eq!(
            change_in_text(b"select PG_ADVISORY_LOCK(1)"),
            Some(SessionChange::AdvisoryLock)
        );
        assert_eq!(
            change_in_text(b"select pg_try_advisory_lock_shared(1)"),
            Some(SessionChange::AdvisoryLock)
        );
        assert_eq!(
            change_in_text(b"select set_config('jit', 'off', false)"),
            Some(SessionChange::Setting)
        );
        assert_eq!(change_in_text(b"select pg_advisory_xact_lock(1)"), None);
        assert_eq!(
            change_in_text(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
            None
        );
        assert_eq!(change_in_text(b"_"), None);
        for temp in [
            &b"create temp table t as select 1"[..],
            b"SELECT 1 INTO TEMPORARY t",
        ] {
            assert_eq!(change_in_text(temp), Some(SessionChange::TempObject));
        }
        assert_eq!(change_in_text(b"select temperature, tempo from t"), None);
        assert_eq!(
            change_in_text(b" DO $$ begin perform 1; end $$"),
            Some(SessionChange::Other)
        );
        assert_eq!(change_in_text(b"select done from t"), None);
    }
}
