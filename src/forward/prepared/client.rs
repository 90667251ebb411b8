//! The client side of statement renaming: [`ClientRewriter`] rewrites what the client sends
//! and records in the [`Plan`] what the server will answer.

use std::sync::Mutex;

use super::guard::Guard;
use super::outgoing::Outgoing;
use super::rewrite::{Rewrite, Step};
use super::*;

/// What the client side found in one chunk.
#[derive(Debug, Default)]
pub struct UpwardReport {
    /// Terminate was seen: nothing after it is forwarded.
    pub terminated: bool,
    /// Sync points (Query, Sync, FunctionCall) in the chunk.
    pub sync_points: u32,
    /// The chunk ended at a message boundary with no unsynced extended-protocol messages.
    pub quiet: bool,
    /// A Parse in the chunk begins a transaction (`BEGIN` sent in one batch with more).
    pub opened: bool,
    /// The rewrite paused after this many bytes of the chunk, at a Bind whose statement's
    /// shape must be learnt first: send `out`, wait for [`Plan::learnt`], then process the
    /// rest of the chunk (the Bind is resumed first).
    pub paused_at: Option<usize>,
    /// Sync points sent earlier that the server ignored, in copy-in mode: the client ended a
    /// COPY it began with an Execute followed by a Sync (counted in an earlier chunk).
    pub ignored_syncs: u32,
}

/// Why a chunk from the client could not be rewritten.
#[derive(Debug, PartialEq, Eq)]
pub enum Unrewritable {
    /// A Parse, Bind, Describe or Close longer than [`MAX_COLLECTED`]: each is read whole to
    /// rename its statement.
    TooLarge,
    /// Not a readable PostgreSQL message.
    Malformed(String),
}

impl From<String> for Unrewritable {
    fn from(reason: String) -> Self {
        Self::Malformed(reason)
    }
}

/// Rewrites client → server messages (transaction mode).
#[derive(Debug, Default)]
pub struct ClientRewriter {
    header: Header,
    /// Body of a message being collected (tag, bytes so far, bytes still to come).
    collecting: Option<(u8, Vec<u8>, usize)>,
    /// Body bytes of a passed-through message still to come.
    passing: usize,
    quiet: bool,
    /// The Bind in `collecting` paused for its statement's shape: resumed at the next call.
    paused: bool,
    /// Syncs since the client's last Execute, Query or FunctionCall.
    syncs_after_execute: u32,
}

impl ClientRewriter {
    pub fn new() -> Self {
        Self {
            quiet: true,
            ..Self::default()
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.collecting.is_none() && self.passing == 0
    }

    /// Turns one chunk from the client into bytes for the server (`out`), recording the
    /// answers to expect in `plan`; `server_in_copy`: the server is in copy-in mode (it sent
    /// CopyInResponse and no ReadyForQuery since).
    pub fn process(
        &mut self,
        chunk: &[u8],
        statements: &mut ClientStatements,
        prepared: &Mutex<ServerStatements>,
        plan: &Plan,
        out: &mut Vec<u8>,
        server_in_copy: bool,
    ) -> Result<UpwardReport, Unrewritable> {
        let mut to = Output {
            statements,
            prepared,
            plan,
            out,
            opened: false,
            server_in_copy,
        };
        let mut report = UpwardReport::default();
        if self.paused {
            self.paused = false;
            if let Some((tag, body, _)) = self.collecting.take() {
                self.rewrite(tag, &body, &mut to, Guard::Resumed)?;
            }
        }
        let mut pos = 0;
        while pos < chunk.len() {
            if self.passing > 0 {
                let step = self.passing.min(chunk.len() - pos);
                to.out.extend_from_slice(&chunk[pos..pos + step]);
                self.passing -= step;
                pos += step;
                continue;
            }
            if self.collecting.is_some() {
                self.collect(chunk, &mut pos, &mut to)?;
                if self.paused {
                    report.paused_at = Some(pos);
                    break;
                }
                continue;
            }
            let Some((tag, body_len)) = gather_header(&mut self.header, chunk, &mut pos)? else {
                break;
            };
            if tag == b'X' {
                report.terminated = true;
                self.header.clear();
                return Ok(report);
            }
            self.begin((tag, body_len), &chunk[pos..], &mut report, &mut to)?;
        }
        report.quiet = self.quiet && self.at_boundary();
        report.opened = to.opened;
        Ok(report)
    }

    /// Adds what `chunk` holds of the message being collected, rewriting it once complete.
    fn collect(&mut self, chunk: &[u8], pos: &mut usize, to: &mut Output) -> Result<(), String> {
        let Some((tag, mut body, remaining)) = self.collecting.take() else {
            return Ok(());
        };
        let step = remaining.min(chunk.len() - *pos);
        body.extend_from_slice(&chunk[*pos..*pos + step]);
        *pos += step;
        if step < remaining {
            self.collecting = Some((tag, body, remaining - step));
            return Ok(());
        }
        // libpq (psycopg, node-postgres' native path) describes the portal in the same batch:
        // the client reads the rows with the shape it is told then, so nothing is checked.
        let guard = if tag == b'B' && describes_portal_next(&chunk[*pos..], &body) {
            Guard::DescribedNext
        } else {
            Guard::Check
        };
        if let Step::Pause = self.rewrite(tag, &body, to, guard)? {
            self.collecting = Some((tag, body, 0));
            self.paused = true;
        }
        Ok(())
    }

    /// Starts a message whose header was just read: passes it through (recording what the
    /// server will answer) or starts collecting it for a rewrite.
    /// `following` is the rest of the chunk, where the body starts.
    fn begin(
        &mut self,
        (tag, body_len): (u8, usize),
        following: &[u8],
        report: &mut UpwardReport,
        to: &mut Output,
    ) -> Result<(), Unrewritable> {
        match tag {
            b'Q' | b'S' | b'F' => {
                report.sync_points += 1;
                self.sync_point(tag, (following, body_len), to);
            }
            b'd' => {}
            // CopyDone, CopyFail: the Syncs sent since the COPY's Execute were ignored, and
            // nothing was planned after them (CopyData plans nothing).
            b'c' | b'f' => {
                let ignored = std::mem::take(&mut self.syncs_after_execute);
                if ignored > 0 && to.server_in_copy {
                    report.ignored_syncs += to.plan.forget_trailing_syncs(ignored);
                    // The COPY's Execute is answered at the client's next Sync.
                    self.quiet = false;
                }
            }
            b'P' | b'B' | b'D' | b'C' => {
                self.quiet = false;
                if body_len > MAX_COLLECTED {
                    return Err(Unrewritable::TooLarge);
                }
                self.header.clear();
                if body_len == 0 {
                    // Too short for any of them: the rewrite reports it malformed.
                    self.rewrite(tag, &[], to, Guard::Check)?;
                    return Ok(());
                }
                self.collecting =
                    Some((tag, Vec::with_capacity(body_len.min(64 * 1024)), body_len));
                return Ok(());
            }
            b'E' => {
                self.quiet = false;
                self.syncs_after_execute = 0;
                to.plan.push(Expect::Forward {
                    ends: b"CIs",
                    sync: false,
                });
            }
            _ => self.quiet = false,
        }
        to.out.extend_from_slice(self.header.as_slice());
        self.header.clear();
        self.passing = body_len;
        Ok(())
    }

    /// A Query, Sync or FunctionCall (`tag`), whose body starts with `following` (of
    /// `body_len` bytes in all): the server answers it with one ReadyForQuery.
    fn sync_point(&mut self, tag: u8, (following, body_len): (&[u8], usize), to: &mut Output) {
        self.quiet = true;
        self.syncs_after_execute = if tag == b'S' {
            self.syncs_after_execute.saturating_add(1)
        } else {
            0
        };
        if tag == b'Q' && query_may_drop_all(following, body_len) {
            // Forgotten when sent: the Parses after it in this pipeline must reach the server,
            // which will have dropped everything by then.
            to.prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        to.plan.push(Expect::Forward {
            ends: b"Z",
            sync: tag == b'S',
        });
    }

    /// Handles one complete Parse, Bind, Describe or Close; `guard` says how a Bind is
    /// checked.
    fn rewrite(
        &mut self,
        tag: u8,
        body: &[u8],
        to: &mut Output,
        guard: Guard,
    ) -> Result<Step, String> {
        let malformed = || format!("malformed '{}' message", char::from(tag));
        let mut prepared = to.prepared.lock().unwrap_or_else(|p| p.into_inner());
        let step = Rewrite {
            statements: to.statements,
            to: Outgoing {
                prepared: &mut prepared,
                plan: to.plan,
                out: to.out,
            },
            opened: &mut to.opened,
        }
        .message(tag, body, guard)
        .ok_or_else(malformed)?;
        drop(prepared);
        if to.plan.leads_with_synthetic() {
            to.plan.wake.notify_one();
        }
        Ok(step)
    }
}

/// Where [`ClientRewriter::process`] puts what it finds, for one chunk.
struct Output<'a> {
    statements: &'a mut ClientStatements,
    /// The attached connection's prepared statements (locked for one rewrite at a time).
    prepared: &'a Mutex<ServerStatements>,
    plan: &'a Plan,
    out: &'a mut Vec<u8>,
    /// A Parse began a transaction.
    opened: bool,
    /// The server is in copy-in mode.
    server_in_copy: bool,
}

/// A Query whose text (its first bytes in `available`, of `len` in all) may be `DEALLOCATE
/// ALL` or `DISCARD ALL`. Decided on the bytes of the chunk at hand, so that a rewriter keeps
/// no state for it (it is part of every idle client): when too few of them came with the
/// header to tell, a text that may still become one counts as one (the cost of a wrong guess
/// is a Parse sent again).
fn query_may_drop_all(available: &[u8], len: usize) -> bool {
    const ENOUGH: usize = 64;
    let seen = &available[..available.len().min(len)];
    if seen.len() >= len.min(ENOUGH) {
        return drops_all_statements(seen);
    }
    seen.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| b.eq_ignore_ascii_case(&b'd'))
}

/// The bytes after a Bind (`next`) start with a complete Describe of the portal the Bind
/// (`bind`, its body) creates.
fn describes_portal_next(next: &[u8], bind: &[u8]) -> bool {
    let Some((portal, _)) = cstr(bind) else {
        return false;
    };
    let Some((&[b'D', l0, l1, l2, l3, b'P'], rest)) = next.split_first_chunk::<6>() else {
        return false;
    };
    let body_len = (u32::from_be_bytes([l0, l1, l2, l3]) as usize).saturating_sub(4);
    body_len == portal.len() + 2
        && rest
            .get(..portal.len() + 1)
            .is_some_and(|name| name[..portal.len()] == *portal && name[portal.len()] == 0)
}
