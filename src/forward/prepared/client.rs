//! The client side of statement renaming: [`ClientRewriter`] rewrites what the client sends
//! and records in the [`Plan`] what the server will answer.

use std::sync::Mutex;

use super::*;
use crate::forward::replay::opens_transaction;

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
        prepared: &Mutex<ServerStatements>,
        plan: &Plan,
        out: &mut Vec<u8>,
    ) -> Result<UpwardReport, String> {
        let mut to = Output {
            statements,
            prepared,
            plan,
            out,
            opened: false,
        };
        let mut report = UpwardReport::default();
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
        self.rewrite(tag, &body, to)
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
    ) -> Result<(), String> {
        match tag {
            b'Q' | b'S' | b'F' => {
                report.sync_points += 1;
                self.quiet = true;
                if tag == b'Q' && query_may_drop_all(following, body_len) {
                    // Forgotten when sent: the Parses after it in this pipeline must reach
                    // the server, which will have dropped everything by then.
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
            b'd' | b'c' | b'f' => {}
            b'P' | b'B' | b'D' | b'C' => {
                self.quiet = false;
                if body_len > MAX_COLLECTED {
                    return Err(format!("message of {body_len} bytes is too large"));
                }
                self.header.clear();
                if body_len == 0 {
                    return self.rewrite(tag, &[], to);
                }
                self.collecting =
                    Some((tag, Vec::with_capacity(body_len.min(64 * 1024)), body_len));
                return Ok(());
            }
            b'E' => {
                self.quiet = false;
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

    /// Handles one complete Parse, Bind, Describe or Close.
    fn rewrite(&mut self, tag: u8, body: &[u8], to: &mut Output) -> Result<(), String> {
        let malformed = || format!("malformed '{}' message", char::from(tag));
        let mut prepared = to.prepared.lock().unwrap_or_else(|p| p.into_inner());
        let mut at = Rewrite {
            statements: to.statements,
            prepared: &mut prepared,
            plan: to.plan,
            out: to.out,
            opened: &mut to.opened,
        };
        match tag {
            b'P' => at.parse(body).ok_or_else(malformed)?,
            b'B' => at.bind(body).ok_or_else(malformed)?,
            b'D' => at.describe(body).ok_or_else(malformed)?,
            b'C' => at.close(body).ok_or_else(malformed)?,
            _ => at.out.extend_from_slice(&message(tag, body)),
        }
        drop(prepared);
        if to.plan.leads_with_synthetic() {
            to.plan.wake.notify_one();
        }
        Ok(())
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
}

/// One rewrite of a Parse, Bind, Describe or Close, with the connection's statements locked.
/// Each method returns `None` for a malformed message.
struct Rewrite<'a> {
    statements: &'a mut ClientStatements,
    prepared: &'a mut ServerStatements,
    plan: &'a Plan,
    out: &'a mut Vec<u8>,
    opened: &'a mut bool,
}

impl Rewrite<'_> {
    /// A named Parse becomes a Parse of the shared server statement, or a synthetic
    /// ParseComplete when the connection already has it.
    fn parse(&mut self, body: &[u8]) -> Option<()> {
        let (name, rest) = cstr(body)?;
        *self.opened |= opens_transaction(rest);
        if drops_all_statements(rest) {
            // Forgotten when sent, not when run: a named Parse after it in this pipeline must
            // reach the server, which will have dropped everything by then.
            self.prepared.clear();
        }
        if name.is_empty() {
            self.out.extend_from_slice(&message(b'P', body));
            self.plan.push(Expect::Forward {
                ends: b"1",
                sync: false,
            });
            return Some(());
        }
        let (query, types) = cstr(rest)?;
        let (client_name, statement) = Statement::renamed(name, query, types, rest);
        if self.prepared.contains(&statement.server_name) {
            self.plan.push(Expect::Synthetic(&PARSE_COMPLETE));
        } else {
            self.send_parse(&statement);
            self.plan
                .push(Expect::ClientParse(statement.server_name.clone()));
        }
        self.statements.insert(client_name, statement);
        Some(())
    }

    /// Sends `statement`'s Parse, after a Close when the connection holds a stale one.
    fn send_parse(&mut self, statement: &Statement) {
        if self.prepared.prepare(&statement.server_name) {
            self.out
                .extend_from_slice(&close_statement(&statement.server_name));
            self.plan
                .push(Expect::InjectedClose(statement.server_name.clone()));
        }
        self.out.extend_from_slice(&statement.parse);
    }

    fn bind(&mut self, body: &[u8]) -> Option<()> {
        let (portal, rest) = cstr(body)?;
        let (name, rest) = cstr(rest)?;
        let expect = match self.ensure(name) {
            Some(statement) => {
                let mut renamed = portal.to_vec();
                renamed.push(0);
                renamed.extend_from_slice(statement.server_name.as_bytes());
                renamed.push(0);
                renamed.extend_from_slice(rest);
                self.out.extend_from_slice(&message(b'B', &renamed));
                Expect::UsesStatement {
                    ends: b"2",
                    statement,
                }
            }
            None => {
                self.out.extend_from_slice(&message(b'B', body));
                Expect::Forward {
                    ends: b"2",
                    sync: false,
                }
            }
        };
        self.plan.push(expect);
        Some(())
    }

    fn describe(&mut self, body: &[u8]) -> Option<()> {
        let kind = *body.first()?;
        let (name, _) = cstr(&body[1..])?;
        let renamed = if kind == b'S' {
            self.ensure(name)
        } else {
            None
        };
        let expect = match renamed {
            Some(statement) => {
                let mut new_body = vec![b'S'];
                new_body.extend_from_slice(statement.server_name.as_bytes());
                new_body.push(0);
                self.out.extend_from_slice(&message(b'D', &new_body));
                Expect::UsesStatement {
                    ends: b"Tn",
                    statement,
                }
            }
            None => {
                self.out.extend_from_slice(&message(b'D', body));
                Expect::Forward {
                    ends: b"Tn",
                    sync: false,
                }
            }
        };
        self.plan.push(expect);
        Some(())
    }

    fn close(&mut self, body: &[u8]) -> Option<()> {
        let kind = *body.first()?;
        let (name, _) = cstr(&body[1..])?;
        if kind == b'S' && !name.is_empty() {
            // The server statement may serve other clients: keep it, answer ourselves.
            self.statements
                .remove(String::from_utf8_lossy(name).as_ref());
            self.plan.push(Expect::Synthetic(&CLOSE_COMPLETE));
        } else {
            self.out.extend_from_slice(&message(b'C', body));
            self.plan.push(Expect::Forward {
                ends: b"3",
                sync: false,
            });
        }
        Some(())
    }

    /// A client statement, its Parse sent first if the connection lacks it. `None` for the
    /// unnamed statement or a name the client never prepared.
    fn ensure(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        if name.is_empty() {
            return None;
        }
        let statement = self
            .statements
            .get(String::from_utf8_lossy(name).as_ref())?
            .clone();
        if !self.prepared.contains(&statement.server_name) {
            self.send_parse(&statement);
            self.plan
                .push(Expect::InjectedParse(statement.server_name.clone()));
        }
        Some(statement)
    }
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
