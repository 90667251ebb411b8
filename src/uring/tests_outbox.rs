//! The outbox (off a ring, `main`'s runtime on epoll) over real loopback TCP: writes held until
//! the end of the turn and sent in order, two writes in a turn in one buffer, a write stalled
//! (a peer not reading) finished while its writer waits for something else, held writes sent
//! while another task stays busy, a socket dropped with a held write (on its thread or off
//! it), and a peer gone.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::outbox::{self, with_outbox};
use super::submit_before_park;
use super::tests::{BOUND, pair, read_within_bound, small_buffers};

/// Runs `test` on a thread of its own with an outbox and the park hook, as `main` builds a
/// runtime that has no ring: once with its writes batched by `io_submit`, once with one `send`
/// each (a kernel that refuses AIO).
fn on_outbox<F, Fut>(test: F)
where
    F: Fn() -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()>,
{
    on_outbox_with(true, test.clone());
    on_outbox_with(false, test);
}

fn on_outbox_with<F, Fut>(batching: bool, test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        outbox::install_with(batching);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .on_thread_park(submit_before_park)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn slots_in_use() -> usize {
    with_outbox(|outbox| outbox.slots_in_use()).expect("an outbox on this thread")
}

fn submits() -> usize {
    with_outbox(|outbox| outbox.submits).expect("an outbox on this thread")
}

/// The error of a write to a peer that closed.
fn assert_peer_gone(failed: &std::io::Error) {
    assert!(
        matches!(
            failed.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{failed:?}"
    );
}

/// Three connected pairs.
async fn pairs() -> Vec<(super::Socket, tokio::net::TcpStream)> {
    vec![pair().await, pair().await, pair().await]
}

#[test]
fn the_writes_of_several_sockets_in_a_turn_go_in_one_io_submit() {
    for batching in [true, false] {
        on_outbox_with(batching, move || async move {
            let mut pairs = pairs().await;
            for (n, (ours, _)) in pairs.iter_mut().enumerate() {
                ours.write_all(format!("to {n}").as_bytes())
                    .await
                    .expect("write");
            }
            assert_eq!(submits(), 0, "nothing went before the end of the turn");
            for (n, (_, peer)) in pairs.iter_mut().enumerate() {
                assert_eq!(
                    read_within_bound(peer, 4).await,
                    format!("to {n}").as_bytes()
                );
            }
            let expected = usize::from(batching);
            assert_eq!(
                submits(),
                expected,
                "one io_submit for the three (batching {batching})"
            );
            assert_eq!(slots_in_use(), 0);
            // What io_submit wrote is not sent again.
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (_, peer) in &pairs {
                let mut more = [0u8; 16];
                let again = peer.try_read(&mut more);
                assert!(
                    matches!(&again, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
                    "bytes sent twice: {again:?}"
                );
            }
        });
    }
}

#[test]
fn a_socket_without_room_in_a_batch_stalls_and_the_others_go() {
    on_outbox(|| async {
        let mut pairs = pairs().await;
        let (full, full_peer) = pairs.remove(0);
        small_buffers(&full, &full_peer);
        let filled = fill(&full);
        let reader = tokio::spawn(async move {
            let mut peer = full_peer;
            tokio::time::sleep(Duration::from_millis(50)).await;
            read_within_bound(&mut peer, filled + 60_000).await
        });
        let mut full = full;
        full.write_all(&[7u8; 60_000]).await.expect("write");
        for (ours, _) in pairs.iter_mut() {
            ours.write_all(b"free").await.expect("write");
        }
        for (_, peer) in pairs.iter_mut() {
            assert_eq!(read_within_bound(peer, 4).await, b"free");
        }
        let got = timeout(BOUND, reader)
            .await
            .expect("the stalled write went on")
            .expect("reader task");
        assert!(got.iter().all(|&byte| byte == 7), "bytes changed");
        assert_eq!(slots_in_use(), 0);
    });
}

#[test]
fn a_peer_gone_fails_its_socket_in_a_batch_and_not_the_others() {
    on_outbox(|| async {
        let mut pairs = pairs().await;
        let (mut dead, dead_peer) = pairs.remove(0);
        drop(dead_peer);
        let failed = timeout(BOUND, async {
            loop {
                let written = dead.write_all(&[1u8; 1024]).await;
                for (ours, _) in pairs.iter_mut() {
                    ours.write_all(b"alive")
                        .await
                        .expect("a healthy socket's write");
                }
                for (_, peer) in pairs.iter_mut() {
                    assert_eq!(read_within_bound(peer, 5).await, b"alive");
                }
                if let Err(error) = written {
                    return error;
                }
            }
        })
        .await
        .expect("a write to a closed peer fails within the bound");
        assert_peer_gone(&failed);
        drop(dead);
        assert_eq!(slots_in_use(), 0, "the failure's slot was freed");
    });
}

#[test]
fn writes_are_held_until_the_end_of_the_turn_and_arrive_in_order() {
    on_outbox(|| async {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"one,").await.expect("write");
        ours.write_all(b"two").await.expect("write");
        ours.flush().await.expect("flush");
        // The test has not yielded yet: nothing went, and both writes wait in one buffer.
        let mut early = [0u8; 8];
        let sent_early = peer.try_read(&mut early);
        assert!(
            matches!(&sent_early, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
            "a write went before the end of the turn: {sent_early:?}"
        );
        assert_eq!(slots_in_use(), 1, "two writes of one turn share a buffer");
        assert_eq!(read_within_bound(&mut peer, 7).await, b"one,two");
        assert_eq!(slots_in_use(), 0, "sending freed the slot");
        // The next turn's write is a buffer of its own, sent at that turn's end.
        ours.write_all(b"!").await.expect("write");
        assert_eq!(read_within_bound(&mut peer, 1).await, b"!");
    });
}

#[test]
fn a_stalled_write_goes_on_while_its_writer_waits_for_something_else() {
    on_outbox(|| async {
        let (mut ours, peer) = pair().await;
        small_buffers(&ours, &peer);
        // Both buffers full before the write: the end of the turn finds no room for it.
        let filled = fill(&ours);
        let reader = tokio::spawn(async move {
            let mut peer = peer;
            tokio::time::sleep(Duration::from_millis(50)).await;
            read_within_bound(&mut peer, filled + 60_000).await
        });
        ours.write_all(&[7u8; 60_000]).await.expect("write");
        ours.flush().await.expect("flush");
        // The writer waits on something else (as a forwarder waits on the server after writing
        // to its client), never on this socket: the rest must go all the same.
        let got = timeout(BOUND, reader)
            .await
            .expect("the stalled write went on without its writer")
            .expect("reader task");
        assert!(got.iter().all(|&byte| byte == 7), "bytes changed");
        assert_eq!(slots_in_use(), 0);
        drop(ours);
    });
}

#[test]
fn held_writes_go_while_another_task_stays_busy() {
    on_outbox(|| async {
        let (mut ours, mut peer) = pair().await;
        // A task that always has work: tokio then skips the park (and its hook).
        let busy = tokio::spawn(async {
            loop {
                tokio::task::yield_now().await;
            }
        });
        ours.write_all(b"through").await.expect("write");
        assert_eq!(read_within_bound(&mut peer, 7).await, b"through");
        busy.abort();
    });
}

/// Writes straight to the socket (past the outbox) until it has no room; how much.
fn fill(ours: &super::Socket) -> usize {
    use std::io::Write;
    let mut filled = 0;
    loop {
        match ours.tcp().write(&[7u8; 4096]) {
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return filled,
            Err(error) => panic!("filling the socket: {error}"),
        }
    }
}

#[test]
fn a_socket_dropped_with_a_held_write_sends_it_before_closing() {
    on_outbox(|| async {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"bye").await.expect("write");
        drop(ours);
        assert_eq!(slots_in_use(), 0, "the drop freed the slot");
        assert_eq!(read_within_bound(&mut peer, 3).await, b"bye");
        let mut rest = Vec::new();
        let closed = timeout(BOUND, peer.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "then the end: {closed:?}");
    });
}

#[test]
fn a_write_to_a_peer_gone_fails_on_a_later_call() {
    on_outbox(|| async {
        let (mut ours, peer) = pair().await;
        drop(peer);
        let failed = timeout(BOUND, async {
            loop {
                if let Err(error) = ours.write_all(&[1u8; 1024]).await {
                    return error;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a write to a closed peer fails within the bound");
        assert_peer_gone(&failed);
        drop(ours);
        assert_eq!(slots_in_use(), 0, "the failure's slot was freed");
    });
}

#[test]
fn a_socket_dropped_off_its_thread_keeps_its_descriptor_for_the_held_write() {
    on_outbox(|| async {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"kept").await.expect("write");
        // Dropped where the outbox cannot be reached: its slot still names the descriptor, so
        // the descriptor must stay open (closed, its number could go to another connection).
        std::thread::spawn(move || drop(ours))
            .join()
            .expect("drop thread");
        assert_eq!(read_within_bound(&mut peer, 4).await, b"kept");
    });
}
