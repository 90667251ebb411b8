//! One relayed session of the RDS Proxy emulator, after a login it accepted: the backend's
//! login answers go to the client (without BackendKeyData, as RDS Proxy sends none), then bytes
//! flow both ways while the client's messages are read whole and checked for what makes RDS
//! Proxy pin the session to its database connection (AWS, "Avoiding pinning an RDS Proxy"):
//! SET (not SET LOCAL), RESET, DISCARD, PREPARE, LISTEN, temporary objects, DECLARE … WITH HOLD,
//! session advisory locks, `set_config(…, false)`, statements over 16 KB. A pinned session is
//! counted once, with RDS Proxy's log line; DISCARD statements and named Parse messages are
//! counted on their own (whether protocol-level named statements pin is not documented).

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::wire;

/// Statements longer than this pin (RDS Proxy's documented limit).
const LONG_STATEMENT: usize = 16 * 1024;

/// What the emulator counts about sessions it relays.
#[derive(Debug, Default)]
pub struct PinCounters {
    /// Sessions pinned, each once.
    pub pinned: AtomicU64,
    /// DISCARD statements seen (any form).
    pub discards: AtomicU64,
    /// Parse messages that name their statement.
    pub named_parses: AtomicU64,
    /// Terminate messages: connections the client closed saying goodbye.
    pub terminates: AtomicU64,
    /// RDS Proxy's log line for each pinned session, oldest first.
    pub log: Mutex<Vec<String>>,
}

/// Relays the backend's login answers up to its first ReadyForQuery, dropping BackendKeyData
/// when `keys` is false. Returns false when the backend refused the login.
pub async fn relay_login<C, B>(client: &mut C, backend: &mut B, keys: bool) -> io::Result<bool>
where
    C: AsyncWrite + Unpin,
    B: AsyncRead + Unpin,
{
    loop {
        let (tag, body) = wire::read_message(backend).await?;
        if tag == b'K' && !keys {
            continue;
        }
        client.write_all(&wire::message(tag, &body)).await?;
        match tag {
            b'Z' => {
                client.flush().await?;
                return Ok(true);
            }
            b'E' => {
                client.flush().await?;
                return Ok(false);
            }
            _ => {}
        }
    }
}

/// Relays a logged-in session until either side closes, watching the client's messages.
/// When `stall` changes, the session stops moving bytes both ways but keeps its sockets open,
/// as a hung proxy does (the kernel still acknowledges what arrives). A client that sends
/// nothing for `idle_timeout` is closed (RDS Proxy's IdleClientTimeout).
pub async fn relay<C, B>(
    client: C,
    backend: B,
    counters: &PinCounters,
    connection: u64,
    mut stall: tokio::sync::watch::Receiver<u64>,
    idle_timeout: Option<std::time::Duration>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = tokio::io::split(backend);
    let upward = async {
        let mut pinned = false;
        loop {
            let next = wire::read_message(&mut client_read);
            let read = match idle_timeout {
                Some(idle) => tokio::time::timeout(idle, next).await.ok(),
                None => Some(next.await),
            };
            let Some(Ok((tag, body))) = read else {
                break;
            };
            if tag == b'X' {
                counters.terminates.fetch_add(1, Ordering::SeqCst);
            }
            let reason = pin_reason(tag, &body, counters);
            if !pinned && let Some(reason) = reason {
                pinned = true;
                counters.pinned.fetch_add(1, Ordering::SeqCst);
                lock(&counters.log).push(format!(
                    "The client session was pinned to the database connection \
                     [dbConnection={connection}] for the remainder of the session. The proxy \
                     can't reuse this connection until the session ends. Reason: {reason}"
                ));
            }
            if backend_write
                .write_all(&wire::message(tag, &body))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = backend_write.shutdown().await;
    };
    let downward = async {
        let _ = tokio::io::copy(&mut backend_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        () = upward => {}
        () = downward => {}
        _ = stall.changed() => std::future::pending::<()>().await,
    }
}

/// Why this client message pins its session, if it does; counts DISCARDs and named Parses.
fn pin_reason(tag: u8, body: &[u8], counters: &PinCounters) -> Option<String> {
    let sql = match tag {
        b'Q' => cstr(body),
        b'P' => {
            let name_end = body.iter().position(|&b| b == 0)?;
            if name_end > 0 {
                counters.named_parses.fetch_add(1, Ordering::SeqCst);
            }
            cstr(&body[name_end + 1..])
        }
        _ => return None,
    };
    if sql.len() > LONG_STATEMENT {
        return Some("The statement size is larger than 16 KB.".to_owned());
    }
    let lower = sql.to_ascii_lowercase();
    let mut reason = None;
    for statement in lower.split(';').map(str::trim) {
        if statement.starts_with("discard") {
            counters.discards.fetch_add(1, Ordering::SeqCst);
        }
        reason = reason.or_else(|| statement_pin(statement));
    }
    reason
}

/// The pinning reason of one lower-case statement.
fn statement_pin(statement: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().take(4).collect();
    let first = *words.first()?;
    let second = words.get(1).copied().unwrap_or("");
    let reason = match first {
        "set" if second != "local" && second != "transaction" => "SQL changed session settings.",
        "reset" => "SQL changed session settings.",
        "discard" => "SQL discarded session state.",
        "prepare" => "SQL created a prepared statement.",
        "listen" => "SQL registered a listener.",
        "declare" if statement.contains("with hold") => "SQL declared a cursor WITH HOLD.",
        "create"
            if matches!(second, "temp" | "temporary")
                || (second == "local" && words.get(2).is_some_and(|w| w.starts_with("temp"))) =>
        {
            "SQL created a temporary object."
        }
        _ if statement.contains("advisory_lock") => "SQL took a session advisory lock.",
        _ if statement.contains("set_config") && statement.contains("false") => {
            "SQL changed session settings with set_config."
        }
        _ => return None,
    };
    Some(reason.to_owned())
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
