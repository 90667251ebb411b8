//! What both directions know of a COPY FROM STDIN in progress, for the count of sync points.
//! PostgreSQL ignores a Sync it reads in copy-in mode, so a COPY begun with Execute and Sync
//! (libpq's `PQexecParams`, tokio-postgres) gets one ReadyForQuery for that Sync and the one
//! after CopyDone together; the client's CopyDone or CopyFail tells the sidecar to forget the
//! first. That holds unless the COPY failed before the server read the first Sync (a COPY into
//! a view, a statement trigger that raises): the server then answers both. The sidecar cannot
//! tell the two apart when the error and the client's CopyDone/CopyFail cross, so then it
//! marks the connection's count uncertain: it answers the client as the server does, but the
//! connection is never given to anyone else (transaction mode keeps it for the client's
//! session) and is closed at the end.

use std::sync::atomic::{AtomicU8, Ordering};

/// The server sent CopyInResponse, and no ReadyForQuery since.
const IN: u8 = 1;
/// The client ended the COPY and its Syncs after the Execute were forgotten.
const FORGOT: u8 = 2;
/// The server sent an error in copy-in mode before the client ended the COPY.
const FAILED: u8 = 4;
/// The count of sync points on this connection may be off by one: never pool it. It stays
/// until the connection is replaced.
const UNCERTAIN: u8 = 8;

/// The COPY state of one client's upstream connection.
#[derive(Debug, Default)]
pub struct CopyState(AtomicU8);

impl CopyState {
    /// The server is in copy-in mode.
    pub fn server_in_copy(&self) -> bool {
        self.0.load(Ordering::Acquire) & IN != 0
    }

    /// The count of sync points may be off: the connection must not serve anyone else.
    pub fn uncertain(&self) -> bool {
        self.0.load(Ordering::Acquire) & UNCERTAIN != 0
    }

    /// CopyInResponse.
    pub fn began(&self) {
        self.update(|bits| (bits & UNCERTAIN) | IN);
    }

    /// An ErrorResponse: in copy-in mode, the COPY failed.
    pub fn error(&self) {
        self.update(|bits| match bits & IN != 0 {
            false => bits,
            true if bits & FORGOT != 0 => bits | UNCERTAIN,
            true => bits | FAILED,
        });
    }

    /// ReadyForQuery: copy-in mode is over.
    pub fn ended(&self) {
        self.update(|bits| bits & UNCERTAIN);
    }

    /// The client ended a COPY it began with an Execute followed by Syncs, which are then
    /// forgotten: true when the server is in copy-in mode (else nothing is forgotten).
    pub fn client_ended(&self) -> bool {
        let bits = self.0.load(Ordering::Acquire);
        if bits & IN == 0 {
            return false;
        }
        self.update(|bits| match bits & FAILED != 0 {
            true => bits | FORGOT | UNCERTAIN,
            false => bits | FORGOT,
        });
        true
    }

    /// The upstream connection was closed and another comes.
    pub fn replaced(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn update(&self, next: impl Fn(u8) -> u8) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| Some(next(bits)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_crossing_the_clients_copy_end_makes_the_count_uncertain() {
        // Ended by the client, then completed: certain.
        let copy = CopyState::default();
        copy.began();
        assert!(copy.client_ended());
        copy.ended();
        assert!(!copy.uncertain() && !copy.server_in_copy());
        // Failed, then ended by the client; and the other way round: uncertain, and it stays.
        for error_first in [true, false] {
            let copy = CopyState::default();
            copy.began();
            if error_first {
                copy.error();
            }
            assert!(copy.client_ended());
            if !error_first {
                copy.error();
            }
            copy.ended();
            assert!(copy.uncertain());
            copy.began();
            assert!(copy.uncertain());
            copy.replaced();
            assert!(!copy.uncertain());
        }
        // An error outside copy-in mode, a CopyDone outside it: nothing.
        let copy = CopyState::default();
        copy.error();
        assert!(!copy.client_ended());
        assert!(!copy.uncertain());
    }
}
