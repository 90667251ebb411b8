//! The ring's sockets over real loopback TCP, on a ring that submits at once (as in a test's
//! runtime) and on one that batches its submissions until the thread parks (as `main` builds).

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::thread::with_ring;
use super::{Socket, install, spawn_reaper, submit_before_park};

pub(super) const BOUND: Duration = Duration::from_secs(10);

/// Runs `test` on a thread of its own with a ring, `batched` as `main` sets it up or not.
pub(super) fn on_ring<F, Fut>(batched: bool, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        assert!(
            install(batched),
            "io_uring is available on the test machine"
        );
        let mut builder = tokio::runtime::Builder::new_current_thread();
        if batched {
            builder.on_thread_park(submit_before_park);
        }
        let runtime = builder.enable_all().build().expect("runtime");
        runtime.block_on(async move {
            spawn_reaper();
            test().await;
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A connected pair: ours through the ring, the peer's plain tokio.
pub(super) async fn pair() -> (Socket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (ours, _) = listener.accept().await.expect("accept");
    (Socket::new(ours).expect("register"), peer)
}

/// Our send buffer and the peer's receive buffer at their smallest: a large write finds no
/// room soon.
pub(super) fn small_buffers(ours: &Socket, peer: &TcpStream) {
    socket2::SockRef::from(ours.tcp())
        .set_send_buffer_size(4096)
        .expect("SO_SNDBUF");
    socket2::SockRef::from(peer)
        .set_recv_buffer_size(4096)
        .expect("SO_RCVBUF");
}

/// Reads exactly `n` bytes from `reader`, within [`BOUND`].
pub(super) async fn read_within_bound<R: AsyncRead + Unpin>(reader: &mut R, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    timeout(BOUND, reader.read_exact(&mut bytes))
        .await
        .expect("bound")
        .expect("read");
    bytes
}

fn uses_ring(_socket: &Socket) -> bool {
    with_ring(|_| ()).is_some()
}

async fn round_trips_and_a_megabyte_each_way() {
    let (mut ours, mut peer) = pair().await;
    assert!(uses_ring(&ours));
    let mut buf = [0u8; 64];
    for round in 0..100u8 {
        peer.write_all(&[round; 10]).await.expect("peer write");
        let n = timeout(BOUND, ours.read(&mut buf))
            .await
            .expect("bound")
            .expect("read");
        assert_eq!(&buf[..n], &[round; 10]);
        ours.write_all(&[round; 20]).await.expect("write");
        ours.flush().await.expect("flush");
        let answer = read_within_bound(&mut peer, 20).await;
        assert_eq!(answer, [round; 20]);
    }
    a_megabyte_each_way(ours, peer).await;
}

/// A megabyte each way at once: partial sends, partial reads; then
/// the end of stream, every time it is read.
async fn a_megabyte_each_way(mut ours: Socket, peer: TcpStream) {
    let mut buf = [0u8; 64];
    let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let (mut peer_read, mut peer_write) = peer.into_split();
    let sender = tokio::spawn(async move {
        peer_write.write_all(&data).await.expect("peer sends");
        peer_write
    });
    let receiver = tokio::spawn(async move {
        let mut got = vec![0u8; 1_048_576];
        peer_read.read_exact(&mut got).await.expect("peer receives");
        got
    });
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 7000];
    let mut sent = 0;
    while got.len() < expected.len() || sent < expected.len() {
        if sent < expected.len() {
            let end = (sent + 5000).min(expected.len());
            ours.write_all(&expected[sent..end]).await.expect("write");
            sent = end;
        }
        if got.len() < expected.len() {
            let n = timeout(BOUND, ours.read(&mut chunk))
                .await
                .expect("bound")
                .expect("read");
            assert!(n > 0, "no early end of stream");
            got.extend_from_slice(&chunk[..n]);
        }
    }
    ours.flush().await.expect("flush");
    assert!(
        got == expected,
        "the bytes received are the bytes sent, in order"
    );
    let echoed = timeout(BOUND, receiver)
        .await
        .expect("bound")
        .expect("join");
    assert!(echoed == expected, "the peer got every byte, in order");
    let mut peer_write = sender.await.expect("join");
    peer_write.shutdown().await.expect("peer closes");
    for _ in 0..3 {
        let n = timeout(BOUND, ours.read(&mut buf))
            .await
            .expect("bound")
            .expect("eof");
        assert_eq!(n, 0, "end of stream, every time it is read");
    }
}

#[test]
fn round_trips_and_large_transfers_arrive_whole_and_in_order() {
    on_ring(false, round_trips_and_a_megabyte_each_way);
    on_ring(true, round_trips_and_a_megabyte_each_way);
}

async fn dropped_sockets_close() {
    // A read waiting for the peer when the socket goes: the peer sees the close.
    let (mut ours, mut peer) = pair().await;
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(ours.poll_readable(&mut cx).is_pending(), "a read waits");
    tokio::task::yield_now().await;
    drop(ours);
    let mut buf = [0u8; 8];
    let n = timeout(BOUND, peer.read(&mut buf))
        .await
        .expect("the close arrives")
        .expect("read");
    assert_eq!(n, 0);

    // Bytes written and never flushed still arrive, then the close.
    let (mut ours, mut peer) = pair().await;
    ours.write_all(b"last words").await.expect("write");
    drop(ours);
    let mut got = Vec::new();
    timeout(BOUND, peer.read_to_end(&mut got))
        .await
        .expect("bound")
        .expect("read");
    assert_eq!(got, b"last words");
}

#[test]
fn a_dropped_socket_closes_and_delivers_what_it_wrote() {
    on_ring(false, dropped_sockets_close);
    on_ring(true, dropped_sockets_close);
}

async fn an_s_goes_before_the_handshake() {
    // An 'S' written just before the handshake is sent first, then the stream comes back
    // (bytes read ahead refuse it: `tests_unread.rs`).
    let (mut ours, mut peer) = pair().await;
    ours.write_all(b"S").await.expect("write");
    assert!(
        ours.into_tcp().await.is_ok(),
        "nothing read ahead: the stream comes back"
    );
    let answer = read_within_bound(&mut peer, 1).await;
    assert_eq!(&answer, b"S");
}

#[test]
fn an_s_written_before_a_tls_handshake_is_sent_first() {
    on_ring(true, an_s_goes_before_the_handshake);
}

#[tokio::test]
async fn without_a_ring_the_socket_is_tokios() {
    // A test's runtime thread without `spawn_reaper`: no ring, plain tokio I/O.
    let (mut ours, mut peer) = pair().await;
    assert!(!uses_ring(&ours));
    peer.write_all(b"plain").await.expect("peer write");
    let mut buf = [0u8; 5];
    ours.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"plain");
    ours.write_all(b"back").await.expect("write");
    let mut back = [0u8; 4];
    peer.read_exact(&mut back).await.expect("peer read");
    assert_eq!(&back, b"back");
}

async fn a_parked_thread_wakes_for_a_completion() {
    // The peer is a plain socket on another thread: nothing but its bytes and the sends'
    // completions can wake this runtime's thread, which sleeps in epoll_wait meanwhile.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    let peer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut peer, _) = listener.accept().expect("accept");
        for round in 0..5u8 {
            std::thread::sleep(Duration::from_millis(50));
            peer.write_all(&[round]).expect("peer write");
            let mut echo = [0u8; 1];
            peer.read_exact(&mut echo).expect("peer read");
            assert_eq!(echo, [round]);
        }
    });
    let mut ours =
        Socket::new(TcpStream::connect(address).await.expect("connect")).expect("register");
    for round in 0..5u8 {
        let mut byte = [0u8; 1];
        let started = std::time::Instant::now();
        timeout(Duration::from_secs(2), ours.read_exact(&mut byte))
            .await
            .expect("woken by the completion, not by a timer")
            .expect("read");
        assert_eq!(byte, [round]);
        assert!(started.elapsed() < Duration::from_secs(1));
        ours.write_all(&byte).await.expect("write");
        ours.flush().await.expect("flush");
    }
    tokio::task::spawn_blocking(move || peer.join().expect("peer thread"))
        .await
        .expect("join");
}

#[test]
fn a_completion_wakes_a_thread_parked_in_epoll_wait() {
    on_ring(false, a_parked_thread_wakes_for_a_completion);
    on_ring(true, a_parked_thread_wakes_for_a_completion);
}

/// Writes to `ours` until its writes wait for a peer that does not read: both socket buffers
/// full and a `send` in flight.
pub(super) async fn stall(ours: &mut Socket) {
    let block = vec![7u8; 64 * 1024];
    let filling = timeout(Duration::from_millis(500), async {
        loop {
            ours.write_all(&block).await.expect("write");
        }
    });
    assert!(
        filling.await.is_err(),
        "the writes end up waiting for the peer"
    );
}

/// Writes all of `bytes` and flushes, within [`BOUND`].
pub(super) async fn write_within_bound(ours: &mut Socket, bytes: &[u8]) -> std::io::Result<()> {
    let written = timeout(BOUND, async {
        ours.write_all(bytes).await?;
        ours.flush().await
    });
    written
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn a_stalled_send_does_not_hold_the_connection() {
    // The peer stops reading: a `send` stays in flight.
    let (mut ours, mut peer) = pair().await;
    stall(&mut ours).await;
    drop(ours);
    // Dropped with that send in flight: it is cancelled and the connection closes.
    let mut sink = Vec::new();
    let ended = timeout(BOUND, peer.read_to_end(&mut sink)).await;
    assert!(
        ended.is_ok(),
        "the peer sees the close after {} bytes",
        sink.len()
    );
}

#[test]
fn a_socket_dropped_with_a_stalled_send_closes() {
    on_ring(false, a_stalled_send_does_not_hold_the_connection);
    on_ring(true, a_stalled_send_does_not_hold_the_connection);
}

async fn a_failed_send_is_reported() {
    let (mut ours, peer) = pair().await;
    drop(peer);
    let mut failed = None;
    for _ in 0..200 {
        if let Err(error) = ours.write_all(b"into a closed connection").await {
            failed = Some(error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        failed.is_some(),
        "a write after the peer's reset fails, as on a TcpStream"
    );
}

#[test]
fn writes_to_a_closed_peer_fail() {
    on_ring(false, a_failed_send_is_reported);
    on_ring(true, a_failed_send_is_reported);
}

async fn a_partial_send_finishes_unpolled() {
    // A small send buffer and a peer that reads late: the kernel takes part of the write, and
    // the writer flushes (which does not wait) and never polls the socket again.
    let (mut ours, mut peer) = pair().await;
    small_buffers(&ours, &peer);
    let data: Vec<u8> = (0..60_000u32).map(|i| (i % 253) as u8).collect();
    ours.write_all(&data).await.expect("write");
    ours.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut got = vec![0u8; data.len()];
    timeout(BOUND, peer.read_exact(&mut got))
        .await
        .expect("the rest of a partial send arrives without another poll")
        .expect("read");
    assert!(got == data);
    drop(ours);
}

#[test]
fn the_rest_of_a_partial_send_goes_without_the_writer() {
    on_ring(false, a_partial_send_finishes_unpolled);
    on_ring(true, a_partial_send_finishes_unpolled);
}
