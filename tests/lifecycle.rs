//! The binary's life in a container: the admin endpoint (readiness that follows the upstream,
//! Prometheus metrics after real traffic), the `healthcheck`, `wait` and `shutdown`
//! subcommands, and graceful shutdown on SIGTERM (transactions finish; idle and new clients,
//! and statements waiting for a busy pool, get 57P01; exit 0 within the grace period).

mod harness;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::binary::{KillOnDrop, free_port, sidecar_command, wait_for_port};
use harness::db_error;
use harness::scrape::{scrape, value};
use support::{DEFAULT_ENDPOINT_HOST, TEST_AKID, TEST_SECRET, TestPki, shared_cluster};
use tokio_postgres::NoTls;

/// The binary dialling `upstream_addr` (for the default endpoint name), with static
/// credentials, on a free port.
fn spawn_sidecar(
    upstream_addr: &str,
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
            upstream_addr,
            "--ca-file",
            pki.ca_file().to_str().expect("utf-8 path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
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

/// SIGTERM in `pool_mode`, with `--exit-code-on-signal exit_code`, on `threads` runtime
/// threads (1: one event loop; more: tokio's work-stealing pool).
async fn sigterm_lets_the_transaction_commit(pool_mode: &str, exit_code: u8, threads: u8) {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let cluster = shared_cluster();
    let table = support::unique_name("drain");
    cluster.exec(&format!("create table {table} (n int)")).await;
    let home = tempfile::tempdir().expect("tempdir");
    let (mut sidecar, port) = spawn_sidecar(
        &emulator.addr.to_string(),
        &pki,
        home.path(),
        &[
            "--pool-mode",
            pool_mode,
            "--shutdown-grace",
            "20s",
            "--admin-listen",
            "off",
            "--exit-code-on-signal",
            &exit_code.to_string(),
            "--worker-threads",
            &threads.to_string(),
            "--pool-size",
            "1",
        ],
    );
    wait_for_port(port, &mut sidecar.0).await;

    let (busy, _busy_connection) = client(port).await.expect("busy client");
    let (_idle, idle_connection) = client(port).await.expect("idle client");
    let (waiting, _waiting_connection) = client(port).await.expect("waiting client");
    busy.batch_execute(&format!("begin; insert into {table} values (1)"))
        .await
        .expect("transaction starts");
    // Waits for the pool's one connection, which the transaction holds.
    let waiting = tokio::spawn(async move { waiting.simple_query("select 1").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    sidecar.signal("TERM");

    // The idle client is told why it is closed.
    let ended = tokio::time::timeout(Duration::from_secs(10), idle_connection)
        .await
        .expect("the idle client is closed promptly")
        .expect("connection task");
    let error = ended.expect_err("closed with an error");
    assert_eq!(db_error(&error).0, "57P01", "{error}");

    // So is the statement waiting for the busy pool: it never ran.
    let refused = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting statement is refused promptly")
        .expect("waiting task")
        .expect_err("refused");
    assert_eq!(db_error(&refused).0, "57P01", "{refused}");

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
    assert_eq!(
        status.code(),
        Some(i32::from(exit_code)),
        "exit status {status}"
    );
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
    sigterm_lets_the_transaction_commit("session", 0, 1).await;
}

#[tokio::test]
async fn sigterm_in_transaction_mode_lets_the_transaction_commit() {
    // A clean drain exits with --exit-code-on-signal; two threads: the work-stealing runtime.
    sigterm_lets_the_transaction_commit("transaction", 3, 2).await;
}

#[tokio::test]
async fn grace_period_over_closes_what_is_left_with_57p01_and_exits_1() {
    for pool_mode in ["session", "transaction"] {
        let pki = TestPki::new();
        let emulator = support::emulator_for_cluster(&pki).await;
        let home = tempfile::tempdir().expect("tempdir");
        let (mut sidecar, port) = spawn_sidecar(
            &emulator.addr.to_string(),
            &pki,
            home.path(),
            &[
                "--shutdown-grace",
                "1s",
                "--admin-listen",
                "off",
                "--pool-mode",
                pool_mode,
            ],
        );
        wait_for_port(port, &mut sidecar.0).await;
        let (idle_in_transaction, idle_connection) = client(port).await.expect("client");
        idle_in_transaction
            .batch_execute("begin")
            .await
            .expect("begin");
        let (running, _running_connection) = client(port).await.expect("client");
        let marker = support::unique_name("grace");
        let sleep = format!("select pg_sleep(30) -- {marker}");
        let statement = tokio::spawn(async move { running.simple_query(&sleep).await });
        shared_cluster().until_running(&marker).await;

        sidecar.signal("TERM");
        let status = sidecar.exit_within(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(1), "a forced end is not a clean exit");
        // Told why, as PostgreSQL's fast shutdown tells it, not just closed.
        let ended = tokio::time::timeout(Duration::from_secs(5), idle_connection)
            .await
            .expect("the client sees the close")
            .expect("connection task")
            .expect_err("the open transaction's connection was closed");
        let (code, message, hint) = db_error(&ended);
        assert_eq!(code, "57P01", "{pool_mode}: {message}");
        // Not the plain "shutting down, reconnect": its transaction did not commit.
        assert!(
            hint.as_deref().is_some_and(|h| h.contains("rolled back")),
            "{pool_mode}: {hint:?}"
        );
        let failed = statement
            .await
            .expect("statement task")
            .expect_err("the running statement was ended");
        let (code, _, hint) = db_error(&failed);
        assert_eq!(code, "57P01", "{pool_mode}");
        assert!(hint.is_some_and(|h| h.contains("may or may not have completed")));
    }
}

/// Runs a subcommand of the binary against the admin endpoint; (exit code, stdout).
async fn subcommand(home: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let output = tokio::process::Command::from(sidecar_command(home))
        .args(args)
        .output()
        .await
        .expect("run the subcommand");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

/// Relays 127.0.0.1:`port` to `target` from now on (the upstream "comes up").
async fn relay(port: u16, target: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the relay");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn readiness_follows_the_upstream_and_metrics_follow_the_traffic() {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    // The sidecar dials a port where nothing listens yet.
    let upstream_port = free_port();
    let admin_port = free_port();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let (mut sidecar, port) = spawn_sidecar(
        &format!("127.0.0.1:{upstream_port}"),
        &pki,
        home.path(),
        &[
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
            "--connect-timeout",
            "1s",
            "--min-shutdown-delay",
            "5s",
        ],
    );
    wait_for_port(admin_port, &mut sidecar.0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let startup = rds_iam_sidecar::ops::admin_client::request(
            &admin,
            "GET",
            "/startup",
            Duration::from_secs(5),
        )
        .await
        .expect("GET /startup");
        if startup.status == 200 {
            break;
        }
        assert_eq!(startup.status, 503, "{}", startup.body);
        assert!(Instant::now() < deadline, "not started: {}", startup.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Alive and started, not ready: the upstream is unreachable.
    let (code, line) = subcommand(home.path(), &["healthcheck", "--admin", &admin]).await;
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.contains("not ready") && line.contains("upstream"),
        "{line}"
    );
    let (code, line) = subcommand(home.path(), &["healthcheck", "--live", "--admin", &admin]).await;
    assert_eq!(code, Some(0), "{line}");
    let startup = rds_iam_sidecar::ops::admin_client::request(
        &admin,
        "GET",
        "/startup",
        Duration::from_secs(5),
    )
    .await
    .expect("GET /startup");
    assert_eq!(startup.status, 200);
    let (code, line) =
        subcommand(home.path(), &["wait", "--admin", &admin, "--timeout", "1s"]).await;
    assert_eq!(code, Some(1), "wait gives up: {line}");

    // The upstream comes up: `wait` returns once /readyz says so.
    let _relay = relay(upstream_port, emulator.addr).await;
    let (code, line) = subcommand(
        home.path(),
        &["wait", "--admin", &admin, "--timeout", "20s"],
    )
    .await;
    assert_eq!(code, Some(0), "{line}");
    let (code, line) = subcommand(home.path(), &["healthcheck", "--admin", &admin]).await;
    assert_eq!((code, line.as_str()), (Some(0), "ready"));

    // Real traffic: two clients one after the other (one upstream login), a failed login.
    for _ in 0..2 {
        let (client, _connection) = client(port).await.expect("client");
        let row = client.query_one("select 6 * 7", &[]).await.expect("query");
        assert_eq!(row.get::<_, i32>(0), 42);
    }
    let (held, _held_connection) = client(port).await.expect("client");
    held.batch_execute("begin; select 1; commit")
        .await
        .expect("transaction");
    let missing = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=no_such_database"),
        NoTls,
    )
    .await;
    let Err(missing) = missing else {
        panic!("a missing database fails the login");
    };
    assert_eq!(db_error(&missing).0, "3D000");

    let metrics = scrape(&admin).await;
    let get = |name: &str, labels: &[(&str, &str)]| value(&metrics, name, labels);
    // Session mode: the second client may come before the first one's connection is reset
    // and back in the pool, so one or two logins; the missing database is a server error.
    let ok = get("rds_iam_sidecar_upstream_logins_total", &[("result", "ok")]).unwrap_or(0.0);
    assert!(ok == 1.0 || ok == 2.0, "{ok} successful logins");
    assert_eq!(
        get(
            "rds_iam_sidecar_upstream_logins_total",
            &[("result", "server_error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get("rds_iam_sidecar_iam_tokens_signed_total", &[]),
        Some(ok + 1.0),
        "one token per login attempt"
    );
    assert_eq!(
        emulator.accepted_logins().len() as f64,
        ok + 1.0,
        "the emulator saw every token"
    );
    assert!(get("rds_iam_sidecar_client_connections_accepted_total", &[]) >= Some(4.0));
    assert_eq!(
        get("rds_iam_sidecar_client_connections", &[("state", "idle")]),
        Some(1.0),
        "the held client"
    );
    assert_eq!(
        get("rds_iam_sidecar_client_connections", &[("state", "active")]),
        Some(0.0)
    );
    assert_eq!(
        get(
            "rds_iam_sidecar_auth_failures_total",
            &[("sqlstate", "3D000")]
        ),
        Some(1.0)
    );
    assert!(get("rds_iam_sidecar_transactions_total", &[]) >= Some(3.0));
    assert!(
        get(
            "rds_iam_sidecar_bytes_forwarded_total",
            &[("direction", "to_client")]
        ) > Some(0.0)
    );
    assert!(
        get(
            "rds_iam_sidecar_bytes_forwarded_total",
            &[("direction", "to_server")]
        ) > Some(0.0)
    );
    assert_eq!(
        get(
            "rds_iam_sidecar_upstream_connections",
            &[("state", "in_use")]
        ),
        Some(1.0)
    );
    assert!(
        get(
            "rds_iam_sidecar_credential_refreshes_total",
            &[("result", "ok")]
        ) >= Some(1.0)
    );
    assert_eq!(
        get(
            "rds_iam_sidecar_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(
        metrics
            .samples
            .iter()
            .any(|s| s.metric == "rds_iam_sidecar_upstream_login_duration_seconds"),
        "login latency histogram"
    );
    for sample in &metrics.samples {
        for (label, value) in sample.labels.iter() {
            assert!(
                !value.contains("127.0.0.1") && !value.contains(TEST_SECRET),
                "{}: label {label}={value}",
                sample.metric
            );
        }
    }

    // `shutdown`: readiness fails at once, clients are still served during
    // --min-shutdown-delay, then the drain closes the held client and the process exits 0.
    let (code, line) = subcommand(home.path(), &["shutdown", "--admin", &admin]).await;
    assert_eq!(code, Some(0), "{line}");
    let (code, line) = subcommand(home.path(), &["healthcheck", "--admin", &admin]).await;
    assert_eq!(code, Some(1));
    assert!(line.contains("shutting down"), "{line}");
    let (late, _late_connection) = client(port).await.expect("served during the delay");
    late.simple_query("select 1")
        .await
        .expect("query during the delay");
    drop(late);
    let status = sidecar.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    let error = held
        .simple_query("select 1")
        .await
        .expect_err("closed by the drain");
    assert!(
        error.is_closed() || db_error(&error).0 == "57P01",
        "{error}"
    );
}
