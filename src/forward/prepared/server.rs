//! The server side of statement renaming: [`ServerRewriter`] walks the answers against the
//! [`Plan`], dropping the ones the client must not see and inserting the sidecar's own.

use std::collections::HashSet;
use std::sync::Mutex;

use super::*;

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
