//! The client side of statement renaming: [`ClientRewriter`] rewrites what the client sends
//! and records in the [`Plan`] what the server will answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
