//! The floor of `benches/pgbench-compare.sh`'s CPU measure (issue 16): a forwarder that only
//! copies bytes. One thread, one epoll; each client gets its own plaintext TCP connection to
//! the upstream (no TLS, no pool, no protocol), and each read is written to the other side at
//! once. What it costs per transaction is what the kernel charges any forwarding pooler on
//! this host: a read and a write on each side, each write carrying the loopback delivery of
//! its segment and the wake-up of its receiver. No pooler that forwards over TCP sockets with
//! readiness I/O (the sidecar, PgBouncer) can cost less.
//!
//! Run: `cargo run --release --example copy_forwarder -- LISTEN_PORT UPSTREAM_PORT` (both on
//! 127.0.0.1). A benchmark tool, not a product: a write that would block is retried at once.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

fn main() -> std::io::Result<()> {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [listen, upstream] = ports[..] else {
        eprintln!("usage: copy_forwarder LISTEN_PORT UPSTREAM_PORT");
        std::process::exit(2);
    };
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
    let mut listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, listen)))?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut forwarder = Forwarder {
        streams: HashMap::new(),
        next: 0,
        buffer: vec![0; 64 * 1024],
    };
    let mut events = Events::with_capacity(256);
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            if event.token() == LISTENER {
                forwarder.accept_all(&listener, &poll, upstream);
            } else {
                forwarder.copy(event.token());
            }
        }
    }
}

/// Each stream by its token, with its partner's token (client `2k`, upstream `2k + 1`).
struct Forwarder {
    streams: HashMap<Token, TcpStream>,
    next: usize,
    buffer: Vec<u8>,
}

impl Forwarder {
    fn accept_all(&mut self, listener: &TcpListener, poll: &Poll, upstream: SocketAddr) {
        while let Ok((client, _)) = listener.accept() {
            if let Err(error) = self.pair(client, poll, upstream) {
                eprintln!("copy_forwarder: upstream: {error}");
            }
        }
    }

    fn pair(
        &mut self,
        mut client: TcpStream,
        poll: &Poll,
        upstream: SocketAddr,
    ) -> std::io::Result<()> {
        let server = std::net::TcpStream::connect(upstream)?;
        server.set_nonblocking(true)?;
        let mut server = TcpStream::from_std(server);
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (a, b) = (Token(self.next), Token(self.next + 1));
        self.next += 2;
        poll.registry()
            .register(&mut client, a, Interest::READABLE)?;
        poll.registry()
            .register(&mut server, b, Interest::READABLE)?;
        self.streams.insert(a, client);
        self.streams.insert(b, server);
        Ok(())
    }

    /// Reads what `token`'s stream has and writes it to its partner; closes both at EOF or
    /// an error. Stops reading after a short read, as tokio does (no extra EAGAIN read).
    fn copy(&mut self, token: Token) {
        let partner = Token(token.0 ^ 1);
        loop {
            let Some(stream) = self.streams.get_mut(&token) else {
                return;
            };
            let read = match stream.read(&mut self.buffer) {
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(_) => 0,
            };
            if read == 0 || !self.write_all(partner, read) {
                self.streams.remove(&token);
                self.streams.remove(&partner);
                return;
            }
            if read < self.buffer.len() {
                return;
            }
        }
    }

    fn write_all(&mut self, token: Token, len: usize) -> bool {
        let Some(stream) = self.streams.get_mut(&token) else {
            return false;
        };
        let mut bytes = &self.buffer[..len];
        while !bytes.is_empty() {
            match stream.write(bytes) {
                Ok(0) => return false,
                Ok(n) => bytes = &bytes[n..],
                Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(_) => return false,
            }
        }
        true
    }
}
