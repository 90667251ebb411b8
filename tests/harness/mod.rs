//! The sidecar under test, wired to the RDS Proxy emulator and the shared PostgreSQL: builds a
//! [`Stack`] (PKI + emulator + in-process sidecar) and connects tokio-postgres clients to it.
#![allow(dead_code)]

pub mod binary;
pub mod scrape;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use rds_iam_sidecar::iam::credentials::CredentialCache;
use rds_iam_sidecar::iam::region::RegionSource;
use rds_iam_sidecar::settings::{EndpointSettings, Settings};
use rds_iam_sidecar::upstream::kind::UpstreamKind;
use rds_iam_sidecar::upstream::{Endpoint, UpstreamAuth, UpstreamSettings};
use rds_iam_sidecar::{RunningSidecar, start};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::support::{
    DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, Emulator, FaultRelay, TEST_AKID, TEST_SECRET, TestPki,
};

/// A complete test deployment.
pub struct Stack {
    pub pki: TestPki,
    pub emulator: Emulator,
    pub sidecar: RunningSidecar,
}

/// Static test credentials behind the sidecar's real cache.
pub fn credentials(akid: &str, secret: &str) -> Arc<CredentialCache> {
    Arc::new(CredentialCache::new(Credentials::new(
        akid, secret, None, None, "test",
    )))
}

/// The sidecar's settings for an emulator's endpoint: IAM, verify-full against the test CA.
pub fn config_for(emulator: &Emulator, pki: &TestPki) -> EndpointSettings {
    config_for_host(emulator, pki, DEFAULT_ENDPOINT_HOST)
}

/// Like [`config_for`], for an emulator whose certificate names `host`.
pub fn config_for_host(emulator: &Emulator, pki: &TestPki, host: &str) -> EndpointSettings {
    let mut upstream = UpstreamSettings::new(
        Endpoint {
            host: host.to_owned(),
            port: 5432,
        },
        UpstreamAuth::Iam {
            region: DEFAULT_REGION.to_owned(),
            region_source: RegionSource::EndpointName,
        },
    );
    upstream.upstream_addr = Some(Endpoint {
        host: "127.0.0.1".to_owned(),
        port: emulator.addr.port(),
    });
    upstream.ca_file = Some(pki.ca_file());
    upstream.connect_timeout = Duration::from_secs(5);
    EndpointSettings::new(upstream)
}

/// Emulator + sidecar with the default configuration and valid credentials.
pub async fn stack() -> Stack {
    stack_with(|_| {}, credentials(TEST_AKID, TEST_SECRET)).await
}

/// Emulator + sidecar, with the endpoint's settings adjusted by `adjust`.
pub async fn stack_with(
    adjust: impl FnOnce(&mut EndpointSettings),
    credentials: Arc<CredentialCache>,
) -> Stack {
    stack_with_settings(|settings| adjust(&mut settings.endpoints[0]), credentials).await
}

/// Emulator + sidecar, with the whole settings adjusted by `adjust`.
pub async fn stack_with_settings(
    adjust: impl FnOnce(&mut Settings),
    credentials: Arc<CredentialCache>,
) -> Stack {
    let pki = TestPki::new();
    let emulator = crate::support::emulator_for_cluster(&pki).await;
    stack_behind(pki, emulator, adjust, credentials).await
}

/// A plain PostgreSQL behind the emulator's TLS and IAM front (BackendKeyData, cancels, any
/// startup parameter), with the sidecar told so (`--upstream-kind postgres`); the endpoint's
/// settings adjusted by `adjust`.
pub async fn plain_stack_with(adjust: impl FnOnce(&mut EndpointSettings)) -> Stack {
    let pki = TestPki::new();
    let emulator = crate::support::plain_emulator_for_cluster(&pki).await;
    let plain = |settings: &mut Settings| {
        let endpoint = &mut settings.endpoints[0];
        told_plain_postgres(endpoint);
        adjust(endpoint);
    };
    stack_behind(pki, emulator, plain, credentials(TEST_AKID, TEST_SECRET)).await
}

/// The sidecar reaching the emulator (RDS Proxy-like, or a plain PostgreSQL with `plain`)
/// through a [`FaultRelay`] the test drives; the endpoint's settings adjusted by `adjust`.
pub async fn stack_through_relay(
    plain: bool,
    adjust: impl FnOnce(&mut EndpointSettings),
) -> (Stack, FaultRelay) {
    let pki = TestPki::new();
    let emulator = if plain {
        crate::support::plain_emulator_for_cluster(&pki).await
    } else {
        crate::support::emulator_for_cluster(&pki).await
    };
    let relay = FaultRelay::start(emulator.addr).await;
    let relay_port = relay.addr.port();
    let through_relay = |settings: &mut Settings| {
        let endpoint = &mut settings.endpoints[0];
        endpoint.upstream.upstream_addr = Some(Endpoint {
            host: "127.0.0.1".to_owned(),
            port: relay_port,
        });
        if plain {
            told_plain_postgres(endpoint);
        }
        adjust(endpoint);
    };
    let stack = stack_behind(
        pki,
        emulator,
        through_relay,
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    (stack, relay)
}

/// `--upstream-kind postgres`, with its default reset query.
fn told_plain_postgres(endpoint: &mut EndpointSettings) {
    endpoint.upstream.kind = UpstreamKind::Postgres;
    endpoint.pool.reset_query = Some("DISCARD ALL".to_owned());
}

/// The sidecar in front of `emulator`, its settings adjusted by `adjust`.
pub async fn stack_behind(
    pki: TestPki,
    emulator: Emulator,
    adjust: impl FnOnce(&mut Settings),
    credentials: Arc<CredentialCache>,
) -> Stack {
    let mut settings = Settings::new(vec![config_for(&emulator, &pki)]);
    adjust(&mut settings);
    let sidecar = start(settings, Some(credentials))
        .await
        .expect("sidecar starts");
    Stack {
        pki,
        emulator,
        sidecar,
    }
}

/// A libpq-style connection string for the sidecar.
pub fn conn_string(stack: &Stack, user: &str, database: &str) -> String {
    let addr = stack.sidecar.addr();
    format!(
        "host={} port={} user={user} dbname={database} connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

/// A tokio-postgres client through the sidecar, as superuser `postgres`.
pub async fn connect(stack: &Stack) -> Client {
    try_connect(stack, "postgres", "postgres")
        .await
        .expect("connect through the sidecar")
}

/// A tokio-postgres client through the sidecar; notifications are dropped.
pub async fn try_connect(
    stack: &Stack,
    user: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conn_string(stack, user, database), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A client whose notifications arrive on the returned channel.
pub async fn connect_with_notifications(
    stack: &Stack,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    let (client, mut connection) =
        tokio_postgres::connect(&conn_string(stack, "postgres", "postgres"), NoTls)
            .await
            .expect("connect through the sidecar");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// Runs pgbench through the sidecar with `args` and a script file holding `script`; returns
/// its standard output (the run must succeed). `None` when pgbench is not installed.
pub async fn pgbench(stack: &Stack, args: &[&str], script: &str) -> Option<String> {
    use std::process::Command;
    if Command::new("pgbench").arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("script");
    let port = stack.sidecar.addr().port().to_string();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("pgbench")
            .args(&args)
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-f"])
            .arg(&file)
            .arg("postgres")
            .output()
            .expect("run pgbench")
    })
    .await
    .expect("join");
    assert!(output.status.success(), "pgbench {output:?}");
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `pgbench -n -C` (a new connection per transaction) of `select 1` through the sidecar
/// with `clients` clients and `threads` threads, `each` transactions per client: a fixed amount
/// of work, so that a slow machine takes longer rather than fails, while a stall fails it
/// (within 90 s). Every transaction must succeed. `false` when pgbench is not installed.
pub async fn pgbench_connect_per_transaction(
    stack: &Stack,
    clients: u32,
    threads: u32,
    each: u32,
) -> bool {
    let [clients_arg, threads, each_arg] = [clients, threads, each].map(|n| n.to_string());
    let args = [
        "-n",
        "-C",
        "-c",
        &clients_arg,
        "-j",
        &threads,
        "-t",
        &each_arg,
    ];
    let run = pgbench(stack, &args, "select 1;\n");
    let Some(out) = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("pgbench finished: no connection stalled")
    else {
        return false;
    };
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let transactions: Option<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.trim().split('/').next()?.parse().ok());
    assert_eq!(transactions, Some(u64::from(clients * each)), "{out}");
    true
}

/// Waits until `check` holds (up to 10 s); for state that settles asynchronously.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of the first row of a simple query (no prepared statement is left).
pub async fn simple_value(client: &Client, sql: &str) -> Option<String> {
    let messages = client.simple_query(sql).await.expect(sql);
    messages.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The backend's pid, by a simple query (no prepared statement is left).
pub async fn backend_pid(client: &Client) -> String {
    simple_value(client, "select pg_backend_pid()")
        .await
        .expect("pid")
}

/// A new table named from `prefix` with `columns`, made by a client of its own that then
/// leaves: DDL may have made a temporary table, and a session-mode connection left with one is
/// closed, not pooled, behind RDS Proxy.
pub async fn table_made_apart(stack: &Stack, prefix: &str, columns: &str) -> String {
    let table = crate::support::unique_name(prefix);
    connect(stack)
        .await
        .batch_execute(&format!("create table {table} ({columns})"))
        .await
        .expect("create");
    table
}

/// The SQLSTATE and message of a failed connect or query.
pub fn db_error(error: &tokio_postgres::Error) -> (String, String, Option<String>) {
    match error.as_db_error() {
        Some(db) => (
            db.code().code().to_owned(),
            db.message().to_owned(),
            db.hint().map(str::to_owned),
        ),
        None => panic!("expected a server error, got: {error:?}"),
    }
}

/// Reads messages up to ReadyForQuery; panics on an ErrorResponse.
pub async fn read_until_ready(raw: &mut tokio::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    loop {
        let (tag, body) = crate::support::wire::read_message(raw)
            .await
            .expect("message");
        assert_ne!(
            tag,
            b'E',
            "error: {:?}",
            crate::support::wire::parse_error_fields(&body)
        );
        let done = tag == b'Z';
        messages.push((tag, body));
        if done {
            return messages;
        }
    }
}

/// Logs in with raw messages; returns the stream and the BackendKeyData (pid, secret).
pub async fn raw_login(stack: &Stack) -> (tokio::net::TcpStream, [u8; 8]) {
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    raw.write_all(&crate::support::wire::startup_message(&[
        ("user", "postgres"),
        ("database", "postgres"),
    ]))
    .await
    .expect("startup");
    let messages = read_until_ready(&mut raw).await;
    let key = messages
        .iter()
        .find(|(tag, _)| *tag == b'K')
        .and_then(|(_, body)| <[u8; 8]>::try_from(&body[..]).ok())
        .expect("BackendKeyData");
    (raw, key)
}
