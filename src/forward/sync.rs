//! What both directions of an attached period know about the protocol's sync points
//! ([`SyncState`]), and the header visitors that keep it: client → server counts sync points and
//! stops at Terminate; server → client tracks ReadyForQuery and ParameterStatus.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use super::copy_state::CopyState;
use super::replay::{SessionReplay, is_plain_set, opens_transaction};
use super::session_state::{SessionChange, change_in_text, change_of_tag};
use crate::protocol::framing::{
    FrameVisitor, MAX_CAPTURE, PARAMETER_STATUS, READY_FOR_QUERY, TransactionStatus,
    parameter_status, set_parameter, until_nul,
};

/// CommandComplete.
const COMMAND_COMPLETE: u8 = b'C';
/// CopyInResponse.
const COPY_IN_RESPONSE: u8 = b'G';
/// ErrorResponse.
const ERROR_RESPONSE: u8 = b'E';

/// What both directions of one client session know about its protocol state.
#[derive(Debug)]
pub struct SyncState {
    /// ReadyForQuery messages still owed to the client (its sync points not yet answered).
    pub(super) expected_ready: AtomicU32,
    /// ReadyForQuery messages the client got, wrapping (a cancelled statement ended when this
    /// moved).
    answered: AtomicU32,
    /// Reads from the server, wrapping (a cancelled statement still makes progress while this
    /// moves).
    heard: AtomicU32,
    /// The client's stream is at a message boundary with no unsynced extended-protocol
    /// messages (Parse/Bind/Describe/Execute/Close/Flush) after its last sync point.
    pub(super) client_quiet: AtomicBool,
    /// Status byte of the last ReadyForQuery.
    pub(super) status: AtomicU8,
    /// The [`SessionChange`]s the client made on its upstream connection, one bit each.
    changed: AtomicU8,
    /// [`ABORTED`], [`OPENED`], [`KEPT_DONE`], [`BATCH_FAILED`], and above them the count of
    /// kept `SET` statements whose CommandComplete has not come yet (one byte, so that the
    /// whole state stays 8 bytes).
    flags: AtomicU8,
    /// A COPY FROM STDIN in progress, for the count of sync points.
    pub(super) copy: CopyState,
}

/// The client's transaction failed with no upstream connection left (a cancel closed it): the
/// sidecar answers until the client ends the transaction.
const ABORTED: u8 = 1;
/// What the client sent since the last ReadyForQuery opened a transaction.
const OPENED: u8 = 2;
/// A kept `SET` completed since the last ReadyForQuery: the ParameterStatus it causes comes
/// just before that ReadyForQuery (PostgreSQL 14 and later report changes there).
const KEPT_DONE: u8 = 4;
/// A batch failed before its Sync (a cancel while it waited): dropped up to the Sync, answered.
const BATCH_FAILED: u8 = 8;
/// One kept `SET` awaiting its CommandComplete.
const ONE_SET: u8 = 16;

impl Default for SyncState {
    fn default() -> Self {
        Self {
            expected_ready: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            heard: AtomicU32::new(0),
            client_quiet: AtomicBool::new(true),
            status: AtomicU8::new(b'I'),
            changed: AtomicU8::new(0),
            flags: AtomicU8::new(0),
            copy: CopyState::default(),
        }
    }
}

impl SyncState {
    /// The upstream connection owes the client nothing and is outside a transaction: it can
    /// serve someone else.
    pub fn is_idle(&self) -> bool {
        self.owes_nothing() && self.status() == TransactionStatus::Idle && !self.copy.uncertain()
    }

    /// Every sync point of the client was answered and it sent nothing unsynced since.
    pub fn owes_nothing(&self) -> bool {
        self.expected_ready.load(Ordering::Acquire) == 0
            && self.client_quiet.load(Ordering::Acquire)
    }

    pub fn status(&self) -> TransactionStatus {
        TransactionStatus::from_byte(self.status.load(Ordering::Acquire))
    }

    /// ReadyForQuery messages owed to the client now.
    pub fn owed(&self) -> u32 {
        self.expected_ready.load(Ordering::Acquire)
    }

    /// How many ReadyForQuery messages the client got, wrapping.
    pub fn answered(&self) -> u32 {
        self.answered.load(Ordering::Acquire)
    }

    /// How many reads from the server there were, wrapping.
    pub fn heard(&self) -> u32 {
        self.heard.load(Ordering::Acquire)
    }

    /// The server sent something.
    pub(super) fn note_heard(&self) {
        self.heard.fetch_add(1, Ordering::Release);
    }

    /// One owed ReadyForQuery reached the client.
    fn note_answered(&self) {
        let _ = self
            .expected_ready
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.answered.fetch_add(1, Ordering::AcqRel);
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

    /// Every change the client made can be made again on another connection
    /// ([`SessionReplay`]).
    pub fn session_is_replayable(&self) -> bool {
        self.changed.load(Ordering::Acquire) & !SessionChange::replayable_bits() == 0
    }

    /// The client is inside a transaction, or what it sent since the last ReadyForQuery opened
    /// one.
    pub fn inside_transaction(&self) -> bool {
        self.status() != TransactionStatus::Idle || self.flags.load(Ordering::Acquire) & OPENED != 0
    }

    pub(super) fn note_opened(&self) {
        self.flags.fetch_or(OPENED, Ordering::AcqRel);
    }

    /// A kept `SET` was sent; false when too many await their answer to count.
    fn expect_recorded_set(&self) -> bool {
        self.flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                f.checked_add(ONE_SET)
            })
            .is_ok()
    }

    /// A kept `SET` completed: true when one was outstanding.
    fn take_recorded_set(&self) -> bool {
        self.flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                (f >= ONE_SET).then(|| (f - ONE_SET) | KEPT_DONE)
            })
            .is_ok()
    }

    /// A ParameterStatus now comes from a kept `SET` (one outstanding, or one completed in this
    /// batch).
    fn recorded_set_pending(&self) -> bool {
        let flags = self.flags.load(Ordering::Acquire);
        flags >= ONE_SET || flags & KEPT_DONE != 0
    }

    /// The client's transaction failed and only the sidecar answers it.
    pub fn is_aborted(&self) -> bool {
        self.flags.load(Ordering::Acquire) & ABORTED != 0
    }

    pub fn set_batch_failed(&self) {
        self.flags.fetch_or(BATCH_FAILED, Ordering::AcqRel);
    }

    /// Whether a batch failed before its Sync came (see [`BATCH_FAILED`]), forgetting it.
    pub fn take_batch_failed(&self) -> bool {
        self.flags.fetch_and(!BATCH_FAILED, Ordering::AcqRel) & BATCH_FAILED != 0
    }

    /// Only the sidecar answers the client now: its transaction or its batch failed.
    pub fn only_sidecar_answers(&self) -> bool {
        self.flags.load(Ordering::Acquire) & (ABORTED | BATCH_FAILED) != 0
    }

    pub fn set_aborted(&self, aborted: bool) {
        if aborted {
            self.flags.fetch_or(ABORTED, Ordering::AcqRel);
        } else {
            self.flags.fetch_and(!ABORTED, Ordering::AcqRel);
        }
    }

    /// The client's upstream connection was reset or replaced: it holds no state of its own.
    pub fn forget_session_changes(&self) {
        self.changed.store(0, Ordering::Release);
        self.flags
            .fetch_and(ABORTED | OPENED | BATCH_FAILED, Ordering::AcqRel);
    }

    pub(super) fn note(&self, change: SessionChange) {
        self.changed.fetch_or(change.bit(), Ordering::AcqRel);
    }

    /// The client ended a COPY it began with the extended protocol: the `ignored` Syncs it
    /// sent after the Execute reached the server in copy-in mode, and get no ReadyForQuery
    /// (libpq and tokio-postgres send one right after the Execute and one after CopyDone;
    /// [`CopyState`] says when that may not hold).
    pub(super) fn forget_ignored_syncs(&self, ignored: u32) {
        let _ = self
            .expected_ready
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(ignored))
            });
    }

    /// The upstream connection was closed (a cancel): what was uncertain about it went too.
    pub fn connection_replaced(&self) {
        self.copy.replaced();
    }

    /// One owed ReadyForQuery was answered by the sidecar itself, with `status`.
    pub fn answered_locally(&self, status: u8) {
        self.note_answered();
        self.status.store(status, Ordering::Release);
    }
}

/// Client → server: sync points, Terminate, and the session state statements leave.
pub(super) struct Upward<'a> {
    pub(super) state: &'a SyncState,
    pub(super) quiet: bool,
    pub(super) terminate_at: Option<isize>,
    /// What the client built that can be built again on another connection.
    pub(super) replay: &'a mut SessionReplay,
    /// Syncs since the client's last Execute, Query or FunctionCall (kept across chunks).
    pub(super) syncs_after_execute: &'a mut u32,
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
                *self.syncs_after_execute = if tag == b'S' {
                    self.syncs_after_execute.saturating_add(1)
                } else {
                    0
                };
            }
            b'X' => self.terminate_at = Some(start),
            b'E' => {
                self.quiet = false;
                *self.syncs_after_execute = 0;
            }
            // COPY data: inside a Query or an Execute already counted.
            b'd' => {}
            // CopyDone, CopyFail: the Syncs sent since the COPY's Execute were ignored.
            b'c' | b'f' => {
                let ignored = std::mem::take(self.syncs_after_execute);
                if ignored > 0 && self.state.copy.client_ended() {
                    self.state.forget_ignored_syncs(ignored);
                    // The COPY's Execute is answered at the client's next Sync.
                    self.quiet = false;
                }
            }
            // Parse, Bind, Describe, Execute, Close, Flush and anything else: unsynced work.
            _ => self.quiet = false,
        }
        if tag == b'C' && self.replay.has_statements() {
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
                self.replay.remove_statement(until_nul(name));
            }
            return;
        }
        // Parse: the statement's name, then its text; Query: the text.
        let name = if tag == b'P' { until_nul(body) } else { &[] };
        let text = match tag {
            b'P' => until_nul(body.get(name.len() + 1..).unwrap_or_default()),
            _ => until_nul(body),
        };
        if tag == b'P' && !name.is_empty() {
            self.state.note(SessionChange::NamedStatement);
            if !self.replay.add_parse(name, body) {
                self.state.note(SessionChange::Other);
            }
        } else if is_plain_set(text) {
            // Kept to set again on another connection; too many, and it is plain state. Not
            // inside a transaction: a ROLLBACK would undo it on the server, not in the replay.
            let kept = !self.state.inside_transaction()
                && self.replay.add_setting(text)
                && self.state.expect_recorded_set();
            if !kept {
                self.state.note(SessionChange::Setting);
            }
        }
        if opens_transaction(text) {
            self.state.note_opened();
        }
        if let Some(change) = change_in_text(text) {
            self.state.note(change);
        }
    }
}

/// Server → client: ReadyForQuery, ParameterStatus and (session mode) the session state
/// CommandComplete tags show.
pub(super) struct Downward<'a> {
    pub(super) state: &'a SyncState,
    pub(super) parameters: &'a mut std::sync::Arc<Vec<(String, String)>>,
    pub(super) last_tag: u8,
    /// Nothing but asynchronous messages (notices, notifications, parameter changes) since the
    /// last ReadyForQuery, or since the period began (the connection came idle).
    pub(super) at_ready: bool,
    pub(super) transactions: u64,
    /// Session mode: note the session state the client leaves.
    pub(super) track_session: bool,
}

impl FrameVisitor for Downward<'_> {
    fn header(&mut self, tag: u8, _body_len: usize, _start: isize) -> bool {
        self.last_tag = tag;
        match tag {
            COPY_IN_RESPONSE => self.state.copy.began(),
            ERROR_RESPONSE => self.state.copy.error(),
            _ => {}
        }
        if !matches!(tag, b'N' | b'A' | PARAMETER_STATUS) {
            self.at_ready = tag == READY_FOR_QUERY;
        }
        tag == READY_FOR_QUERY
            || tag == PARAMETER_STATUS
            || (tag == COMMAND_COMPLETE && self.track_session)
    }

    fn message(&mut self, tag: u8, body: &[u8], _end: usize) {
        match tag {
            READY_FOR_QUERY => {
                self.state
                    .flags
                    .fetch_and(!(OPENED | KEPT_DONE), Ordering::AcqRel);
                self.state.copy.ended();
                if let Some(status) = body.first() {
                    self.state.status.store(*status, Ordering::Release);
                    if *status == b'I' {
                        self.transactions += 1;
                    }
                }
                self.state.note_answered();
            }
            PARAMETER_STATUS => {
                if let Some((name, value)) = parameter_status(body) {
                    set_parameter(std::sync::Arc::make_mut(self.parameters), name, value);
                }
                // From a kept SET (application_name, TimeZone...), or from elsewhere.
                if self.track_session && !self.state.recorded_set_pending() {
                    self.state.note(SessionChange::Setting);
                }
            }
            COMMAND_COMPLETE => match change_of_tag(body) {
                // A kept SET: the replay holds it.
                Some(SessionChange::Setting)
                    if body.starts_with(b"SET") && self.state.take_recorded_set() => {}
                Some(change) => self.state.note(change),
                None => {}
            },
            _ => {}
        }
    }
}
