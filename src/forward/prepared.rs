//! Named prepared statements in transaction mode. A client may Parse a statement in one
//! transaction and Bind it in the next, on another upstream connection; and two clients may
//! use the same name for different SQL. As PgBouncer ≥ 1.21 does, the sidecar:
//! - renames every named statement to a server-side name derived from its SQL and parameter
//!   types (`rdsiam_<hash>`), so equal SQL shares one server statement and equal names never
//!   collide;
//! - remembers each client's Parse, and sends it again (its ParseComplete swallowed) before a
//!   Bind or Describe on a connection that lacks the statement;
//! - skips a Parse the connection already has, and a client's Close of a statement, answering
//!   ParseComplete / CloseComplete itself at the right place in the response stream.
//!
//! [`ClientRewriter`] rewrites the client's messages and records, in a [`Plan`], what the
//! server will answer; [`ServerRewriter`] walks the answers against that plan, dropping and
//! inserting messages.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// ParseComplete.
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
}

/// What the server will answer to one message sent to it, in order.
#[derive(Debug)]
enum Expect {
    /// Answers pass to the client; the entry ends with one of these tags.
    Forward { ends: &'static [u8], sync: bool },
    /// A Parse the sidecar added: swallow its ParseComplete.
    InjectedParse(String),
    /// A Parse of the client's, renamed: forward its ParseComplete.
    ClientParse(String),
    /// Bytes the sidecar answers itself, at this place in the stream.
    Synthetic(&'static [u8]),
}

/// The answers the server owes, shared by both directions of an attached period.
#[derive(Debug, Default)]
pub struct Plan {
    queue: Mutex<VecDeque<Expect>>,
    /// Wakes the server-to-client direction when answers of the sidecar's own lead the queue.
    pub wake: Notify,
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

    fn leads_with_synthetic(&self) -> bool {
        matches!(self.lock().front(), Some(Expect::Synthetic(_)))
    }
}

/// A client's statements, across its transactions. Boxed, and only once the client names a
/// statement: an idle client that never did holds one pointer, not an empty map's 48 bytes.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
pub struct ClientStatements {
    statements: Option<Box<HashMap<String, Arc<Statement>>>>,
}

impl ClientStatements {
    fn insert(&mut self, name: String, statement: Arc<Statement>) {
        self.statements
            .get_or_insert_default()
            .insert(name, statement);
    }

    fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.statements.as_ref()?.get(name)
    }

    fn remove(&mut self, name: &str) {
        if let Some(statements) = self.statements.as_mut() {
            statements.remove(name);
        }
    }
}

/// The server-side name for a statement: equal SQL and types give equal names.
fn server_name(query: &[u8], types: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    query.hash(&mut hasher);
    types.hash(&mut hasher);
    format!("rdsiam_{:016x}_{}", hasher.finish(), query.len())
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
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
    let take = (5 - header.len).min(chunk.len() - *pos);
    header.bytes[header.len..header.len + take].copy_from_slice(&chunk[*pos..*pos + take]);
    header.len += take;
    *pos += take;
    if header.len < 5 {
        return Ok(None);
    }
    let [tag, length @ ..] = header.bytes;
    let length = u32::from_be_bytes(length) as usize;
    if length < 4 {
        return Err(format!("invalid message length {length}"));
    }
    Ok(Some((tag, length - 4)))
}

/// What the client side found in one chunk.
#[derive(Debug, Default)]
pub struct UpwardReport {
    /// Terminate was seen: nothing after it is forwarded.
    pub terminated: bool,
    /// Sync points (Query, Sync, FunctionCall) in the chunk.
    pub sync_points: u32,
    /// The chunk ended at a message boundary with no unsynced extended-protocol messages.
    pub quiet: bool,
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
    /// answers to expect in `plan`.
    pub fn process(
        &mut self,
        chunk: &[u8],
        statements: &mut ClientStatements,
        prepared: &Mutex<HashSet<String>>,
        plan: &Plan,
        out: &mut Vec<u8>,
    ) -> Result<UpwardReport, String> {
        let mut report = UpwardReport::default();
        let mut pos = 0;
        while pos < chunk.len() {
            if self.passing > 0 {
                let step = self.passing.min(chunk.len() - pos);
                out.extend_from_slice(&chunk[pos..pos + step]);
                self.passing -= step;
                pos += step;
                continue;
            }
            if let Some((tag, mut body, remaining)) = self.collecting.take() {
                let step = remaining.min(chunk.len() - pos);
                body.extend_from_slice(&chunk[pos..pos + step]);
                pos += step;
                if step < remaining {
                    self.collecting = Some((tag, body, remaining - step));
                    continue;
                }
                self.rewrite(tag, &body, statements, prepared, plan, out)?;
                continue;
            }
            let Some((tag, body_len)) = gather_header(&mut self.header, chunk, &mut pos)? else {
                break;
            };
            match tag {
                b'X' => {
                    report.terminated = true;
                    self.header.clear();
                    return Ok(report);
                }
                b'Q' | b'S' | b'F' => {
                    report.sync_points += 1;
                    self.quiet = true;
                    let ends: &'static [u8] = b"Z";
                    plan.push(Expect::Forward {
                        ends,
                        sync: tag == b'S',
                    });
                }
                b'd' | b'c' | b'f' => {}
                b'P' | b'B' | b'D' | b'C' => {
                    self.quiet = false;
                    if body_len > MAX_COLLECTED {
                        return Err(format!("message of {body_len} bytes is too large"));
                    }
                    self.header.clear();
                    self.collecting =
                        Some((tag, Vec::with_capacity(body_len.min(64 * 1024)), body_len));
                    if body_len == 0
                        && let Some((tag, body, _)) = self.collecting.take()
                    {
                        self.rewrite(tag, &body, statements, prepared, plan, out)?;
                    }
                    continue;
                }
                b'E' => {
                    self.quiet = false;
                    plan.push(Expect::Forward {
                        ends: b"CIs",
                        sync: false,
                    });
                }
                _ => self.quiet = false,
            }
            out.extend_from_slice(self.header.as_slice());
            self.header.clear();
            self.passing = body_len;
        }
        report.quiet = self.quiet && self.at_boundary();
        Ok(report)
    }

    /// Handles one complete Parse, Bind, Describe or Close.
    fn rewrite(
        &mut self,
        tag: u8,
        body: &[u8],
        statements: &mut ClientStatements,
        prepared: &Mutex<HashSet<String>>,
        plan: &Plan,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let malformed = || format!("malformed '{}' message", char::from(tag));
        let mut prepared = prepared.lock().unwrap_or_else(|p| p.into_inner());
        match tag {
            b'P' => {
                let (name, rest) = cstr(body).ok_or_else(malformed)?;
                if name.is_empty() {
                    out.extend_from_slice(&message(b'P', body));
                    plan.push(Expect::Forward {
                        ends: b"1",
                        sync: false,
                    });
                    return Ok(());
                }
                let (query, types) = cstr(rest).ok_or_else(malformed)?;
                let server = server_name(query, types);
                let mut renamed = server.as_bytes().to_vec();
                renamed.push(0);
                renamed.extend_from_slice(rest);
                let parse = message(b'P', &renamed);
                let client_name = String::from_utf8_lossy(name).into_owned();
                statements.insert(
                    client_name,
                    Arc::new(Statement {
                        server_name: server.clone(),
                        parse: parse.clone(),
                    }),
                );
                if prepared.contains(&server) {
                    plan.push(Expect::Synthetic(&PARSE_COMPLETE));
                } else {
                    out.extend_from_slice(&parse);
                    prepared.insert(server.clone());
                    plan.push(Expect::ClientParse(server));
                }
            }
            b'B' => {
                let (portal, rest) = cstr(body).ok_or_else(malformed)?;
                let (name, rest) = cstr(rest).ok_or_else(malformed)?;
                let statement = self.ensure(name, statements, &mut prepared, plan, out);
                match statement {
                    Some(server) => {
                        let mut renamed = portal.to_vec();
                        renamed.push(0);
                        renamed.extend_from_slice(server.as_bytes());
                        renamed.push(0);
                        renamed.extend_from_slice(rest);
                        out.extend_from_slice(&message(b'B', &renamed));
                    }
                    None => out.extend_from_slice(&message(b'B', body)),
                }
                plan.push(Expect::Forward {
                    ends: b"2",
                    sync: false,
                });
            }
            b'D' => {
                let kind = *body.first().ok_or_else(malformed)?;
                let (name, _) = cstr(&body[1..]).ok_or_else(malformed)?;
                let renamed = if kind == b'S' {
                    self.ensure(name, statements, &mut prepared, plan, out)
                } else {
                    None
                };
                match renamed {
                    Some(server) => {
                        let mut new_body = vec![b'S'];
                        new_body.extend_from_slice(server.as_bytes());
                        new_body.push(0);
                        out.extend_from_slice(&message(b'D', &new_body));
                    }
                    None => out.extend_from_slice(&message(b'D', body)),
                }
                plan.push(Expect::Forward {
                    ends: b"Tn",
                    sync: false,
                });
            }
            b'C' => {
                let kind = *body.first().ok_or_else(malformed)?;
                let (name, _) = cstr(&body[1..]).ok_or_else(malformed)?;
                if kind == b'S' && !name.is_empty() {
                    // The server statement may serve other clients: keep it, answer ourselves.
                    statements.remove(String::from_utf8_lossy(name).as_ref());
                    plan.push(Expect::Synthetic(&CLOSE_COMPLETE));
                } else {
                    out.extend_from_slice(&message(b'C', body));
                    plan.push(Expect::Forward {
                        ends: b"3",
                        sync: false,
                    });
                }
            }
            _ => out.extend_from_slice(&message(tag, body)),
        }
        drop(prepared);
        if plan.leads_with_synthetic() {
            plan.wake.notify_one();
        }
        Ok(())
    }

    /// The server name for a client statement, sending its Parse first if the connection
    /// lacks it. `None` for the unnamed statement or a name the client never prepared.
    fn ensure(
        &self,
        name: &[u8],
        statements: &ClientStatements,
        prepared: &mut HashSet<String>,
        plan: &Plan,
        out: &mut Vec<u8>,
    ) -> Option<String> {
        if name.is_empty() {
            return None;
        }
        let statement = statements.get(String::from_utf8_lossy(name).as_ref())?;
        if !prepared.contains(&statement.server_name) {
            out.extend_from_slice(&statement.parse);
            prepared.insert(statement.server_name.clone());
            plan.push(Expect::InjectedParse(statement.server_name.clone()));
        }
        Some(statement.server_name.clone())
    }
}

/// Walks server → client messages against the [`Plan`] (transaction mode).
#[derive(Debug, Default)]
pub struct ServerRewriter {
    header: Header,
    /// Body bytes of the current message still to come, and whether it is being dropped.
    remaining: usize,
    dropping: bool,
}

impl ServerRewriter {
    /// Turns one chunk from the server into bytes for the client (`out`).
    pub fn process(
        &mut self,
        chunk: &[u8],
        plan: &Plan,
        prepared: &Mutex<HashSet<String>>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let step = self.remaining.min(chunk.len() - pos);
                if !self.dropping {
                    out.extend_from_slice(&chunk[pos..pos + step]);
                }
                self.remaining -= step;
                pos += step;
                continue;
            }
            let Some((tag, body_len)) = gather_header(&mut self.header, chunk, &mut pos)? else {
                break;
            };
            let drop = self.on_message(tag, plan, prepared, out);
            if !drop {
                out.extend_from_slice(self.header.as_slice());
            }
            self.header.clear();
            self.remaining = body_len;
            self.dropping = drop;
        }
        Ok(())
    }

    /// Applies the plan to one server message; true to drop it.
    fn on_message(
        &self,
        tag: u8,
        plan: &Plan,
        prepared: &Mutex<HashSet<String>>,
        out: &mut Vec<u8>,
    ) -> bool {
        // Asynchronous messages may come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return false;
        }
        let mut queue = plan.lock();
        while let Some(Expect::Synthetic(bytes)) = queue.front() {
            out.extend_from_slice(bytes);
            queue.pop_front();
        }
        match (tag, queue.front()) {
            (b'1', Some(Expect::InjectedParse(_))) => {
                queue.pop_front();
                true
            }
            (b'1', Some(Expect::ClientParse(_))) => {
                queue.pop_front();
                false
            }
            (b'E', Some(Expect::Forward { ends, .. })) if *ends == b"Z" => false,
            (b'E', _) => {
                // An error in an extended-protocol batch: the server skips to the next Sync.
                let mut prepared = prepared.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(front) = queue.front() {
                    match front {
                        Expect::Forward { sync: true, .. } => break,
                        Expect::InjectedParse(name) | Expect::ClientParse(name) => {
                            prepared.remove(name);
                        }
                        _ => {}
                    }
                    queue.pop_front();
                }
                false
            }
            (_, Some(Expect::Forward { ends, .. })) if ends.contains(&tag) => {
                queue.pop_front();
                false
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.extend_from_slice(&[0, 0, 0]);
        message(b'P', &body)
    }

    fn bind(statement: &str) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(statement.as_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        message(b'B', &body)
    }

    fn sync() -> Vec<u8> {
        message(b'S', &[])
    }

    fn names_in(bytes: &[u8]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 5 <= bytes.len() {
            let tag = bytes[pos];
            let len = u32::from_be_bytes([
                bytes[pos + 1],
                bytes[pos + 2],
                bytes[pos + 3],
                bytes[pos + 4],
            ]) as usize;
            let body = &bytes[pos + 5..pos + 1 + len];
            let name = match tag {
                b'P' => cstr(body).map(|(n, _)| n),
                b'B' => cstr(body).and_then(|(_, r)| cstr(r)).map(|(n, _)| n),
                _ => Some(&b""[..]),
            };
            out.push((
                tag,
                String::from_utf8_lossy(name.unwrap_or_default()).into_owned(),
            ));
            pos += 1 + len;
        }
        out
    }

    #[test]
    fn second_connection_gets_the_parse_again_and_its_parse_complete_is_swallowed() {
        let plan = Plan::default();
        let mut statements = ClientStatements::default();
        let first_conn = Mutex::new(HashSet::new());
        let mut rewriter = ClientRewriter::new();
        let mut out = Vec::new();
        let batch = [parse("s1", "select 1"), bind("s1"), sync()].concat();
        rewriter
            .process(&batch, &mut statements, &first_conn, &plan, &mut out)
            .expect("valid");
        let sent = names_in(&out);
        assert_eq!(sent[0].0, b'P');
        assert!(sent[0].1.starts_with("rdsiam_"));
        assert_eq!(sent[1], (b'B', sent[0].1.clone()));

        // Server answers 1, 2, Z: all forwarded.
        let mut server = ServerRewriter::default();
        let answers = [
            PARSE_COMPLETE.to_vec(),
            message(b'2', &[]),
            message(b'Z', b"I"),
        ]
        .concat();
        let mut to_client = Vec::new();
        server
            .process(&answers, &plan, &first_conn, &mut to_client)
            .expect("valid");
        assert_eq!(to_client, answers);
        assert!(plan.is_empty());

        // Next transaction on another connection: Bind alone gets the Parse injected.
        let second_conn = Mutex::new(HashSet::new());
        out.clear();
        rewriter
            .process(
                &[bind("s1"), sync()].concat(),
                &mut statements,
                &second_conn,
                &plan,
                &mut out,
            )
            .expect("valid");
        let sent = names_in(&out);
        assert_eq!(sent.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"PBS");
        let mut to_client = Vec::new();
        server
            .process(&answers, &plan, &second_conn, &mut to_client)
            .expect("valid");
        assert_eq!(
            to_client,
            [message(b'2', &[]), message(b'Z', b"I")].concat()
        );
        assert!(plan.is_empty());
    }

    #[test]
    fn a_parse_the_connection_has_is_answered_locally_in_order() {
        let plan = Plan::default();
        let mut statements = ClientStatements::default();
        let conn = Mutex::new(HashSet::new());
        let mut rewriter = ClientRewriter::new();
        let mut out = Vec::new();
        rewriter
            .process(
                &[parse("a", "select 1"), sync()].concat(),
                &mut statements,
                &conn,
                &plan,
                &mut out,
            )
            .expect("valid");
        let mut server = ServerRewriter::default();
        let mut to_client = Vec::new();
        server
            .process(
                &[PARSE_COMPLETE.to_vec(), message(b'Z', b"I")].concat(),
                &plan,
                &conn,
                &mut to_client,
            )
            .expect("valid");
        // Another client prepares the same SQL under another name: no Parse is sent.
        let mut other = ClientStatements::default();
        out.clear();
        rewriter
            .process(
                &[parse("b", "select 1"), bind("b"), sync()].concat(),
                &mut other,
                &conn,
                &plan,
                &mut out,
            )
            .expect("valid");
        assert_eq!(
            names_in(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            b"BS"
        );
        to_client.clear();
        server
            .process(
                &[message(b'2', &[]), message(b'Z', b"I")].concat(),
                &plan,
                &conn,
                &mut to_client,
            )
            .expect("valid");
        assert_eq!(
            to_client,
            [
                PARSE_COMPLETE.to_vec(),
                message(b'2', &[]),
                message(b'Z', b"I")
            ]
            .concat()
        );
    }

    #[test]
    fn same_name_different_sql_gets_different_server_statements() {
        assert_ne!(
            server_name(b"select 1", b"\0\0"),
            server_name(b"select 2", b"\0\0")
        );
        assert_eq!(
            server_name(b"select 1", b"\0\0"),
            server_name(b"select 1", b"\0\0")
        );
    }
}
