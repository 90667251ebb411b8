//! The server closing a session-mode client's connection while the client is idle: RDS
//! Proxy's IdleClientTimeout (a closed socket, no message) and PostgreSQL's administrator
//! command or `idle_session_timeout` (a FATAL, then the close). Nothing was running, so a
//! client whose session can be built again goes on with another connection and never hears
//! of it; one whose session held what cannot be built again, or that was inside a transaction,
//! is told it was lost.

mod harness;
mod support;

use std::time::Duration;

use harness::{Stack, backend_pid, connect, credentials, db_error, simple_value, stack_behind};
use support::{
    DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, Emulator, TEST_AKID, TEST_SECRET, TestPki,
    emulator_options,
};

const IDLE_CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// The sidecar (session mode) in front of an emulator that closes clients idle for
/// [`IDLE_CLIENT_TIMEOUT`].
async fn proxy_closing_idle_clients() -> Stack {
    let pki = TestPki::new();
    let cluster = tokio::task::spawn_blocking(support::shared_cluster)
        .await
        .expect("shared cluster");
    let mut options = emulator_options(&pki, DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, cluster.port);
    options.idle_client_timeout = Some(IDLE_CLIENT_TIMEOUT);
    let emulator = Emulator::start(options).await;
    stack_behind(pki, emulator, |_| {}, credentials(TEST_AKID, TEST_SECRET)).await
}

/// Waits until the emulator has closed every session idle past its timeout.
async fn idle_past_the_timeout(stack: &Stack) {
    tokio::time::sleep(IDLE_CLIENT_TIMEOUT).await;
    harness::eventually("the proxy closed the idle session", || {
        stack.emulator.active() == 0
    })
    .await;
    // The sidecar sees the close.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_proxy_closing_an_idle_client_is_never_seen_by_it() {
    let stack = proxy_closing_idle_clients().await;
    let client = connect(&stack).await;
    client
        .batch_execute("SET extra_float_digits = 2")
        .await
        .expect("set");
    let statement = client
        .prepare("select $1::int4 * 2")
        .await
        .expect("prepare");
    let before = backend_pid(&client).await;
    idle_past_the_timeout(&stack).await;

    let four: i32 = client
        .query_one(&statement, &[&2i32])
        .await
        .expect("the named statement, built again on another connection")
        .get(0);
    assert_eq!(four, 4);
    assert_eq!(
        simple_value(&client, "show extra_float_digits")
            .await
            .as_deref(),
        Some("2"),
        "the setting, built again"
    );
    assert_ne!(backend_pid(&client).await, before, "another connection");
    assert_eq!(stack.emulator.logins(), 2);
}

#[tokio::test]
async fn a_server_fatal_to_an_idle_client_is_never_seen_by_it() {
    let stack = proxy_closing_idle_clients().await;
    let client = connect(&stack).await;
    let pid: i32 = backend_pid(&client).await.parse().expect("pid");
    let cluster = tokio::task::spawn_blocking(support::shared_cluster)
        .await
        .expect("cluster");
    // FATAL 57P01 "terminating connection due to administrator command", then the close.
    let killed: bool = cluster
        .admin_client()
        .await
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);
    harness::eventually("the backend's close is relayed", || {
        stack.emulator.active() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        simple_value(&client, "select 7").await.as_deref(),
        Some("7")
    );
    assert_eq!(stack.emulator.logins(), 2);
}

/// A client and its connection task, whose end says how the sidecar ended the session.
async fn watched(
    stack: &Stack,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let conninfo = harness::conn_string(stack, "postgres", "postgres");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect");
    (client, tokio::spawn(connection))
}

#[tokio::test]
async fn a_client_whose_session_cannot_be_built_again_is_told() {
    let stack = proxy_closing_idle_clients().await;
    let (listening, listening_ended) = watched(&stack).await;
    listening
        .batch_execute("listen somewhere")
        .await
        .expect("listen");
    let (in_transaction, in_transaction_ended) = watched(&stack).await;
    in_transaction.batch_execute("begin").await.expect("begin");
    idle_past_the_timeout(&stack).await;
    for (ended, when) in [
        (listening_ended, "while idle"),
        (in_transaction_ended, "inside a transaction"),
    ] {
        let error = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("told at once")
            .expect("connection task")
            .expect_err("the session was lost");
        let (code, message, _) = db_error(&error);
        assert_eq!(code, "08006", "{message}");
        assert!(message.contains(when), "{message}");
    }
}
