//! Completion I/O for the hot path (issue 16): the sockets' `send`s go through one io_uring
//! per thread instead of one `writev` each. Tokio keeps everything else (reads, listeners,
//! connects, timers, the TLS handshake's logic); a [`Socket`] is a tokio `TcpStream`, still
//! registered with tokio, whose writes are submissions on the thread's ring when it has one
//! and plain tokio I/O when it has not.
//!
//! What it saves, measured (pgbench -S, 8 clients, the sidecar with `--socket-io epoll`
//! against `io-uring`, docs/ARCHITECTURE.md): about a fifth of the sidecar's CPU per
//! transaction with eight busy clients, in both pool modes. The `send`s of every task that ran
//! in one turn of the event loop go to the kernel in one `io_uring_enter`, made just before
//! tokio parks the thread ([`submit_before_park`]), where each is done inline. Reads stay
//! tokio's: a `recv` through the ring (session 14) cost more than it saved (see
//! `socket/mod.rs`).
//!
//! The default (`--socket-io io-uring`; `epoll` to turn it off). Only the current-thread
//! runtime (`--worker-threads 1`, the default) gets a ring: a task of tokio's work-stealing
//! pool may be polled on any thread, and a ring belongs to one. A kernel or sandbox that
//! refuses io_uring (older than 6.1, `kernel.io_uring_disabled`, the default seccomp profiles
//! of Docker 25+ and containerd, ECS Fargate, gVisor) falls back to epoll, where `main`'s
//! runtime holds the writes of a turn in its outbox and sends them together at its end, in
//! one `io_submit` where Linux AIO is allowed (`outbox/`); the start-up line says which
//! (`io=`). A `Socket` must be polled on the thread whose ring it used (always so with
//! one runtime thread).

#[cfg(target_os = "linux")]
mod ops;
mod outbox;
#[cfg(target_os = "linux")]
mod ring;
#[cfg(not(target_os = "linux"))]
#[path = "no_ring.rs"]
mod ring;
#[cfg(target_os = "linux")]
mod thread;
#[cfg(not(target_os = "linux"))]
use ring as thread;
mod socket;
#[cfg(all(test, target_os = "linux"))]
mod tests;
#[cfg(all(test, target_os = "linux"))]
mod tests_flush;
#[cfg(all(test, target_os = "linux"))]
mod tests_outbox;
#[cfg(all(test, target_os = "linux"))]
mod tests_slots;
#[cfg(all(test, target_os = "linux"))]
mod tests_unread;
mod tokio_io;

pub use outbox::install as install_outbox;
pub use socket::Socket;
pub use thread::{describe, forbid, install, request, spawn_reaper, submit_before_park};
pub use tokio_io::{peek_one, poll_read_by, read_noting_short};

/// How the sockets do their I/O (`--socket-io`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SocketIo {
    /// Writes through the thread's io_uring where there is one. The default since session 16,
    /// when reads went back to tokio: less CPU than `epoll` with busy clients (about a fifth),
    /// as much for a lone client and a new connection, and an idle client under 1 KiB
    /// (docs/ARCHITECTURE.md, "Sends through the ring, reads through tokio").
    #[default]
    IoUring,
    /// Readiness from epoll, then a system call per read; the writes of a turn held until its
    /// end, then sent together in one `io_submit` where Linux AIO is allowed, one `send` each
    /// where not (the outbox, `outbox/`; through tokio on a multi-thread runtime).
    Epoll,
}
