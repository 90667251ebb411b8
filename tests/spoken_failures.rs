//! Every lost connection is spoken, every fault bounded: an upstream connection lost under a
//! client gives it `FATAL 08006` naming the endpoint and what was running (and a metric), in
//! both pooling modes; bytes that are not PostgreSQL messages after login give `FATAL 08P01`
//! before the close, never a bare EOF, and a Bind over transaction mode's limit `FATAL 54000`;
//! silent sockets count against the client limit and are
//! closed after the login timeout; a pooled connection to a hung proxy is never handed out.

mod harness;
mod support;

use std::time::Duration;

use harness::{connect, plain_stack_with, stack_with};
use rds_iam_sidecar::pool::PoolMode;
use rds_iam_sidecar::settings::EndpointSettings;
use support::{TEST_AKID, TEST_SECRET, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn lost_mid_statement(adjust: impl FnOnce(&mut EndpointSettings)) {
    let stack = stack_with(adjust, harness::credentials(TEST_AKID, TEST_SECRET)).await;
    let client = connect(&stack).await;
    let query = client.simple_query("select pg_sleep(10)");
    let kill = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.emulator.kill_connections();
    };
    let (result, ()) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(query, kill) })
            .await
            .expect("the client hears of it at once");
    let error = result.expect_err("the connection was lost");
    let db = error
        .as_db_error()
        .expect("an ErrorResponse, not a bare EOF");
    assert_eq!((db.code().code(), db.severity()), ("08006", "FATAL"));
    assert!(
        db.message().contains("was lost while a statement ran")
            && db.message().contains(support::DEFAULT_ENDPOINT_HOST),
        "{}",
        db.message()
    );
}

#[tokio::test]
async fn an_upstream_lost_mid_statement_is_spoken_in_session_mode() {
    lost_mid_statement(|_| {}).await;
}

#[tokio::test]
async fn an_upstream_lost_mid_statement_is_spoken_in_transaction_mode() {
    lost_mid_statement(|c| c.pool.mode = PoolMode::Transaction).await;
}

/// A client logged in through the sidecar with raw messages.
async fn raw_login(stack: &harness::Stack) -> TcpStream {
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    wire::login(
        &mut raw,
        &[("user", "postgres"), ("database", "postgres")],
        "x",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    raw
}

#[tokio::test]
async fn a_message_too_short_to_be_one_gets_08p01() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let stack = stack_with(
            |c| c.pool.mode = mode,
            harness::credentials(TEST_AKID, TEST_SECRET),
        )
        .await;
        let mut raw = raw_login(&stack).await;
        // A Query whose length (2) cannot even hold itself.
        raw.write_all(&[b'Q', 0, 0, 0, 2]).await.expect("write");
        let fields = wire::error_within(&mut raw, Duration::from_secs(5), "answered at once").await;
        assert_eq!(
            fields.get(&'C').map(String::as_str),
            Some("08P01"),
            "{mode:?}"
        );
        assert_eq!(fields.get(&'S').map(String::as_str), Some("FATAL"));
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "then the connection closes");
    }
}

/// Transaction mode reads a Bind whole to rename its statement, up to 64 MiB: a larger one
/// gets `FATAL 54000` saying so and what to do, not a protocol violation. (Session mode renames
/// nothing and forwards it; the stand-in proxy here reads messages of at most 16 MiB.)
#[tokio::test]
async fn a_bind_over_the_transaction_mode_limit_gets_54000() {
    let large = vec![7u8; 65 * 1024 * 1024];
    let transaction = plain_stack_with(|c| c.pool.mode = PoolMode::Transaction).await;
    let client = connect(&transaction).await;
    let error = client
        .query_one("select length($1::bytea)", &[&large])
        .await
        .expect_err("over the limit");
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!((db.code().code(), db.severity()), ("54000", "FATAL"));
    assert!(db.message().contains("64 MiB"), "{}", db.message());
    assert!(db.hint().is_some_and(|h| h.contains("--pool-mode session")));
}

/// The client is still sending its large Bind when the sidecar refuses it, and reads only once
/// all of it is written (as libpq does): the sidecar reads on for a while after its FATAL, so
/// that the client's writes succeed and it reads the error, not a reset connection (a socket
/// closed with unread bytes is reset, and the reset drops the error).
#[tokio::test]
async fn a_client_still_sending_its_large_bind_reads_the_54000() {
    let stack = plain_stack_with(|c| c.pool.mode = PoolMode::Transaction).await;
    for _ in 0..3 {
        let mut raw = raw_login(&stack).await;
        // A Bind header saying 65 MiB, then 16 MiB of it.
        let header = [&[b'B'][..], &(65u32 << 20).to_be_bytes()].concat();
        raw.write_all(&header).await.expect("header");
        let piece = vec![0u8; 64 * 1024];
        for _ in 0..256 {
            raw.write_all(&piece).await.expect("the sidecar reads on");
        }
        let fields = wire::error_within(&mut raw, Duration::from_secs(5), "the refusal").await;
        assert_eq!(fields.get(&'C').map(String::as_str), Some("54000"));
    }
}

#[tokio::test]
async fn silent_sockets_count_against_the_limit_and_are_closed_after_the_login_timeout() {
    let stack = stack_with(
        |c| {
            c.frontend.max_client_connections = 3;
            // Long enough that the three silent sockets still hold their places when the
            // fourth comes, on a loaded machine.
            c.frontend.login_timeout = Duration::from_secs(3);
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            TcpStream::connect(stack.sidecar.addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fourth is refused at once, before it sends anything.
    let mut fourth = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    let fields = wire::error_within(&mut fourth, Duration::from_secs(2), "refused at once").await;
    assert_eq!(fields.get(&'C').map(String::as_str), Some("53300"));
    // The silent ones are told and closed after --client-login-timeout.
    for socket in &mut silent {
        let limit = Duration::from_secs(6);
        let fields = wire::error_within(socket, limit, "closed after the login timeout").await;
        assert_eq!(fields.get(&'C').map(String::as_str), Some("08P01"));
        assert!(
            fields
                .get(&'M')
                .is_some_and(|m| m.contains("--client-login-timeout"))
        );
    }
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = connect(&stack).await;
    client.simple_query("select 1").await.expect("served again");
}

#[tokio::test]
async fn a_pooled_connection_to_a_hung_proxy_is_replaced_unnoticed() {
    let stack = stack_with(
        |c| {
            c.pool.size = 2;
            c.pool.probe_after = Duration::from_millis(100);
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let first = connect(&stack).await;
    first.simple_query("select 1").await.expect("query");
    drop(first);
    // Pooled, idle past probe_after; then the proxy hangs with the connection open.
    harness::eventually("the connection is back in the pool", || {
        stack.sidecar.pool_counts("postgres", "postgres") == Some((1, 1))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.emulator.stall_connections();
    let started = std::time::Instant::now();
    let second = connect(&stack).await;
    let value = tokio::time::timeout(
        Duration::from_secs(10),
        harness::simple_value(&second, "select 2"),
    )
    .await
    .expect("not handed the hung connection");
    assert_eq!(value.as_deref(), Some("2"), "served on a new connection");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the probe's bound: {:?}",
        started.elapsed()
    );
    assert_eq!(
        stack.emulator.logins(),
        2,
        "the hung connection was replaced"
    );
}

/// With every idle connection hung, proving them one after the other (2 s each) must not
/// outlast the client's wait: the client is answered within --pool-timeout.
#[tokio::test]
async fn proving_hung_idle_connections_stays_within_the_pool_timeout() {
    let stack = stack_with(
        |c| {
            c.pool.size = 3;
            c.pool.probe_after = Duration::from_millis(100);
            c.pool.timeout = Duration::from_secs(3);
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let clients = futures_util::future::join_all((0..3).map(|_| connect(&stack))).await;
    for client in &clients {
        client.simple_query("begin").await.expect("begin");
    }
    for client in &clients {
        client.simple_query("commit").await.expect("commit");
    }
    drop(clients);
    harness::eventually("three idle connections", || {
        stack.sidecar.pool_counts("postgres", "postgres") == Some((3, 3))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.emulator.stall_connections();
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let client = harness::try_connect(&stack, "postgres", "postgres").await?;
        client.simple_query("select 1").await.map(drop)
    })
    .await
    .expect("answered");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(4500),
        "answered after {took:?}"
    );
    if let Err(error) = answered {
        assert_eq!(harness::db_error(&error).0, "53300", "{error}");
    }
}
