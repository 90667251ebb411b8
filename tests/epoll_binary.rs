//! The binary on epoll, what ECS Fargate and the default seccomp profiles of Docker and
//! containerd give it (they refuse io_uring): its writes are held until the end of the turn
//! and sent together by `io_submit` (src/uring/outbox), which its start-up line says. Several
//! clients at once in each pool mode, each with results larger than a socket's buffers and
//! COPY both ways, every byte checked.

mod harness;
mod support;

use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt, pin_mut};
use harness::binary::{KillOnDrop, free_port, sidecar_command, wait_for_port};
use support::{DEFAULT_ENDPOINT_HOST, TEST_AKID, TEST_SECRET, TestPki, shared_cluster};
use tokio_postgres::NoTls;

/// Rows of the large result and of each COPY.
const ROWS: i64 = 20_000;

/// The binary on `--socket-io epoll` in `pool_mode`, dialling `upstream_addr`; its port, and
/// its start-up line's `io=` part once it logs it.
fn spawn_on_epoll(
    upstream_addr: &str,
    pki: &TestPki,
    home: &std::path::Path,
    pool_mode: &str,
) -> (KillOnDrop, u16, mpsc::Receiver<String>) {
    let port = free_port();
    let mut child = sidecar_command(home)
        .args([
            "--upstream",
            &format!("{DEFAULT_ENDPOINT_HOST}:5432"),
            "--upstream-addr",
            upstream_addr,
        ])
        .args(["--ca-file", pki.ca_file().to_str().expect("utf-8 path")])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
        ])
        .args([
            "--socket-io",
            "epoll",
            "--pool-mode",
            pool_mode,
            "--pool-size",
            "2",
        ])
        .env("AWS_ACCESS_KEY_ID", TEST_AKID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(KillOnDrop)
        .expect("spawn sidecar");
    let io = io_line(&mut child);
    (child, port, io)
}

/// Passes the child's log on to the test's and sends the `io=` part of its start-up line.
fn io_line(child: &mut KillOnDrop) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    let log = child.0.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(at) = line.find("io=") {
                let _ = sender.send(line[at..].to_owned());
            }
        }
    });
    receiver
}

/// One client's work: a large result, COPY into `table` and back out, all checked.
async fn one_client(port: u16, table: String, id: i64) {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        NoTls,
    )
    .await
    .expect("connect through the sidecar");
    tokio::spawn(connection);
    let wide = client
        .query(
            "select n, repeat('x', 500) from generate_series(1, $1::bigint) n",
            &[&ROWS],
        )
        .await
        .expect("a large result");
    assert_eq!(wide.len() as i64, ROWS);
    assert!(wide.iter().all(|row| row.get::<_, String>(1).len() == 500));
    let sink = client
        .copy_in(&format!("copy {table} (client, n) from stdin"))
        .await
        .expect("copy in");
    pin_mut!(sink);
    let lines: String = (1..=ROWS).map(|n| format!("{id}\t{n}\n")).collect();
    sink.send(bytes::Bytes::from(lines))
        .await
        .expect("copy data");
    assert_eq!(sink.finish().await.expect("copy in ends") as i64, ROWS);
    let stream = client
        .copy_out(&format!(
            "copy (select n from {table} where client = {id} order by n) to stdout"
        ))
        .await
        .expect("copy out");
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("copy out data"));
    }
    let expected: String = (1..=ROWS).map(|n| format!("{n}\n")).collect();
    assert_eq!(
        out,
        expected.as_bytes(),
        "client {id}'s rows came back whole and in order"
    );
}

async fn clients_at_once_on_epoll(pool_mode: &str) {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let cluster = shared_cluster();
    let table = support::unique_name("epoll");
    cluster
        .exec(&format!("create table {table} (client bigint, n bigint)"))
        .await;
    let home = tempfile::tempdir().expect("tempdir");
    let (mut sidecar, port, io) =
        spawn_on_epoll(&emulator.addr.to_string(), &pki, home.path(), pool_mode);
    wait_for_port(port, &mut sidecar.0).await;
    let io = io
        .recv_timeout(Duration::from_secs(10))
        .expect("the start-up line");
    assert!(
        io.contains("io=epoll (sends batched by io_submit)"),
        "the writes of a turn go in one io_submit: {io}"
    );
    let clients: Vec<_> = (1..=4)
        .map(|id| tokio::spawn(one_client(port, table.clone(), id)))
        .collect();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("each client's work ends within the bound")
            .expect("client task");
    }
    let total = cluster
        .admin_client()
        .await
        .query_one(&format!("select count(*), sum(n) from {table}"), &[])
        .await
        .expect("count");
    assert_eq!(total.get::<_, i64>(0), 4 * ROWS);
}

#[tokio::test]
async fn clients_at_once_on_epoll_in_transaction_mode() {
    clients_at_once_on_epoll("transaction").await;
}

#[tokio::test]
async fn clients_at_once_on_epoll_in_session_mode() {
    clients_at_once_on_epoll("session").await;
}
