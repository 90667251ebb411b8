//! The server statements one upstream connection holds in transaction mode
//! ([`ServerStatements`]), kept with the connection so that any client attached to it knows
//! which Parses it can skip. The server can lose or invalidate them behind the rewriter's back,
//! and each way is followed here: `DEALLOCATE ALL` / `DISCARD ALL` from a client forgets them
//! all; a Bind answered 26000 (the statement does not exist) forgets that one; a Bind answered
//! 0A000 (`cached plan must not change result type`, after a schema change) marks it stale, to
//! be closed and prepared again at its next use, and so does a Parse answered 42P05 (the server
//! holds a name thought gone). Without this, one client's `DEALLOCATE ALL`
//! (psycopg 3 sends one itself after a `ROLLBACK` or DDL) or an `ALTER TABLE` broke the shared
//! statement for every client of the connection until it was retired. Each statement also
//! carries its result shape once a Describe's answer showed it ([`super::shape`]).

use std::collections::HashMap;

use super::shape::Shape;

/// Server-side names of one connection's prepared statements. One map, not a set per state:
/// it is part of every pooled connection and of the pool's handoffs.
#[derive(Debug, Default)]
pub struct ServerStatements {
    held: HashMap<String, Held>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Usable, with its result shape (0 until a Describe's answer shows it).
    Ready(Shape),
    /// Still held by the server but unusable (its result type changed): closed before the
    /// statement is prepared again.
    Stale,
}

impl ServerStatements {
    /// The connection holds `name`, usable.
    pub fn contains(&self, name: &str) -> bool {
        matches!(self.held.get(name), Some(Held::Ready(_)))
    }

    /// The result shape of usable `name`, 0 when not known.
    pub fn shape(&self, name: &str) -> Shape {
        match self.held.get(name) {
            Some(Held::Ready(shape)) => *shape,
            _ => 0,
        }
    }

    /// A Describe's answer showed the result shape of usable `name`.
    pub fn learn(&mut self, name: &str, shape: Shape) {
        if let Some(Held::Ready(known)) = self.held.get_mut(name) {
            *known = shape;
        }
    }

    /// `name` is being prepared (its shape unknown until described); true when a stale
    /// statement of that name must be closed first.
    pub fn prepare(&mut self, name: &str) -> bool {
        self.held.insert(name.to_owned(), Held::Ready(0)) == Some(Held::Stale)
    }

    /// A Parse of `name` did not happen (its batch failed before it), or the server lost it
    /// (26000). A stale one stays stale: closing a statement that is gone is no error.
    pub fn forget(&mut self, name: &str) {
        if self.contains(name) {
            self.held.remove(name);
        }
    }

    /// A Close of stale `name` did not happen (its batch failed before it): still to close.
    pub fn close_skipped(&mut self, name: &str) {
        self.held.insert(name.to_owned(), Held::Stale);
    }

    /// The server says `name` must be prepared again (0A000).
    pub fn mark_stale(&mut self, name: &str) {
        if let Some(held) = self.held.get_mut(name) {
            *held = Held::Stale;
        }
    }

    /// The server dropped every prepared statement (`DEALLOCATE ALL`, `DISCARD ALL`, a reset).
    pub fn clear(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_statement_is_closed_once_before_it_is_prepared_again() {
        let mut held = ServerStatements::default();
        assert!(!held.prepare("s"), "nothing to close the first time");
        held.mark_stale("s");
        assert!(!held.contains("s"));
        assert!(held.prepare("s"), "the stale one is closed first");
        assert!(held.contains("s"));
        assert!(!held.prepare("s"), "once");
    }

    #[test]
    fn a_close_that_did_not_happen_is_still_owed_after_its_parse_is_forgotten() {
        let mut held = ServerStatements::default();
        held.prepare("s");
        held.mark_stale("s");
        assert!(held.prepare("s"), "Close and Parse sent");
        // The batch failed before both: the Close is still owed.
        held.close_skipped("s");
        held.forget("s");
        assert!(held.prepare("s"));
    }

    #[test]
    fn only_a_held_statement_becomes_stale_and_clear_forgets_both_kinds() {
        let mut held = ServerStatements::default();
        held.mark_stale("never-prepared");
        assert!(
            !held.prepare("never-prepared"),
            "nothing held, nothing to close"
        );
        held.prepare("a");
        held.prepare("b");
        held.mark_stale("b");
        held.clear();
        assert!(!held.contains("a"));
        assert!(!held.prepare("b"), "the server dropped it: no Close");
    }

    #[test]
    fn a_shape_is_known_only_for_a_usable_statement_until_it_is_prepared_again() {
        let mut held = ServerStatements::default();
        held.learn("s", 7);
        assert_eq!(held.shape("s"), 0, "not held");
        held.prepare("s");
        held.learn("s", 7);
        assert_eq!(held.shape("s"), 7);
        held.mark_stale("s");
        assert_eq!(held.shape("s"), 0);
        held.prepare("s");
        assert_eq!(held.shape("s"), 0, "a new plan's shape is learnt again");
    }
}
