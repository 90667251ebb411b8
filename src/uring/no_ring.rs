//! No io_uring off Linux: there is never a ring, and every [`super::Socket`] uses tokio's I/O.
//! The types below only let `socket/` compile unchanged.

use std::io;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};

/// Never built on this platform.
pub struct Ring;

pub struct Completion {
    pub result: i32,
    pub owned: Vec<u8>,
}

impl Ring {
    pub fn send(&mut self, _fd: RawFd, _owned: Vec<u8>) -> io::Result<u32> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub fn poll(&mut self, _index: u32, _fd: RawFd, _waker: &Waker) -> Poll<Completion> {
        Poll::Pending
    }

    pub fn peek(&mut self, _index: u32, _fd: RawFd) -> Option<Completion> {
        None
    }

    pub fn abandon(&mut self, _index: u32, _fd: RawFd) {}

    pub fn flush(&mut self) -> bool {
        true
    }

    pub fn is_waiting(&self, _index: u32, _fd: RawFd) -> bool {
        false
    }

    pub fn cancel(&mut self, _index: u32) {}

    pub fn recycle(&mut self, _owned: Vec<u8>) {}

    pub fn send_buffer(&mut self) -> Vec<u8> {
        Vec::new()
    }
}

pub fn forbid() {}

pub fn request() {}

pub fn install(_batched: bool) -> bool {
    false
}

pub fn spawn_reaper() {}

pub fn submit_before_park() {
    super::outbox::send_at_park();
}

pub fn submit_now() {}

pub fn describe() -> String {
    "epoll (io_uring is Linux's)".to_owned()
}

pub fn with_ring<R>(_f: impl FnOnce(&mut Ring) -> R) -> Option<R> {
    None
}
