//! A `send` that went whole frees its ring slot at its completion, so an idle client holds
//! none; the index its socket still names may then go to another socket's `send`, which that
//! socket neither waits on nor cancels (it tells its own by its descriptor).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::tests::{BOUND, on_ring, pair, read_within_bound, stall, write_within_bound};
use super::thread::with_ring;

/// Slots of this thread's ring holding an operation.
fn slots_in_use() -> Option<usize> {
    with_ring(|ring| ring.slots_in_use())
}

/// A few turns of the event loop: completions are reaped by then, whichever way.
async fn a_few_turns() {
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_whole_send_frees_its_slot_and_its_index_is_anothers() {
    let (mut ours, mut peer) = pair().await;
    ours.write_all(b"hello").await.expect("write");
    ours.flush().await.expect("flush");
    assert_eq!(read_within_bound(&mut peer, 5).await, b"hello");
    a_few_turns().await;
    assert_eq!(slots_in_use(), Some(0), "the finished send's slot is free");
    let named = format!("{ours:?}");

    // Another socket's `send` takes that index and stalls: its peer does not read.
    let (mut other, mut other_peer) = pair().await;
    stall(&mut other).await;
    assert_eq!(slots_in_use(), Some(1), "the stalled send holds one slot");

    // Ours reads its send as gone (it does not wait on the other's), writes on, and its drop
    // leaves the other's send alone.
    write_within_bound(&mut ours, b"again")
        .await
        .expect("ours does not wait on the other's send");
    assert_eq!(read_within_bound(&mut peer, 5).await, b"again");
    drop(ours);
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while let Ok(n @ 1..) = other_peer.read(&mut buf).await {
            total += n;
        }
        total
    });
    write_within_bound(&mut other, b"end")
        .await
        .expect("the other's send went on, not cancelled");
    drop(other);
    let drained = timeout(BOUND, drain).await.expect("bound").expect("drain");
    assert!(
        drained > 64 * 1024,
        "{drained} bytes; our socket named {named}"
    );
    a_few_turns().await;
    assert_eq!(slots_in_use(), Some(0), "every slot free at the end");
}

#[test]
fn a_whole_send_frees_its_slot_and_its_socket_leaves_the_index_to_others() {
    on_ring(false, a_whole_send_frees_its_slot_and_its_index_is_anothers);
    on_ring(true, a_whole_send_frees_its_slot_and_its_index_is_anothers);
}
