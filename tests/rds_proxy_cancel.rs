//! Cancels behind RDS Proxy, which sends no BackendKeyData and ignores CancelRequest (the
//! emulator's default): the sidecar closes the client's upstream connection and answers
//! `57014` itself, within 2 s; the client stays. Inside an explicit transaction it is failed
//! (`25P02`, ReadyForQuery `E`) until ROLLBACK or COMMIT, in the simple and the extended
//! protocol; a session-mode client's SETs and named statements are built again on its next
//! connection, while other session state ends its session (FATAL); a client with two queries in
//! flight gets FATAL (one answer cannot stand for two); a statement waiting for a connection of
//! a full pool is answered 57014 without running.

mod harness;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{Stack, backend_pid, connect, db_error, simple_value, stack_with};
use rds_iam_sidecar::pool::PoolMode;
use rds_iam_sidecar::settings::EndpointSettings;
use support::{TEST_AKID, TEST_SECRET};
use tokio_postgres::{Client, NoTls, Statement};

async fn proxy_stack(adjust: impl FnOnce(&mut EndpointSettings)) -> Stack {
    stack_with(adjust, harness::credentials(TEST_AKID, TEST_SECRET)).await
}

fn transaction_mode(c: &mut EndpointSettings) {
    c.pool.mode = PoolMode::Transaction;
    c.pool.size = 2;
}

/// Runs `select pg_sleep(10)` on `client` and cancels it once it runs, with its cancel token;
/// the answer must come within 2 s of the cancel.
async fn cancelled_sleep(client: &Client) -> tokio_postgres::Error {
    let token = client.cancel_token();
    let marker = support::unique_name("cancelled");
    let sleep = format!("select pg_sleep(10) -- {marker}");
    let query = client.simple_query(&sleep);
    let cancel = async {
        support::shared_cluster().until_running(&marker).await;
        let sent = Instant::now();
        token.cancel_query(NoTls).await.expect("send cancel");
        sent
    };
    let (result, sent) = tokio::join!(query, cancel);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the cancelled query ended {:?} after the cancel",
        sent.elapsed()
    );
    result.expect_err("cancelled")
}

/// The SQLSTATE a cancelled `select pg_sleep(10)` ended with.
async fn cancel_sleep(client: &Client) -> String {
    db_error(&cancelled_sleep(client).await).0
}

/// After a cancel, the client's `statement` (prepared before it) still runs and its
/// `extra_float_digits` is `digits`: both were built again on the new connection.
async fn session_was_built_again(client: &Client, statement: &Statement, digits: &str) {
    let two: i32 = client
        .query_one(statement, &[&1i32])
        .await
        .expect("the statement prepared before the cancel")
        .get(0);
    assert_eq!(two, 2);
    assert_eq!(
        simple_value(client, "show extra_float_digits")
            .await
            .as_deref(),
        Some(digits)
    );
}

/// A cancelled `select pg_sleep(10)` ends the session: FATAL 57014 whose detail names `lost`.
async fn cancel_ends_the_session(client: &Client, lost: &str) {
    let error = cancelled_sleep(client).await;
    let db = error.as_db_error().expect("a server error");
    assert_eq!((db.code().code(), db.severity()), ("57014", "FATAL"));
    assert!(
        db.detail().is_some_and(|d| d.contains(lost)),
        "{:?}",
        db.detail()
    );
    assert!(client.simple_query("select 1").await.is_err(), "closed");
}

#[tokio::test]
async fn cancel_without_server_keys_in_transaction_mode() {
    let stack = proxy_stack(transaction_mode).await;
    let client = connect(&stack).await;
    assert_eq!(cancel_sleep(&client).await, "57014");
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1"),
        "the client goes on"
    );

    // Inside an explicit transaction: failed (E) until ROLLBACK, answered by the sidecar.
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(cancel_sleep(&client).await, "57014");
    let error = client
        .simple_query("select 1")
        .await
        .expect_err("the transaction failed");
    assert_eq!(db_error(&error).0, "25P02");
    client.batch_execute("rollback").await.expect("rollback");
    let value: i32 = client
        .query_one("select 41 + 1", &[])
        .await
        .expect("a new transaction, on another connection")
        .get(0);
    assert_eq!(value, 42);
    // COMMIT ends a failed transaction too (PostgreSQL answers it with ROLLBACK).
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(cancel_sleep(&client).await, "57014");
    client.batch_execute("commit").await.expect("commit");
    client.simple_query("select 1").await.expect("goes on");
    assert_eq!(
        (stack.emulator.cancels(), stack.emulator.ignored_cancels()),
        (0, 0),
        "nothing was sent to a proxy that ignores cancels"
    );
}

#[tokio::test]
async fn cancel_without_server_keys_in_session_mode() {
    let stack = proxy_stack(|_| {}).await;
    // No session state: the client goes on with another upstream connection.
    let client = connect(&stack).await;
    let before = backend_pid(&client).await;
    assert_eq!(cancel_sleep(&client).await, "57014");
    let after = backend_pid(&client).await;
    assert_ne!(before, after, "a fresh upstream connection");

    // Settings and named statements are built again on the next connection.
    let client = connect(&stack).await;
    let statement = client
        .prepare("select $1::int4 + 1")
        .await
        .expect("prepare");
    client
        .batch_execute("SET extra_float_digits = 3")
        .await
        .expect("set");
    // A reported setting: its ParameterStatus comes after the SET's CommandComplete.
    client
        .batch_execute("SET application_name = 'kept'")
        .await
        .expect("set");
    assert_eq!(cancel_sleep(&client).await, "57014");
    session_was_built_again(&client, &statement, "3").await;
    assert_eq!(
        simple_value(&client, "show application_name")
            .await
            .as_deref(),
        Some("kept")
    );

    // Session state the sidecar cannot build again: gone with the connection, and the client
    // is told.
    let client = connect(&stack).await;
    client
        .batch_execute("listen somewhere")
        .await
        .expect("listen");
    cancel_ends_the_session(&client, "listen").await;
}

/// A statement waiting for a connection of a full pool (transaction mode) is cancelled without
/// waiting out `--pool-timeout`: ERROR 57014 at once, the statement never runs, and the client
/// goes on.
#[tokio::test]
async fn a_statement_waiting_for_a_connection_is_cancelled_before_it_runs() {
    waiting_statement_cancelled(PoolMode::Transaction).await;
}

/// So is a session-mode client's first statement, greeted from the pool's parameters and
/// waiting for its connection.
#[tokio::test]
async fn a_first_statement_waiting_for_a_session_connection_is_cancelled_before_it_runs() {
    waiting_statement_cancelled(PoolMode::Session).await;
}

async fn waiting_statement_cancelled(mode: PoolMode) {
    let stack = proxy_stack(|c| {
        c.pool.mode = mode;
        c.pool.size = 1;
        c.pool.timeout = Duration::from_secs(20);
    })
    .await;
    let table = harness::table_made_apart(&stack, "waiting", "x int").await;
    let holder = connect(&stack).await;
    holder.batch_execute("begin").await.expect("begin");
    let client = connect(&stack).await;
    let token = client.cancel_token();
    let insert = format!("insert into {table} values (1)");
    let waiting = client.simple_query(&insert);
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.expect("send cancel");
        Instant::now()
    };
    let (result, sent) = tokio::join!(waiting, cancel);
    assert!(sent.elapsed() < Duration::from_secs(2), "answered at once");
    let error = result.expect_err("cancelled");
    let db = error.as_db_error().expect("an ErrorResponse");
    assert_eq!((db.code().code(), db.severity()), ("57014", "ERROR"));
    assert!(db.detail().is_some_and(|d| d.contains("never ran")));
    holder.batch_execute("commit").await.expect("commit");
    // Session mode: the holder keeps the pool's one connection until it leaves.
    drop(holder);
    let count = simple_value(&client, &format!("select count(*) from {table}")).await;
    assert_eq!(count.as_deref(), Some("0"), "the insert never ran");
}

/// asyncpg prepares with Parse, Describe and Flush, and sends the Sync only after the answer. A
/// cancel while that waits for a connection gets ERROR 57014 at once; what follows up to the
/// Sync is dropped and the Sync answered, as PostgreSQL skips to Sync after an error; the
/// client goes on (before: FATAL, and asyncpg's connection was closed).
#[tokio::test]
async fn an_unsynced_prepare_waiting_for_a_connection_is_cancelled_and_skips_to_sync() {
    use support::wire;
    use tokio::io::AsyncWriteExt;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let stack = proxy_stack(|c| {
            c.pool.mode = mode;
            c.pool.size = 1;
            c.pool.timeout = Duration::from_secs(20);
        })
        .await;
        // Raw logins both: the same startup parameters, so the same pool.
        let (mut holder, _) = harness::raw_login(&stack).await;
        holder
            .write_all(&wire::query_message("begin"))
            .await
            .expect("begin");
        harness::read_until_ready(&mut holder).await;
        let (mut raw, key) = harness::raw_login(&stack).await;
        let prepare = [
            wire::message(b'P', b"s1\0select 1\0\0\0"),
            wire::message(b'D', b"Ss1\0"),
            wire::message(b'H', &[]),
        ]
        .concat();
        raw.write_all(&prepare).await.expect("prepare");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut cancel = tokio::net::TcpStream::connect(stack.sidecar.addr())
            .await
            .expect("connect");
        let (pid, secret) = key.split_at(4);
        let pid = u32::from_be_bytes(pid.try_into().expect("4 bytes"));
        let secret = u32::from_be_bytes(secret.try_into().expect("4 bytes"));
        cancel
            .write_all(&wire::cancel_request(pid, secret))
            .await
            .expect("cancel");
        let fields = wire::error_within(&mut raw, Duration::from_secs(2), "the cancel").await;
        assert_eq!(
            fields.get(&'S').map(String::as_str),
            Some("ERROR"),
            "{mode:?}"
        );
        assert_eq!(
            fields.get(&'C').map(String::as_str),
            Some("57014"),
            "{mode:?}"
        );
        // More of the failed batch, then its Sync: only the Sync is answered.
        let rest = [wire::message(b'D', b"Ss1\0"), wire::message(b'S', &[])].concat();
        raw.write_all(&rest).await.expect("sync");
        let answer = harness::read_until_ready(&mut raw).await;
        assert_eq!(answer, vec![(b'Z', vec![b'I'])], "{mode:?}");
        holder
            .write_all(&wire::query_message("commit"))
            .await
            .expect("commit");
        harness::read_until_ready(&mut holder).await;
        drop(holder);
        // The client goes on.
        raw.write_all(&wire::query_message("select 42"))
            .await
            .expect("query");
        let answer = harness::read_until_ready(&mut raw).await;
        assert!(
            answer
                .iter()
                .any(|(tag, body)| *tag == b'D' && body.ends_with(b"42")),
            "{mode:?}: {answer:?}"
        );
    }
}

/// A named statement that failed to prepare (asyncpg names every statement; tokio-postgres
/// too) is kept by the replay as it was sent; building the session again passes over it, so
/// the client goes on after a cancel with its other statements and settings.
#[tokio::test]
async fn a_statement_that_failed_to_prepare_does_not_end_the_session_at_a_cancel() {
    let stack = proxy_stack(|_| {}).await;
    let client = connect(&stack).await;
    client
        .prepare("select * from no_such_table")
        .await
        .expect_err("no such table");
    let statement = client
        .prepare("select $1::int4 + 1")
        .await
        .expect("prepare");
    client
        .batch_execute("SET extra_float_digits = 2")
        .await
        .expect("set");
    assert_eq!(cancel_sleep(&client).await, "57014");
    session_was_built_again(&client, &statement, "2").await;
}

/// A `SET` inside a transaction is undone by its ROLLBACK: the sidecar cannot know it held
/// (nor, inside one, that it will), so it does not build it again after a cancel closed the
/// connection; the client is told its setting went with the connection.
#[tokio::test]
async fn a_set_inside_a_transaction_is_not_built_again() {
    let stack = proxy_stack(|_| {}).await;
    let client = connect(&stack).await;
    client.batch_execute("begin").await.expect("begin");
    client
        .batch_execute("SET search_path = nowhere")
        .await
        .expect("set");
    client.batch_execute("rollback").await.expect("rollback");
    cancel_ends_the_session(&client, "setting").await;
}

#[tokio::test]
async fn psql_ctrl_c_cancels_through_the_sidecar() {
    if Command::new("psql").arg("--version").output().is_err() {
        eprintln!("SKIPPED psql_ctrl_c_cancels_through_the_sidecar: psql is not installed");
        return;
    }
    for adjust in [transaction_mode as fn(&mut EndpointSettings), |_| {}] {
        let stack = proxy_stack(adjust).await;
        let port = stack.sidecar.addr().port();
        let marker = support::unique_name("psql");
        let child = Command::new("psql")
            .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!("select pg_sleep(10) -- {marker}"))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        support::shared_cluster().until_running(&marker).await;
        let output = tokio::task::spawn_blocking(move || {
            let sent = Instant::now();
            let killed = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .expect("kill -INT");
            assert!(killed.success());
            let output = child.wait_with_output().expect("psql output");
            (output, sent.elapsed())
        })
        .await
        .expect("join");
        let (output, took) = output;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("canceling statement due to user request"),
            "{stderr}"
        );
        assert!(
            took < Duration::from_secs(2),
            "psql ended {took:?} after Ctrl-C"
        );
    }
}

#[tokio::test]
async fn a_failed_transaction_in_the_extended_protocol() {
    let stack = proxy_stack(transaction_mode).await;
    let client = connect(&stack).await;
    // Prepared before the transaction, as drivers with statement caches do.
    let rollback = client.prepare("rollback").await.expect("prepare rollback");
    for end in 0..2 {
        client.batch_execute("begin").await.expect("begin");
        assert_eq!(cancel_sleep(&client).await, "57014");
        let error = client
            .query("select $1::int4", &[&1i32])
            .await
            .expect_err("the transaction failed");
        assert_eq!(db_error(&error).0, "25P02");
        if end == 0 {
            // Parse + Describe + Bind + Execute of a new statement that ends it.
            client.execute("rollback", &[]).await.expect("rollback");
        } else {
            client
                .execute(&rollback, &[])
                .await
                .expect("rollback prepared earlier");
        }
        let value: i32 = client
            .query_one("select $1::int4 + 1", &[&41i32])
            .await
            .expect("a new transaction, on another connection")
            .get(0);
        assert_eq!(value, 42);
    }
}

#[tokio::test]
async fn two_queries_in_flight_get_fatal() {
    let stack = proxy_stack(transaction_mode).await;
    let client = connect(&stack).await;
    let token = client.cancel_token();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.expect("send cancel");
    };
    let (first, second, ()) = tokio::join!(
        client.simple_query("select pg_sleep(10)"),
        client.simple_query("select 1"),
        cancel
    );
    let error = first.expect_err("cancelled");
    let db = error.as_db_error().expect("a server error");
    assert_eq!((db.code().code(), db.severity()), ("57014", "FATAL"));
    assert!(
        second.is_err(),
        "the second query has no answer to wait for"
    );
}

#[tokio::test]
async fn a_transaction_begun_in_the_cancelled_batch_is_failed() {
    let stack = proxy_stack(|_| {}).await;
    let client = connect(&stack).await;
    let token = client.cancel_token();
    let query = client.simple_query("begin; select pg_sleep(10)");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.expect("send cancel");
    };
    let (result, ()) = tokio::join!(query, cancel);
    assert_eq!(db_error(&result.expect_err("cancelled")).0, "57014");
    let error = client
        .simple_query("select 1")
        .await
        .expect_err("inside the failed transaction the batch began");
    assert_eq!(db_error(&error).0, "25P02");
    client.batch_execute("rollback").await.expect("rollback");
    assert_eq!(
        simple_value(&client, "select 1").await.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_cancel_for_an_idle_connection_is_dropped() {
    let stack = proxy_stack(transaction_mode).await;
    let client = connect(&stack).await;
    client.batch_execute("begin").await.expect("begin");
    client
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("send cancel");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Idle in the transaction: PostgreSQL ignores the cancel, and so does the sidecar.
    client
        .batch_execute("select 1; commit")
        .await
        .expect("the transaction is intact");
}
