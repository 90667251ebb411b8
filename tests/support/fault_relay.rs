//! A TCP relay that injects the faults of a real network path between the sidecar and its
//! upstream: point the sidecar's `--upstream-addr` at [`FaultRelay::addr`] and the relay
//! passes bytes to the target until a test asks for a fault:
//!
//! - [`FaultRelay::stall`]: connections open now stop moving bytes with their sockets left
//!   open (a hung proxy: the kernel still acknowledges); new connections pass;
//! - [`FaultRelay::black_hole`]: from now on every byte of every connection, open or new, is
//!   swallowed (a path that drops packets, as far as user space can make one);
//! - [`FaultRelay::reset`]: every open connection is reset (RST on both sides);
//! - [`FaultRelay::slow`]: every chunk waits before it is passed on (a congested path);
//! - [`FaultRelay::heal`]: bytes pass again (stalled ones included).
//!
//! Faults act on chunks as they are read, so a fault asked for mid-message cuts it there, as
//! a network does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the path does to bytes right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Pass,
    /// Connections older than this generation hold their bytes.
    Stalled(u64),
    Swallow,
    Slow(Duration),
}

struct Shared {
    target: SocketAddr,
    path: watch::Sender<Path>,
    /// Bumped by [`FaultRelay::reset`]; each connection resets when it changes.
    resets: watch::Sender<u64>,
    /// Bumped by [`FaultRelay::stall`]: connections accepted before the bump are stalled.
    generation: AtomicU64,
    accepted: AtomicU64,
}

/// A running relay; dropping it stops accepting and resets every connection.
pub struct FaultRelay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    /// Relays 127.0.0.1:(ephemeral) to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault relay");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared {
            target,
            path: watch::channel(Path::Pass).0,
            resets: watch::channel(0).0,
            generation: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept_task,
        }
    }

    /// Connections open now stop moving bytes, sockets left open; new ones pass.
    pub fn stall(&self) {
        let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.path.send_replace(Path::Stalled(generation));
    }

    /// Every byte of every connection, open or new, is swallowed from now on.
    pub fn black_hole(&self) {
        self.shared.path.send_replace(Path::Swallow);
    }

    /// Every chunk waits `delay` before it is passed on.
    pub fn slow(&self, delay: Duration) {
        self.shared.path.send_replace(Path::Slow(delay));
    }

    /// Bytes pass again.
    pub fn heal(&self) {
        self.shared.path.send_replace(Path::Pass);
    }

    /// Every open connection is reset (RST both ways).
    pub fn reset(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reset();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((inbound, _)) = listener.accept().await {
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let generation = shared.generation.load(Ordering::SeqCst);
        tokio::spawn(relay_one(inbound, shared.clone(), generation));
    }
}

/// One connection: two pumps until either side ends or a reset comes.
async fn relay_one(mut inbound: TcpStream, shared: Arc<Shared>, generation: u64) {
    let mut resets = shared.resets.subscribe();
    resets.mark_unchanged();
    let Ok(mut outbound) = TcpStream::connect(shared.target).await else {
        reset_on_close(&inbound);
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let reset = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let up = pump(in_read, out_write, shared.path.subscribe(), generation);
        let down = pump(out_read, in_write, shared.path.subscribe(), generation);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = resets.changed() => true,
        }
    };
    if reset {
        reset_on_close(&inbound);
        reset_on_close(&outbound);
    }
}

/// Copies one direction, applying the path's fault to each chunk; an orderly end is passed
/// on as one.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut path: watch::Receiver<Path>,
    generation: u64,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        match pass_after_fault(&mut path, generation).await {
            Verdict::Pass => {}
            Verdict::Swallow => continue,
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

enum Verdict {
    Pass,
    Swallow,
}

/// Waits out a stall or a slow path; says whether the chunk goes on.
async fn pass_after_fault(path: &mut watch::Receiver<Path>, generation: u64) -> Verdict {
    loop {
        let current = *path.borrow_and_update();
        match current {
            Path::Pass => return Verdict::Pass,
            Path::Swallow => return Verdict::Swallow,
            Path::Slow(delay) => {
                tokio::time::sleep(delay).await;
                return Verdict::Pass;
            }
            Path::Stalled(stalled) if generation < stalled => {
                if path.changed().await.is_err() {
                    return Verdict::Swallow;
                }
            }
            Path::Stalled(_) => return Verdict::Pass,
        }
    }
}

/// Makes the coming close a reset (RST), not a FIN.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
