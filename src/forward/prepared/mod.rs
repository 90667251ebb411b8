//! Named prepared statements in transaction mode. A client may Parse a statement in one
//! transaction and Bind it in the next, on another upstream connection; and two clients may
//! use the same name for different SQL. As PgBouncer ≥ 1.21 does, the sidecar:
//! - renames every named statement to a server-side name derived from its SQL and parameter
//!   types (`rdsiam_<hash>`), so equal SQL shares one server statement and equal names never
//!   collide;
//! - remembers each client's Parse, and sends it again (its ParseComplete swallowed) before a
//!   Bind or Describe on a connection that lacks the statement;
//! - answers a client's Close of a statement itself (CloseComplete at the right place in the
//!   response stream), and sends a client's Parse of a statement the connection holds after a
//!   Close of its own (unlike PgBouncer, which skips it: the held plan may predate a schema
//!   change, which PostgreSQL, parsing afresh for every session, never shows a client);
//! - follows what the server does to its statements behind the rewriter's back
//!   (`DEALLOCATE ALL`, a plan gone stale after a schema change: [`ServerStatements`]);
//! - refuses, with PostgreSQL's `0A000`, a Bind of a statement whose result shape changed since
//!   the client was told it (a statement prepared again for it after a migration: [`guard`]).
//!
//! [`ClientRewriter`] rewrites the client's messages and records, in a [`Plan`], what the
//! server will answer; [`ServerRewriter`] walks the answers against that plan, dropping and
//! inserting messages.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::forward::buffers::{pop_free, push_free};
use crate::protocol::framing::{MAX_MESSAGE_LENGTH, message};

/// ParseComplete.
#[cfg(test)]
const PARSE_COMPLETE: [u8; 5] = [b'1', 0, 0, 0, 4];
/// CloseComplete.
const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];
/// A client message collected for rewriting may not be larger than this.
const MAX_COLLECTED: usize = 64 * 1024 * 1024;

/// A client's named statement.
#[derive(Debug)]
struct Statement {
    server_name: String,
    /// The Parse message with the server-side name, ready to send again.
    parse: Vec<u8>,
    /// The result shape the client was told (a Describe's answer), 0 until then.
    described: AtomicU64,
}

impl Statement {
    fn described(&self) -> Shape {
        self.described.load(Ordering::Relaxed)
    }
}

/// What the server will answer to one message sent to it, in order.
#[derive(Debug)]
enum Expect {
    /// Answers pass to the client; the entry ends with one of these tags.
    Forward { ends: &'static [u8], sync: bool },
    /// A Bind or Describe of a renamed statement: answers pass to the client, and an error
    /// says what became of the server's statement.
    UsesStatement {
        ends: &'static [u8],
        statement: Arc<Statement>,
    },
    /// A Close of a stale statement the sidecar added: swallow its CloseComplete.
    InjectedClose(String),
    /// A Parse the sidecar added: swallow its ParseComplete.
    InjectedParse(String),
    /// A Parse of the client's, renamed: forward its ParseComplete.
    ClientParse(String),
    /// Bytes the sidecar answers itself, at this place in the stream.
    Synthetic(&'static [u8]),
    /// A Describe the sidecar added to learn the connection's shape of a client's statement:
    /// swallow its answers, recording the shape (an error goes to the client, for its Bind).
    Learn(Arc<Statement>),
    /// A Bind the sidecar added (to refuse the client's): swallow its BindComplete.
    InjectedBind,
    /// The refusal's Execute: its error is replaced by [`guard::REFUSAL_ERROR`].
    Refusal,
}

/// The answers the server owes, shared by both directions of an attached period.
#[derive(Debug)]
pub struct Plan {
    queue: Mutex<VecDeque<Expect>>,
    /// Wakes the server-to-client direction when answers of the sidecar's own lead the queue.
    pub wake: Notify,
    /// Wakes the client-to-server direction, paused for a shape, once it is learnt.
    learnt: Notify,
}

thread_local! {
    /// Emptied queues of finished periods, kept with their capacity: a transaction-mode period
    /// would otherwise allocate one at its first entry and free it at its end (180
    /// instructions a transaction, callgrind, issue 16).
    static FREE_QUEUES: RefCell<Vec<VecDeque<Expect>>> = const { RefCell::new(Vec::new()) };
}

/// A queue kept for reuse only up to this many entries (a typical batch plans a handful).
const MAX_KEPT_ENTRIES: usize = 64;

impl Default for Plan {
    fn default() -> Self {
        Self {
            queue: Mutex::new(pop_free(&FREE_QUEUES).unwrap_or_default()),
            wake: Notify::new(),
            learnt: Notify::new(),
        }
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        let mut queue = std::mem::take(self.queue.get_mut().unwrap_or_else(|p| p.into_inner()));
        if queue.capacity() == 0 || queue.capacity() > MAX_KEPT_ENTRIES {
            return;
        }
        queue.clear();
        push_free(&FREE_QUEUES, queue);
    }
}

impl Plan {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Expect>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Takes the sidecar's own answers at the head of the queue.
    pub fn take_leading_synthetic(&self, out: &mut Vec<u8>) {
        let mut queue = self.lock();
        while let Some(Expect::Synthetic(bytes)) = queue.front() {
            out.extend_from_slice(bytes);
            queue.pop_front();
        }
    }

    fn push(&self, expect: Expect) {
        self.lock().push_back(expect);
    }

    /// Forgets up to `ignored` Sync entries at the tail (Syncs the server ignored in copy-in
    /// mode); returns how many it forgot.
    fn forget_trailing_syncs(&self, ignored: u32) -> u32 {
        let mut queue = self.lock();
        let mut forgotten = 0;
        while forgotten < ignored
            && matches!(queue.back(), Some(Expect::Forward { sync: true, .. }))
        {
            queue.pop_back();
            forgotten += 1;
        }
        forgotten
    }

    fn leads_with_synthetic(&self) -> bool {
        matches!(self.lock().front(), Some(Expect::Synthetic(_)))
    }

    /// Waits until no shape the sidecar asked for is still to come (answered, or skipped by
    /// an error).
    pub async fn learnt(&self) {
        loop {
            let learnt = self.learnt.notified();
            if !self.lock().iter().any(|e| matches!(e, Expect::Learn(_))) {
                return;
            }
            learnt.await;
        }
    }
}

/// A client's statements, across its transactions. Boxed, and only once the client names a
/// statement: an idle client that never did holds one pointer, not an empty map's 48 bytes.
#[derive(Debug, Default)]
pub struct ClientStatements {
    statements: Option<Box<Named>>,
}

#[derive(Debug, Default)]
struct Named {
    by_name: HashMap<String, Arc<Statement>>,
    /// The portal of the latest Bind (empty: the unnamed one) and the client statement it was
    /// bound from, so that the answer to a Describe of that portal tells the statement's
    /// shape. One portal: drivers describe a portal right after binding it (pgJDBC's named
    /// portals with a fetch size too).
    bound: Option<(Box<[u8]>, Arc<Statement>)>,
}

impl ClientStatements {
    fn insert(&mut self, name: String, statement: Arc<Statement>) {
        self.statements
            .get_or_insert_default()
            .by_name
            .insert(name, statement);
    }

    fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.statements.as_ref()?.by_name.get(name)
    }

    fn remove(&mut self, name: &str) {
        if let Some(statements) = self.statements.as_mut() {
            statements.by_name.remove(name);
        }
    }

    /// The statement `portal` was bound from, if one of the client's and the latest Bind's.
    fn bound(&self, portal: &[u8]) -> Option<Arc<Statement>> {
        let (bound_portal, statement) = self.statements.as_ref()?.bound.as_ref()?;
        (**bound_portal == *portal).then(|| statement.clone())
    }

    /// `portal` was bound from `statement` (`None`: not one of the client's).
    fn set_bound(&mut self, portal: &[u8], statement: Option<&Arc<Statement>>) {
        if let Some(statements) = self.statements.as_mut() {
            statements.bound = statement.map(|statement| (portal.into(), statement.clone()));
        }
    }

    /// Records a client's named Parse (`body`) without sending it, so that it is prepared on
    /// the next connection that needs it (the sidecar answered its ParseComplete itself).
    /// Returns the statement's client name, or `None` for the unnamed statement or a
    /// malformed body.
    pub fn record_parse(&mut self, body: &[u8]) -> Option<String> {
        let (name, rest) = cstr(body)?;
        if name.is_empty() {
            return None;
        }
        let (query, types) = cstr(rest)?;
        let (client_name, statement) = Statement::renamed(name, query, types, rest);
        self.insert(client_name.clone(), statement);
        Some(client_name)
    }

    /// The SQL text of the client's statement `name`.
    pub fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
        let statement = self.get(&String::from_utf8_lossy(name))?;
        // The stored Parse: tag, length, server name, query.
        let (_, rest) = cstr(statement.parse.get(5..)?)?;
        cstr(rest).map(|(query, _)| query)
    }

    /// Forgets the client's statement `name` (its Close).
    pub fn forget(&mut self, name: &[u8]) {
        self.remove(&String::from_utf8_lossy(name));
    }
}

impl Statement {
    /// A client statement `name` for `query` with parameter `types`, renamed for the server;
    /// `rest` is the Parse body after the name.
    fn renamed(name: &[u8], query: &[u8], types: &[u8], rest: &[u8]) -> (String, Arc<Self>) {
        let server = server_name(query, types);
        let mut renamed = server.as_bytes().to_vec();
        renamed.push(0);
        renamed.extend_from_slice(rest);
        let statement = Statement {
            server_name: server,
            parse: message(b'P', &renamed),
            described: AtomicU64::new(0),
        };
        (
            String::from_utf8_lossy(name).into_owned(),
            Arc::new(statement),
        )
    }
}

/// The server-side name for a statement: equal SQL and types give equal names.
fn server_name(query: &[u8], types: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    query.hash(&mut hasher);
    types.hash(&mut hasher);
    format!("rdsiam_{:016x}_{}", hasher.finish(), query.len())
}

/// Splits a NUL-terminated string off the front of `body`.
fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|b| *b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}

/// The five header bytes of a message (tag and length), gathered across chunks; inline, so a
/// rewriter allocates nothing for them.
#[derive(Debug, Default)]
struct Header {
    bytes: [u8; 5],
    len: usize,
}

impl Header {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Adds header bytes from `chunk` at `pos` to `header`; once it holds all five, returns the
/// message's tag and body length (the header stays in `header` for the caller to forward).
fn gather_header(
    header: &mut Header,
    chunk: &[u8],
    pos: &mut usize,
) -> Result<Option<(u8, usize)>, String> {
    if let (0, Some(whole)) = (header.len, chunk[*pos..].first_chunk::<5>()) {
        // The usual case, a header whole in the chunk: five bytes copied as one value, not
        // through memcpy.
        header.bytes = *whole;
        header.len = 5;
        *pos += 5;
    } else {
        let take = (5 - header.len).min(chunk.len() - *pos);
        header.bytes[header.len..header.len + take].copy_from_slice(&chunk[*pos..*pos + take]);
        header.len += take;
        *pos += take;
    }
    if header.len < 5 {
        return Ok(None);
    }
    let [tag, length @ ..] = header.bytes;
    let length = u32::from_be_bytes(length);
    if !(4..=MAX_MESSAGE_LENGTH).contains(&length) {
        return Err(format!("invalid message length {length}"));
    }
    let length = length as usize;
    Ok(Some((tag, length - 4)))
}

mod client;
mod guard;
mod held;
mod outgoing;
mod rewrite;
mod server;
mod shape;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dropped;
#[cfg(test)]
mod tests_guard;

pub use client::{ClientRewriter, Unrewritable, UpwardReport};
pub use held::ServerStatements;
pub use server::ServerRewriter;
use shape::Shape;

/// A statement text that begins with `DEALLOCATE [PREPARE] ALL` or `DISCARD ALL` (any case and
/// spacing; text after a NUL or `;` is not looked at). Most texts are ruled out by their first
/// letter.
fn drops_all_statements(text: &[u8]) -> bool {
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    if !start.is_some_and(|at| text[at].eq_ignore_ascii_case(&b'd')) {
        return false;
    }
    let end = text
        .iter()
        .position(|b| *b == 0 || *b == b';')
        .unwrap_or(text.len());
    let mut words = text[..end]
        .split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty());
    let is = |word: Option<&[u8]>, expected: &[u8]| {
        word.is_some_and(|w| w.eq_ignore_ascii_case(expected))
    };
    let (first, second, third) = (words.next(), words.next(), words.next());
    (is(first, b"discard") && is(second, b"all"))
        || (is(first, b"deallocate")
            && (is(second, b"all") || (is(second, b"prepare") && is(third, b"all"))))
}

/// A Close of the server statement `name`.
fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    message(b'C', &body)
}
