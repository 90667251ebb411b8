//! The binary's life in a container: graceful shutdown on SIGTERM (transactions finish, idle
//! and new clients get 57P01, exit 0 within the grace period).

mod harness;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::binary::{KillOnDrop, free_port, sidecar_command, wait_for_port};
use harness::db_error;
use support::{DEFAULT_ENDPOINT_HOST, Emulator, TEST_AKID, TEST_SECRET, TestPki, shared_cluster};
use tokio_postgres::NoTls;

/// The binary in front of `emulator`, with static credentials, on a free port.
fn spawn_sidecar(
    emulator: &Emulator,
    pki: &TestPki,
    home: &std::path::Path,
    extra: &[&str],
) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = sidecar_command(home)
        .args([
            "--upstream",
            &format!("{DEFAULT_ENDPOINT_HOST}:5432"),
            "--upstream-addr",
            &emulator.addr.to_string(),
            "--ca-file",
            pki.ca_file().to_str().expect("utf-8 path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
        ])
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", TEST_AKID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map(KillOnDrop)
        .expect("spawn sidecar");
    (child, port)
}

/// A client and the outcome of its connection task (how the sidecar ended it).
async fn client(
    port: u16,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        NoTls,
    )
    .await?;
    Ok((client, tokio::spawn(connection)))
}

async fn sigterm_lets_the_transaction_commit(pool_mode: &str) {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let cluster = shared_cluster();
    let table = support::unique_name("drain");
    cluster.exec(&format!("create table {table} (n int)")).await;
    let home = tempfile::tempdir().expect("tempdir");
    let (mut sidecar, port) = spawn_sidecar(
        &emulator,
        &pki,
        home.path(),
        &["--pool-mode", pool_mode, "--shutdown-grace", "20s"],
    );
    wait_for_port(port, &mut sidecar.0).await;

    let (busy, _busy_connection) = client(port).await.expect("busy client");
    let (_idle, idle_connection) = client(port).await.expect("idle client");
    busy.batch_execute(&format!("begin; insert into {table} values (1)"))
        .await
        .expect("transaction starts");

    let signalled = Instant::now();
    sidecar.signal("TERM");

    // The idle client is told why it is closed.
    let ended = tokio::time::timeout(Duration::from_secs(10), idle_connection)
        .await
        .expect("the idle client is closed promptly")
        .expect("connection task");
    let error = ended.expect_err("closed with an error");
    assert_eq!(db_error(&error).0, "57P01", "{error}");

    // New clients are refused with 57P01 while the transaction runs.
    let Err(refused) = client(port).await else {
        panic!("a new client is refused");
    };
    assert_eq!(db_error(&refused).0, "57P01", "{refused}");

    // The transaction in flight goes on and commits.
    busy.batch_execute(&format!("insert into {table} values (2); commit"))
        .await
        .expect("the transaction finishes during the drain");

    let status = sidecar.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "exit well within the grace period"
    );
    let rows = cluster
        .admin_client()
        .await
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .expect("count");
    assert_eq!(rows.get::<_, i64>(0), 2, "both rows committed");
}

#[tokio::test]
async fn sigterm_in_session_mode_lets_the_transaction_commit() {
    sigterm_lets_the_transaction_commit("session").await;
}

#[tokio::test]
async fn sigterm_in_transaction_mode_lets_the_transaction_commit() {
    sigterm_lets_the_transaction_commit("transaction").await;
}

#[tokio::test]
async fn grace_period_over_closes_what_is_left_and_exits_1() {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    let (mut sidecar, port) =
        spawn_sidecar(&emulator, &pki, home.path(), &["--shutdown-grace", "1s"]);
    wait_for_port(port, &mut sidecar.0).await;
    let (stuck, stuck_connection) = client(port).await.expect("client");
    stuck.batch_execute("begin").await.expect("begin");

    sidecar.signal("TERM");
    let status = sidecar.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "a forced end is not a clean exit");
    let ended = tokio::time::timeout(Duration::from_secs(5), stuck_connection)
        .await
        .expect("the client sees the close")
        .expect("connection task");
    assert!(
        ended.is_err(),
        "the open transaction's connection was closed"
    );
}
