//! Faults on the path to the upstream, injected by a relay between the sidecar and the
//! emulator ([`support::FaultRelay`]): a server that stops answering, a path that swallows
//! bytes, resets, a slow path. Each test asserts what the client is told (SQLSTATE), within
//! what bound, and that the sidecar goes on serving; and that a statement making progress is
//! never killed by any of the bounds.

mod harness;
mod support;

use std::time::{Duration, Instant};

use harness::{backend_pid, connect, simple_value, stack_through_relay, try_connect};
use rds_iam_sidecar::pool::PoolMode;
use support::wire;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

/// Runs `pg_sleep(30)` on `client`, has the fault happen once it runs, then cancels; returns
/// the statement's error and how long the cancel took to be answered.
async fn cancel_after(client: &Client, fault: impl FnOnce()) -> (tokio_postgres::Error, Duration) {
    let token = client.cancel_token();
    let marker = support::unique_name("cancelled");
    let sleep = format!("select pg_sleep(30) -- {marker}");
    let query = client.simple_query(&sleep);
    let cancel = async {
        support::shared_cluster().until_running(&marker).await;
        fault();
        let sent = Instant::now();
        token.cancel_query(NoTls).await.expect("send the cancel");
        sent
    };
    let (result, sent) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(query, cancel)
    })
    .await
    .expect("the cancel is answered within its bound");
    (result.expect_err("cancelled"), sent.elapsed())
}

fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map(|db| db.code().code().to_owned())
        .unwrap_or_else(|| format!("no ErrorResponse: {error}"))
}

#[tokio::test]
async fn a_forwarded_cancel_the_server_never_answers_closes_the_connection_after_the_grace() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let (stack, relay) = stack_through_relay(true, |c| {
            c.frontend.cancel_grace = Duration::from_secs(1);
            c.pool.mode = mode;
        })
        .await;
        let client = connect(&stack).await;
        let before = backend_pid(&client).await;
        // The connection open now hangs (a stopped proxy); the cancel itself goes through on
        // a new connection and reaches the server, whose answer never comes back.
        let (error, waited) = cancel_after(&client, || relay.stall()).await;
        assert_eq!(sqlstate(&error), "57014", "{mode:?}: {error}");
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(6),
            "{mode:?}: answered after the grace, not before: {waited:?}"
        );
        // A clean session goes on, on another connection.
        let after = backend_pid(&client).await;
        assert_ne!(before, after, "{mode:?}: the hung connection was given up");
        assert_eq!(
            simple_value(&client, "select 2").await.as_deref(),
            Some("2")
        );
    }
}

#[tokio::test]
async fn a_forwarded_cancel_that_works_keeps_the_connection_and_the_next_statement() {
    let (stack, _relay) = stack_through_relay(true, |c| {
        // Long enough for the forwarded cancel's own connection on a loaded machine.
        c.frontend.cancel_grace = Duration::from_secs(3);
    })
    .await;
    let client = connect(&stack).await;
    let before = backend_pid(&client).await;
    let (error, waited) = cancel_after(&client, || {}).await;
    assert_eq!(sqlstate(&error), "57014", "{error}");
    assert!(
        waited < Duration::from_secs(2),
        "the server's own answer: {waited:?}"
    );
    // PostgreSQL signals a cancelled backend twice (the postmaster's `signal_child` sends
    // SIGINT to the process, then to its process group): a statement already sent when the
    // second lands is cancelled too (CI saw it). Once the backend waits idle for a statement,
    // a late SIGINT is spent on nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A statement started inside the grace runs past it: the watch ended with the answer.
    let started = Instant::now();
    let value = simple_value(&client, "select pg_sleep(3.5)::text || 'done'").await;
    assert_eq!(value.as_deref(), Some("done"));
    assert!(started.elapsed() >= Duration::from_millis(3500));
    assert_eq!(
        backend_pid(&client).await,
        before,
        "the same upstream connection"
    );
}

#[tokio::test]
async fn a_keyless_cancel_on_a_hung_proxy_is_answered_at_once_and_the_client_goes_on() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let (stack, relay) = stack_through_relay(false, |c| c.pool.mode = mode).await;
        let client = connect(&stack).await;
        let (error, waited) = cancel_after(&client, || relay.stall()).await;
        assert_eq!(sqlstate(&error), "57014", "{mode:?}: {error}");
        assert!(waited < Duration::from_secs(2), "{mode:?}: {waited:?}");
        assert_eq!(
            simple_value(&client, "select 3").await.as_deref(),
            Some("3"),
            "{mode:?}: served on a new connection"
        );
    }
}

#[tokio::test]
async fn a_reset_inside_a_transaction_is_spoken_and_others_are_served() {
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let (stack, relay) = stack_through_relay(false, |c| c.pool.mode = mode).await;
        let mut raw = TcpStream::connect(stack.sidecar.addr())
            .await
            .expect("connect");
        let login = [("user", "postgres"), ("database", "postgres")];
        wire::login(&mut raw, &login, "x")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wire::simple_query(&mut raw, "begin; select 1")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        relay.reset();
        // The client, idle inside its transaction, is told at once.
        let fields = wire::error_within(&mut raw, Duration::from_secs(5), "told at once").await;
        assert_eq!(
            fields.get(&'C').map(String::as_str),
            Some("08006"),
            "{mode:?}"
        );
        assert_eq!(
            fields.get(&'S').map(String::as_str),
            Some("FATAL"),
            "{mode:?}"
        );
        let message = fields.get(&'M').cloned().unwrap_or_default();
        assert!(
            message.contains("inside a transaction"),
            "{mode:?}: {message}"
        );
        let other = connect(&stack).await;
        assert_eq!(simple_value(&other, "select 4").await.as_deref(), Some("4"));
    }
}

#[tokio::test]
async fn a_black_holed_path_fails_logins_within_the_connect_timeout_then_heals() {
    let (stack, relay) = stack_through_relay(false, |c| {
        c.upstream.connect_timeout = Duration::from_secs(1);
    })
    .await;
    relay.black_hole();
    let started = Instant::now();
    let error = try_connect(&stack, "postgres", "postgres")
        .await
        .expect_err("no upstream login can finish");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by --connect-timeout: {:?}",
        started.elapsed()
    );
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "08001", "{}", db.message());
    relay.heal();
    let client = connect(&stack).await;
    assert_eq!(
        simple_value(&client, "select 5").await.as_deref(),
        Some("5")
    );
}

#[tokio::test]
async fn statements_making_progress_on_a_slow_path_are_never_killed() {
    let (stack, relay) = stack_through_relay(true, |c| {
        c.frontend.cancel_grace = Duration::from_millis(200);
        c.pool.probe_after = Duration::from_millis(100);
    })
    .await;
    let client = connect(&stack).await;
    relay.slow(Duration::from_millis(40));
    let value = simple_value(
        &client,
        "select length(string_agg(repeat('x', 1000), '')) from generate_series(1, 300), pg_sleep(1)",
    )
    .await;
    assert_eq!(value.as_deref(), Some("300000"));
    drop(client);
    // Idle past the probe's threshold: the probe passes on a slow path, the client is served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = connect(&stack).await;
    assert_eq!(
        simple_value(&client, "select 6").await.as_deref(),
        Some("6")
    );
    assert_eq!(stack.emulator.logins(), 1, "the pooled connection was kept");
}
