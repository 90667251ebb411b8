//! The server side of statement renaming: [`ServerRewriter`] walks the answers against the
//! [`Plan`], dropping the ones the client must not see and inserting the sidecar's own, and
//! reads the few answers that change what the connection holds (an error to a renamed
//! statement's Bind, `DEALLOCATE ALL`, `DISCARD ALL`) or tell a statement's result shape (the
//! answer to a Describe of one).

use std::sync::Mutex;

use super::shape::ShapeHasher;
use super::*;

/// The bytes of an answer read while it passes: enough for an ErrorResponse's severity,
/// SQLSTATE and the start of its message, or a CommandComplete tag.
const LOOKED_AT: usize = 64;
/// CommandComplete tags after which the server holds no prepared statement.
const DROPS_ALL: [&[u8]; 2] = [b"DEALLOCATE ALL\0", b"DISCARD ALL\0"];

/// Walks server → client messages against the [`Plan`] (transaction mode).
#[derive(Debug, Default)]
pub struct ServerRewriter {
    header: Header,
    /// Body bytes of the current message still to come, and whether it is being dropped.
    remaining: usize,
    dropping: bool,
    /// The current message is read as it passes, for what it says about statements.
    looking: Option<Look>,
    /// The current message is a RowDescription of this statement, hashed as it passes.
    shaping: Option<Shaping>,
}

/// A statement's RowDescription being hashed.
#[derive(Debug)]
struct Shaping {
    hasher: ShapeHasher,
    statement: Arc<Statement>,
    /// The answer to the client's own Describe (the client is told this shape), or to one
    /// the sidecar added (its plan entry is taken once the shape is recorded).
    told: bool,
}

/// A message read as it passes: why, and its first bytes.
#[derive(Debug)]
struct Look {
    reason: LookFor,
    bytes: [u8; LOOKED_AT],
    len: usize,
}

/// What a looked-at answer does to the connection's statements: how, and to which name.
type Change<'a> = (fn(&mut ServerStatements, &str), &'a str);

impl Look {
    fn change(&self) -> Option<Change<'_>> {
        let seen = &self.bytes[..self.len];
        match &self.reason {
            LookFor::DroppedAll if DROPS_ALL.contains(&seen) => Some((|held, _| held.clear(), "")),
            LookFor::DroppedAll => None,
            LookFor::ErrorOf(statement) => match error_code(seen) {
                // `cached plan must not change result type`: closed and prepared again.
                Some(b"0A000") => Some((ServerStatements::mark_stale, &statement.server_name)),
                // The server lost it: prepared again at its next use.
                Some(b"26000") => Some((ServerStatements::forget, &statement.server_name)),
                _ => None,
            },
            // A Parse of a name the connection holds though the sidecar thought not: held,
            // in a state unknown, so closed before the next Parse (one error, not one per use).
            LookFor::ParseError(name) => match error_code(seen) {
                Some(b"42P05") => Some((ServerStatements::close_skipped, name.as_str())),
                _ => None,
            },
        }
    }
}

#[derive(Debug)]
enum LookFor {
    /// An error answering a Bind or Describe of this renamed statement.
    ErrorOf(Arc<Statement>),
    /// A CommandComplete as long as one of [`DROPS_ALL`].
    DroppedAll,
    /// An error answering a Parse of this server name.
    ParseError(String),
}

impl ServerRewriter {
    /// Turns one chunk from the server into bytes for the client (`out`).
    pub fn process(
        &mut self,
        chunk: &[u8],
        plan: &Plan,
        prepared: &Mutex<ServerStatements>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let step = self.remaining.min(chunk.len() - pos);
                let bytes = &chunk[pos..pos + step];
                if !self.dropping {
                    out.extend_from_slice(bytes);
                }
                self.remaining -= step;
                pos += step;
                self.read_as_it_passes(bytes, plan, prepared);
                continue;
            }
            let Some((tag, body_len)) = gather_header(&mut self.header, chunk, &mut pos)? else {
                break;
            };
            let drop = self.on_message(tag, body_len, plan, prepared, out);
            if !drop {
                out.extend_from_slice(self.header.as_slice());
            }
            self.header.clear();
            self.remaining = body_len;
            self.dropping = drop;
            // An empty body is complete already.
            self.read_as_it_passes(&[], plan, prepared);
        }
        Ok(())
    }

    /// Hands `bytes` of the current message to what reads it, if anything does (most messages
    /// are only passed on: checked here, the calls are not made for them).
    fn read_as_it_passes(&mut self, bytes: &[u8], plan: &Plan, prepared: &Mutex<ServerStatements>) {
        if self.looking.is_some() {
            self.look_at(bytes, plan, prepared);
        }
        if self.shaping.is_some() {
            self.shape_at(bytes, plan, prepared);
        }
    }

    /// Adds `bytes` of the current message to the shape being hashed; once the message is
    /// complete, records the shape.
    fn shape_at(&mut self, bytes: &[u8], plan: &Plan, prepared: &Mutex<ServerStatements>) {
        let Some(shaping) = self.shaping.as_mut() else {
            return;
        };
        shaping.hasher.feed(bytes);
        if self.remaining > 0 {
            return;
        }
        let Some(Shaping {
            hasher,
            statement,
            told,
        }) = self.shaping.take()
        else {
            return;
        };
        let shape = hasher.finish();
        if told {
            statement.described.store(shape, Ordering::Relaxed);
        }
        prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .learn(&statement.server_name, shape);
        if !told {
            let mut queue = plan.lock();
            if matches!(queue.front(), Some(Expect::Learn(_))) {
                queue.pop_front();
            }
            plan.learnt.notify_one();
        }
    }

    /// Starts hashing a RowDescription (`T`), or records NoData (`n`) once its empty body is
    /// complete.
    fn shape(&mut self, tag: u8, statement: Arc<Statement>, told: bool) {
        let hasher = if tag == b'n' {
            ShapeHasher::no_data()
        } else {
            ShapeHasher::default()
        };
        self.shaping = Some(Shaping {
            hasher,
            statement,
            told,
        });
    }

    /// Adds `bytes` of the current message to what is looked at; once the message is
    /// complete, applies what it says to the connection's statements.
    fn look_at(&mut self, bytes: &[u8], plan: &Plan, prepared: &Mutex<ServerStatements>) {
        let Some(look) = self.looking.as_mut() else {
            return;
        };
        let take = bytes.len().min(LOOKED_AT - look.len);
        look.bytes[look.len..look.len + take].copy_from_slice(&bytes[..take]);
        look.len += take;
        if self.remaining > 0 {
            return;
        }
        let Some(look) = self.looking.take() else {
            return;
        };
        let change = look.change();
        if let Some((apply, name)) = change {
            // The Parses still queued were sent after the message this answers, so the server
            // runs them after what it reports. (Plan, then statements, as `skip_to_sync`; the
            // client side locks them the other way round, but one task runs both directions.)
            let queue = plan.lock();
            let mut prepared = prepared.lock().unwrap_or_else(|p| p.into_inner());
            apply(&mut prepared, name);
            for queued in queue.iter() {
                if let Expect::InjectedParse(queued) | Expect::ClientParse(queued) = queued {
                    prepared.prepare(queued);
                }
            }
        }
    }

    /// Applies the plan to one server message; true to drop it.
    fn on_message(
        &mut self,
        tag: u8,
        body_len: usize,
        plan: &Plan,
        prepared: &Mutex<ServerStatements>,
        out: &mut Vec<u8>,
    ) -> bool {
        // Asynchronous messages may come at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return false;
        }
        if tag == b'C' && DROPS_ALL.iter().any(|t| t.len() == body_len) {
            self.look(LookFor::DroppedAll);
        }
        let mut queue = plan.lock();
        while let Some(Expect::Synthetic(bytes)) = queue.front() {
            out.extend_from_slice(bytes);
            queue.pop_front();
        }
        if tag == b'E' && matches!(queue.front(), Some(Expect::Refusal)) {
            out.extend_from_slice(&guard::REFUSAL_ERROR);
            skip_to(&mut queue, prepared, plan, |e| {
                matches!(e, Expect::Forward { sync: true, .. })
            });
            return true;
        }
        let ends_batch =
            |e: &Expect| matches!(e, Expect::Forward { ends, .. } if ends.contains(&b'Z'));
        if tag == b'Z' && queue.front().is_some_and(|front| !ends_batch(front)) {
            // An error in a batch the server had not all read yet: what the client sent after
            // it was skipped, never answered.
            skip_to(&mut queue, prepared, plan, ends_batch);
        }
        self.answer(tag, &mut queue, prepared, plan)
    }

    /// Walks the plan for a server message `tag` that is not asynchronous; true to drop it.
    fn answer(
        &mut self,
        tag: u8,
        queue: &mut VecDeque<Expect>,
        prepared: &Mutex<ServerStatements>,
        plan: &Plan,
    ) -> bool {
        match (tag, queue.front()) {
            (b'1', Some(Expect::InjectedParse(_)))
            | (b'3', Some(Expect::InjectedClose(_)))
            | (b'2', Some(Expect::InjectedBind)) => {
                queue.pop_front();
                true
            }
            (b't', Some(Expect::Learn(_))) => true,
            (b'T' | b'n', Some(Expect::Learn(statement))) => {
                // Taken from the plan once recorded, so the paused Bind sees the shape.
                let statement = statement.clone();
                self.shape(tag, statement, false);
                true
            }
            (b'T' | b'n', Some(Expect::UsesStatement { ends, statement })) if *ends == b"Tn" => {
                let statement = statement.clone();
                self.shape(tag, statement, true);
                queue.pop_front();
                false
            }
            (b'1', Some(Expect::ClientParse(_))) => {
                queue.pop_front();
                false
            }
            (b'E', Some(Expect::Forward { ends, .. })) if *ends == b"Z" => false,
            (b'E', front) => {
                match front {
                    Some(Expect::UsesStatement { statement, .. } | Expect::Learn(statement)) => {
                        let statement = statement.clone();
                        self.look(LookFor::ErrorOf(statement));
                    }
                    Some(Expect::InjectedParse(name) | Expect::ClientParse(name)) => {
                        let name = name.clone();
                        self.look(LookFor::ParseError(name));
                    }
                    _ => {}
                }
                skip_to(queue, prepared, plan, |e| {
                    matches!(e, Expect::Forward { sync: true, .. })
                });
                false
            }
            (_, Some(Expect::Forward { ends, .. } | Expect::UsesStatement { ends, .. }))
                if ends.contains(&tag) =>
            {
                queue.pop_front();
                false
            }
            _ => false,
        }
    }

    fn look(&mut self, reason: LookFor) {
        self.looking = Some(Look {
            reason,
            bytes: [0; LOOKED_AT],
            len: 0,
        });
    }
}

/// An error in an extended-protocol batch: the server skips to the next Sync, so the Closes
/// and Parses planned before it (up to the entry `stop` finds) did not happen, and the shapes
/// asked for will not come.
fn skip_to(
    queue: &mut VecDeque<Expect>,
    prepared: &Mutex<ServerStatements>,
    plan: &Plan,
    stop: impl Fn(&Expect) -> bool,
) {
    let mut prepared = prepared.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(front) = queue.front() {
        match front {
            front if stop(front) => break,
            Expect::InjectedClose(name) => prepared.close_skipped(name),
            Expect::InjectedParse(name) | Expect::ClientParse(name) => prepared.forget(name),
            Expect::Learn(_) => plan.learnt.notify_one(),
            _ => {}
        }
        queue.pop_front();
    }
}

/// The SQLSTATE of an ErrorResponse body (fields of a type byte and a NUL-terminated value),
/// if it is among the bytes seen.
fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        let (value, next) = cstr(after)?;
        if kind == b'C' {
            return Some(value);
        }
        rest = next;
    }
    None
}
