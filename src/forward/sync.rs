//! What both directions of an attached period know about the protocol's sync points
//! ([`SyncState`]), and the header visitors that keep it: client → server counts sync points and
//! stops at Terminate; server → client tracks ReadyForQuery and ParameterStatus.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use super::session_state::{SessionChange, change_in_text, change_of_tag};
use crate::protocol::framing::{
    FrameVisitor, MAX_CAPTURE, PARAMETER_STATUS, READY_FOR_QUERY, TransactionStatus,
    parameter_status,
};

/// CommandComplete.
const COMMAND_COMPLETE: u8 = b'C';

/// What both directions of one client session know about its protocol state.
#[derive(Debug)]
pub struct SyncState {
    /// ReadyForQuery messages still owed to the client (its sync points not yet answered).
    pub(super) expected_ready: AtomicU32,
    /// The client's stream is at a message boundary with no unsynced extended-protocol
    /// messages (Parse/Bind/Describe/Execute/Close/Flush) after its last sync point.
    pub(super) client_quiet: AtomicBool,
    /// Status byte of the last ReadyForQuery.
    pub(super) status: AtomicU8,
    /// The [`SessionChange`]s the client made on its upstream connection, one bit each.
    changed: AtomicU8,
    /// The client's transaction failed with no upstream connection left (a cancel closed it):
    /// the sidecar answers until the client ends the transaction.
    aborted: AtomicBool,
}

impl Default for SyncState {
    fn default() -> Self {
        Self {
            expected_ready: AtomicU32::new(0),
            client_quiet: AtomicBool::new(true),
            status: AtomicU8::new(b'I'),
            changed: AtomicU8::new(0),
            aborted: AtomicBool::new(false),
        }
    }
}

impl SyncState {
    /// The upstream connection owes the client nothing and is outside a transaction: it can
    /// serve someone else.
    pub fn is_idle(&self) -> bool {
        self.owes_nothing() && self.status() == TransactionStatus::Idle
    }

    /// Every sync point of the client was answered and it sent nothing unsynced since.
    pub fn owes_nothing(&self) -> bool {
        self.expected_ready.load(Ordering::Acquire) == 0
            && self.client_quiet.load(Ordering::Acquire)
    }

    pub fn status(&self) -> TransactionStatus {
        TransactionStatus::from_byte(self.status.load(Ordering::Acquire))
    }

    /// The client waits for the answer to exactly one sync point and sent nothing unsynced
    /// after it: one ErrorResponse and ReadyForQuery answer it in full.
    pub fn awaiting_one_answer(&self) -> bool {
        self.expected_ready.load(Ordering::Acquire) == 1
            && self.client_quiet.load(Ordering::Acquire)
    }

    /// The session state the client left on its upstream connection, if any (session mode):
    /// the lowest kind, so [`SessionChange::NamedStatement`] only when it is all there is.
    pub fn session_change(&self) -> Option<SessionChange> {
        SessionChange::lowest(self.changed.load(Ordering::Acquire))
    }

    /// The client's transaction failed and only the sidecar answers it.
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    pub fn set_aborted(&self, aborted: bool) {
        self.aborted.store(aborted, Ordering::Release);
    }

    /// The client's upstream connection was reset or replaced: it holds no state of its own.
    pub fn forget_session_changes(&self) {
        self.changed.store(0, Ordering::Release);
    }

    pub(super) fn note(&self, change: SessionChange) {
        self.changed.fetch_or(change.bit(), Ordering::AcqRel);
    }

    /// One owed ReadyForQuery was answered by the sidecar itself, with `status`.
    pub fn answered_locally(&self, status: u8) {
        let _ = self
            .expected_ready
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.status.store(status, Ordering::Release);
    }
}

/// Client → server: sync points, Terminate, and the session state statements leave.
pub(super) struct Upward<'a> {
    pub(super) state: &'a SyncState,
    pub(super) quiet: bool,
    pub(super) terminate_at: Option<isize>,
    /// The names of the client's protocol-level named statements.
    pub(super) names: &'a mut StatementNames,
}

/// The names of a session's protocol-level named statements, to close them when it leaves.
#[derive(Debug, Default)]
pub struct StatementNames(Vec<Box<[u8]>>);

impl StatementNames {
    /// More than this many are not tracked: the connection is then reset or closed.
    const MOST: usize = 256;

    /// The names, in the order first seen.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|name| &name[..])
    }

    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client closed `name` itself.
    fn remove(&mut self, name: &[u8]) {
        self.0.retain(|known| known[..] != *name);
    }

    /// Adds `name`; false when there are too many to track.
    fn add(&mut self, name: &[u8]) -> bool {
        if !self.0.iter().any(|known| known[..] == *name) {
            if self.0.len() >= Self::MOST {
                return false;
            }
            self.0.push(name.into());
        }
        true
    }
}

impl FrameVisitor for Upward<'_> {
    fn header(&mut self, tag: u8, body_len: usize, start: isize) -> bool {
        if self.terminate_at.is_some() {
            return false;
        }
        match tag {
            // Query, Sync, FunctionCall: each is answered by exactly one ReadyForQuery.
            b'Q' | b'S' | b'F' => {
                self.state.expected_ready.fetch_add(1, Ordering::AcqRel);
                self.quiet = true;
            }
            b'X' => self.terminate_at = Some(start),
            // COPY data, done, fail: inside a Query already counted.
            b'd' | b'c' | b'f' => {}
            // Parse, Bind, Describe, Execute, Close, Flush and anything else: unsynced work.
            _ => self.quiet = false,
        }
        if tag == b'C' && !self.names.is_empty() {
            // A Close, maybe of a named statement that need not be closed again.
            return body_len <= MAX_CAPTURE;
        }
        if matches!(tag, b'Q' | b'P') {
            if body_len <= MAX_CAPTURE {
                return true;
            }
            // Too long to read here: assume it left state.
            self.state.note(SessionChange::Other);
        }
        false
    }

    fn message(&mut self, tag: u8, body: &[u8], _end: usize) {
        if tag == b'C' {
            if let Some((b'S', name)) = body.split_first() {
                self.names
                    .remove(name.split(|&b| b == 0).next().unwrap_or_default());
            }
            return;
        }
        if tag == b'P' {
            let name = body.split(|&b| b == 0).next().unwrap_or_default();
            if !name.is_empty() {
                self.state.note(SessionChange::NamedStatement);
                if !self.names.add(name) {
                    self.state.note(SessionChange::Other);
                }
            }
        }
        if let Some(change) = change_in_text(body) {
            self.state.note(change);
        }
    }
}

/// Server → client: ReadyForQuery, ParameterStatus and (session mode) the session state
/// CommandComplete tags show.
pub(super) struct Downward<'a> {
    pub(super) state: &'a SyncState,
    pub(super) parameters: &'a mut Vec<(String, String)>,
    pub(super) last_tag: u8,
    pub(super) transactions: u64,
    /// Session mode: note the session state the client leaves.
    pub(super) track_session: bool,
}

impl FrameVisitor for Downward<'_> {
    fn header(&mut self, tag: u8, _body_len: usize, _start: isize) -> bool {
        self.last_tag = tag;
        tag == READY_FOR_QUERY
            || tag == PARAMETER_STATUS
            || (tag == COMMAND_COMPLETE && self.track_session)
    }

    fn message(&mut self, tag: u8, body: &[u8], _end: usize) {
        match tag {
            READY_FOR_QUERY => {
                if let Some(status) = body.first() {
                    self.state.status.store(*status, Ordering::Release);
                    if *status == b'I' {
                        self.transactions += 1;
                    }
                }
                let _ = self.state.expected_ready.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |n| n.checked_sub(1),
                );
            }
            PARAMETER_STATUS => {
                if let Some((name, value)) = parameter_status(body) {
                    set_parameter(self.parameters, name, value);
                }
                if self.track_session {
                    self.state.note(SessionChange::Setting);
                }
            }
            COMMAND_COMPLETE => {
                if let Some(change) = change_of_tag(body) {
                    self.state.note(change);
                }
            }
            _ => {}
        }
    }
}

/// Replaces or adds one ParameterStatus value.
pub fn set_parameter(parameters: &mut Vec<(String, String)>, name: String, value: String) {
    match parameters.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => parameters.push((name, value)),
    }
}
