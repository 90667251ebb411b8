//! Bytes given back to a socket ([`Socket::unread`]): what a client sent after its startup
//! packet, read with it. The next reads return them first, then what the peer sends; they
//! keep the socket out of a TLS handshake; `Debug` shows how many, never what. On a ring and
//! on tokio alike.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::{BOUND, on_ring, pair};

async fn given_back_bytes_come_first() {
    let (mut ours, mut peer) = pair().await;
    peer.write_all(b"startup+query").await.expect("peer write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(BOUND, ours.read(&mut buf))
        .await
        .expect("bound")
        .expect("first read");
    assert_eq!(&buf[..n], b"startup+query");
    ours.unread(&buf[7..n]);
    let shown = format!("{ours:?}");
    // The carried bytes show as their count alone: neither as text nor as byte values
    // (only the Carried part is looked at: a port number may hold "113", b'q').
    assert!(!shown.contains("query"), "{shown}");
    assert!(
        shown.contains("carried: Some(Carried { left: 6 })"),
        "{shown}"
    );
    // Read back in two pieces, then the peer's next bytes.
    let mut piece = [0u8; 4];
    assert_eq!(ours.try_read(&mut piece).expect("carried"), 4);
    assert_eq!(&piece, b"+que");
    peer.write_all(b"next").await.expect("peer write");
    let n = ours.read(&mut buf).await.expect("rest of carried");
    assert_eq!(&buf[..n], b"ry");
    let n = tokio::time::timeout(BOUND, ours.read(&mut buf))
        .await
        .expect("bound")
        .expect("the peer's next bytes");
    assert_eq!(&buf[..n], b"next");
    // The socket writes on as before.
    ours.write_all(b"answer").await.expect("write");
    ours.flush().await.expect("flush");
    let mut answer = [0u8; 6];
    tokio::time::timeout(BOUND, peer.read_exact(&mut answer))
        .await
        .expect("bound")
        .expect("peer read");
    assert_eq!(&answer, b"answer");
}

async fn carried_bytes_refuse_a_tls_handshake() {
    let (mut ours, _peer) = pair().await;
    ours.unread(b"\x16\x03\x01 a ClientHello sent before the S");
    assert!(
        ours.into_tcp().await.is_err(),
        "bytes read ahead refuse TLS"
    );
}

#[test]
fn bytes_given_back_are_read_first_on_a_ring() {
    on_ring(false, given_back_bytes_come_first);
    on_ring(true, given_back_bytes_come_first);
    on_ring(true, carried_bytes_refuse_a_tls_handshake);
}

#[tokio::test]
async fn bytes_given_back_are_read_first_on_tokio() {
    given_back_bytes_come_first().await;
    carried_bytes_refuse_a_tls_handshake().await;
}
