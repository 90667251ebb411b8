//! What both directions of an attached period know about the protocol's sync points
//! ([`SyncState`]), and the header visitors that keep it: client → server counts sync points and
//! stops at Terminate; server → client tracks ReadyForQuery and ParameterStatus.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

use crate::protocol::framing::{
    FrameVisitor, PARAMETER_STATUS, READY_FOR_QUERY, TransactionStatus, parameter_status,
};

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
}

impl Default for SyncState {
    fn default() -> Self {
        Self {
            expected_ready: AtomicU32::new(0),
            client_quiet: AtomicBool::new(true),
            status: AtomicU8::new(b'I'),
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

    /// The client waits for the answer to a sync point and sent nothing unsynced after it.
    pub fn awaiting_answer(&self) -> bool {
        self.expected_ready.load(Ordering::Acquire) > 0 && self.client_quiet.load(Ordering::Acquire)
    }

    /// One owed ReadyForQuery was answered by the sidecar itself.
    pub fn answered_locally(&self) {
        let _ = self
            .expected_ready
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.status.store(b'I', Ordering::Release);
    }
}

/// Client → server: sync points and Terminate.
pub(super) struct Upward<'a> {
    pub(super) state: &'a SyncState,
    pub(super) quiet: bool,
    pub(super) terminate_at: Option<isize>,
}

impl FrameVisitor for Upward<'_> {
    fn header(&mut self, tag: u8, _body_len: usize, start: isize) -> bool {
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
        false
    }

    fn message(&mut self, _tag: u8, _body: &[u8], _end: usize) {}
}

/// Server → client: ReadyForQuery and ParameterStatus.
pub(super) struct Downward<'a> {
    pub(super) state: &'a SyncState,
    pub(super) parameters: &'a mut Vec<(String, String)>,
    pub(super) last_tag: u8,
    pub(super) transactions: u64,
}

impl FrameVisitor for Downward<'_> {
    fn header(&mut self, tag: u8, _body_len: usize, _start: isize) -> bool {
        self.last_tag = tag;
        tag == READY_FOR_QUERY || tag == PARAMETER_STATUS
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
