//! Where Linux AIO is not (another OS, a big-endian target): the outbox sends one `send` a
//! buffer.

use std::os::fd::RawFd;

pub const CAPACITY: usize = 0;

pub struct Aio;

impl Aio {
    pub fn new() -> Option<Aio> {
        None
    }

    pub fn push(&mut self, _fd: RawFd, _bytes: &[u8]) {}

    pub fn submit(&mut self, results: &mut Vec<Option<i64>>) {
        results.clear();
    }

    pub fn usable(&self) -> bool {
        false
    }
}

pub fn errno_of(result: i64) -> i32 {
    i32::try_from(-result).unwrap_or(libc::EIO)
}
