//! Pooling: clients share a few upstream connections (counted as logins at the emulator), the
//! session reset leaves nothing behind, limits answer 53300, idle and old connections are
//! replaced, a connection the server killed never reaches a client, the login rate is capped,
//! and transaction mode attaches a connection per transaction.

mod harness;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{
    Stack, connect, credentials, db_error, eventually, plain_stack_with, stack_with,
    stack_with_settings, table_made_apart, try_connect,
};
use rds_iam_sidecar::frontend::cancel::CancelMode;
use rds_iam_sidecar::pool::{PoolKey, PoolMode};
use rds_iam_sidecar::settings::EndpointSettings;
use support::{TEST_AKID, TEST_SECRET, shared_cluster};

async fn pooled(adjust: impl FnOnce(&mut EndpointSettings)) -> Stack {
    stack_with(adjust, credentials(TEST_AKID, TEST_SECRET)).await
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

#[tokio::test]
async fn two_hundred_clients_share_five_connections() {
    let stack = Arc::new(pooled(|c| c.pool.size = 5).await);
    let tasks: Vec<_> = (0..200i64)
        .map(|i| {
            let stack = stack.clone();
            tokio::spawn(async move {
                let client = connect(&stack).await;
                let row = client
                    .query_one("select $1::int8 + 1", &[&i])
                    .await
                    .expect("query");
                row.get::<_, i64>(0)
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.expect("join"), i as i64 + 1);
    }
    let logins = stack.emulator.logins();
    assert!((1..=5).contains(&logins), "{logins} logins for 200 clients");
    let (idle, open) = stack
        .sidecar
        .pool_counts("postgres", "postgres")
        .expect("pool");
    assert!(open <= 5 && idle <= open, "idle {idle}, open {open}");
}

#[tokio::test]
async fn pgbench_connect_per_transaction_logs_in_at_most_pool_size_times() {
    let stack = pooled(|c| c.pool.size = 4).await;
    if !harness::pgbench_connect_per_transaction(&stack, 4, 1, 15).await {
        eprintln!("SKIPPED pgbench_connect_per_transaction: pgbench is not installed");
        return;
    }
    let logins = stack.emulator.logins();
    assert!(
        logins <= 5,
        "{logins} logins for 60 connections (pool size 4, plus pgbench's first)"
    );
}

#[tokio::test]
async fn session_reset_leaves_nothing_for_the_next_client() {
    // Against a PostgreSQL the connection is reset (against RDS Proxy it is closed: rds_proxy.rs).
    let stack = plain_stack_with(|c| c.pool.size = 1).await;
    let first = connect(&stack).await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute(
            "set statement_timeout = 4321; create temp table reset_probe (x int); \
             prepare reset_stmt as select 1; listen reset_channel;",
        )
        .await
        .expect("session state");
    drop(first);

    let second = connect(&stack).await;
    eventually_same_pid(&second, pid).await;
    let timeout: String = second
        .query_one("show statement_timeout", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(timeout, "0", "SET was reset");
    let error = second
        .simple_query("select * from reset_probe")
        .await
        .expect_err("temp table gone");
    assert_eq!(db_error(&error).0, "42P01");
    let error = second
        .simple_query("execute reset_stmt")
        .await
        .expect_err("prepared statement gone");
    assert_eq!(db_error(&error).0, "26000");
    let listening: i64 = second
        .query_one("select count(*) from pg_listening_channels()", &[])
        .await
        .expect("channels")
        .get(0);
    assert_eq!(listening, 0);
    assert_eq!(
        stack.emulator.logins(),
        1,
        "the same upstream connection served both"
    );
}

/// The pooled connection returns after the reset, which runs when the first client is gone.
async fn eventually_same_pid(client: &tokio_postgres::Client, pid: i32) {
    assert_eq!(
        backend_pid(client).await,
        pid,
        "the second client got the same connection"
    );
}

#[tokio::test]
async fn an_abandoned_transaction_is_never_handed_on() {
    let stack = pooled(|c| c.pool.size = 1).await;
    let table = table_made_apart(&stack, "abandoned", "x int").await;

    let first = connect(&stack).await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute(&format!("begin; insert into {table} values (1)"))
        .await
        .expect("open transaction");
    drop(first); // leaves without COMMIT or ROLLBACK

    let second = connect(&stack).await;
    assert_ne!(
        backend_pid(&second).await,
        pid,
        "the connection in a transaction was closed"
    );
    let count: i64 = second
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
    let status: String = second
        .query_one("select current_setting('transaction_isolation')", &[])
        .await
        .expect("query outside a transaction")
        .get(0);
    assert!(!status.is_empty());
    second
        .batch_execute(&format!("drop table {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn exhausted_pool_answers_53300_after_the_pool_timeout() {
    let stack = pooled(|c| {
        c.pool.size = 1;
        c.pool.timeout = Duration::from_millis(500);
    })
    .await;
    let holder = connect(&stack).await;
    holder.simple_query("select 1").await.expect("query");
    // The login is answered at once; the first query waits for a connection.
    let waiting = try_connect(&stack, "postgres", "postgres")
        .await
        .expect("a login never waits for a busy pool");
    let started = Instant::now();
    let error = waiting
        .simple_query("select 1")
        .await
        .expect_err("no free connection");
    let (code, message, hint) = db_error(&error);
    assert_eq!(code, "53300");
    assert!(
        message.contains("postgres@postgres"),
        "names the pool: {message}"
    );
    assert!(hint.is_some_and(|h| h.contains("--pool-size")));
    assert!(started.elapsed() >= Duration::from_millis(500));
    drop(holder);
    // Once the holder left, clients are served again.
    eventually_connects(&stack).await;
}

async fn eventually_connects(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(stack, "postgres", "postgres").await {
            Ok(client) => {
                client.simple_query("select 1").await.expect("query");
                return;
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "still failing: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn too_many_clients_get_53300() {
    let stack = pooled(|c| c.frontend.max_client_connections = 2).await;
    let a = connect(&stack).await;
    let b = connect(&stack).await;
    let error = try_connect(&stack, "postgres", "postgres")
        .await
        .expect_err("third client refused");
    let (code, message, _) = db_error(&error);
    assert_eq!(code, "53300");
    assert!(message.contains("too many clients"), "{message}");
    a.simple_query("select 1").await.expect("a still works");
    b.simple_query("select 1").await.expect("b still works");
}

#[tokio::test]
async fn warm_pools_log_in_at_start_and_serve_the_first_clients() {
    // tokio-postgres sends client_encoding=UTF8: its clients' pool is this one.
    let warm = PoolKey::parse_spec("postgres@postgres?client_encoding=UTF8", None).expect("spec");
    let other =
        PoolKey::parse_spec("postgres@postgres?application_name=batch", None).expect("spec");
    let stack = pooled(|c| {
        c.pool.min_idle = 2;
        // Short, so that the warm-up ends far from the first upkeep (5 s), which would open
        // spares again while the two clients hold theirs.
        c.pool.warm_up_spread = Duration::from_millis(200);
        c.warm_pools = vec![warm, other];
    })
    .await;
    eventually("both pools opened before any client came", || {
        stack.sidecar.pool_counts("postgres", "postgres") == Some((4, 4))
    })
    .await;
    assert_eq!(stack.emulator.logins(), 4);
    let (a, b) = tokio::join!(connect(&stack), connect(&stack));
    let pid_a = backend_pid(&a).await;
    assert_ne!(pid_a, backend_pid(&b).await);
    assert_eq!(
        stack.emulator.logins(),
        4,
        "the clients took warm connections"
    );
    drop((a, b));
    // Kept at --min-idle from then on, like any pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.emulator.logins(), 4);
}

#[tokio::test]
async fn idle_connections_are_retired_and_replaced() {
    let stack = pooled(|c| c.pool.idle_timeout = Duration::from_millis(300)).await;
    let client = connect(&stack).await;
    let pid = backend_pid(&client).await;
    drop(client);
    eventually("the idle connection is retired", || {
        stack.sidecar.pool_counts("postgres", "postgres") == Some((0, 0))
    })
    .await;
    // Closed saying goodbye: a dropped socket makes PostgreSQL log every retirement.
    eventually("the retired connection said Terminate", || {
        stack.emulator.terminates() == 1
    })
    .await;
    let client = connect(&stack).await;
    assert_ne!(backend_pid(&client).await, pid);
    assert_eq!(stack.emulator.logins(), 2);
}

#[tokio::test]
async fn connections_past_their_lifetime_are_replaced() {
    let stack = pooled(|c| c.pool.max_lifetime = Duration::from_millis(400)).await;
    let client = connect(&stack).await;
    let pid = backend_pid(&client).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(client); // past its lifetime: closed instead of pooled
    let client = connect(&stack).await;
    assert_ne!(backend_pid(&client).await, pid);
    assert_eq!(stack.emulator.logins(), 2);
    eventually("the expired connection said Terminate", || {
        stack.emulator.terminates() == 1
    })
    .await;
}

#[tokio::test]
async fn a_connection_killed_while_idle_never_reaches_a_client() {
    let stack = pooled(|c| c.pool.size = 2).await;
    let client = connect(&stack).await;
    let pid = backend_pid(&client).await;
    drop(client);
    eventually("the connection is back in the pool", || {
        stack.sidecar.pool_counts("postgres", "postgres") == Some((1, 1))
    })
    .await;
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("cluster");
    let admin = cluster.admin_client().await;
    let killed: bool = admin
        .query_one("select pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);
    // The emulator has seen the backend go and closed its side (a connection killed in the
    // instant before a checkout is a race no pooler wins).
    eventually("the emulator relays the close", || {
        stack.emulator.active() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = connect(&stack).await;
    let value: i32 = client
        .query_one("select 5", &[])
        .await
        .expect("the next client works")
        .get(0);
    assert_eq!(value, 5);
    assert_ne!(backend_pid(&client).await, pid);
    assert_eq!(stack.emulator.logins(), 2);
}

#[tokio::test]
async fn the_login_rate_limit_holds() {
    let stack = Arc::new(
        stack_with_settings(
            |s| {
                s.endpoints[0].pool.size = 10;
                s.max_connect_rate = 2;
            },
            credentials(TEST_AKID, TEST_SECRET),
        )
        .await,
    );
    let (release, _) = tokio::sync::broadcast::channel::<()>(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let stack = stack.clone();
            let mut hold = release.subscribe();
            tokio::spawn(async move {
                let client = connect(&stack).await;
                client.simple_query("select 1").await.expect("query");
                let _ = hold.recv().await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let early = stack.emulator.logins();
    assert!(
        early <= 4,
        "{early} logins in the first 0.7 s at 2/s with a burst of 2"
    );
    eventually("all six logged in", || stack.emulator.logins() == 6).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "4 logins beyond the burst take 2 s at 2/s"
    );
    let _ = release.send(());
    for task in tasks {
        task.await.expect("join");
    }
}

/// A new client runs `select pg_sleep(30)`, cancels it after 300 ms with its cancel token, and
/// returns the SQLSTATE the query ended with (within 10 s).
async fn cancel_a_sleeping_query(stack: &Stack) -> String {
    let client = connect(stack).await;
    let cancel = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query ends soon after the cancel")
        .expect("join");
    db_error(&result.expect_err("cancelled")).0
}

#[tokio::test]
async fn cancel_close_mode_closes_the_upstream_connection() {
    let stack = pooled(|c| c.frontend.cancel_mode = CancelMode::Close).await;
    let other = connect(&stack).await;
    assert_eq!(cancel_a_sleeping_query(&stack).await, "57014");
    assert_eq!(stack.emulator.cancels(), 0, "nothing was sent upstream");
    other
        .simple_query("select 1")
        .await
        .expect("the other client is untouched");
}

#[tokio::test]
async fn transaction_mode_shares_connections_between_transactions() {
    let stack = Arc::new(
        pooled(|c| {
            c.pool.mode = PoolMode::Transaction;
            c.pool.size = 2;
        })
        .await,
    );
    // Ten clients stay connected; only two upstream connections exist.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(&stack).await);
    }
    for round in 0..3i32 {
        for (i, client) in clients.iter().enumerate() {
            // query_one prepares a named statement in one round trip and binds it in another,
            // which may land on another upstream connection.
            let value: i32 = client
                .query_one("select $1::int4 * 10 + $2::int4", &[&round, &(i as i32)])
                .await
                .expect("query")
                .get(0);
            assert_eq!(value, round * 10 + i as i32);
        }
    }
    // A transaction keeps its connection from BEGIN to COMMIT.
    let mut client = connect(&stack).await;
    let tx = client.transaction().await.expect("begin");
    let a: i32 = tx
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let b: i32 = tx
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_eq!(a, b);
    tx.commit().await.expect("commit");
    let logins = stack.emulator.logins();
    assert!((1..=2).contains(&logins), "{logins} logins for 11 clients");
}

#[tokio::test]
async fn transaction_mode_reuses_prepared_statements_across_transactions() {
    let stack = Arc::new(
        pooled(|c| {
            c.pool.mode = PoolMode::Transaction;
            c.pool.size = 3;
        })
        .await,
    );
    // Several clients, each preparing once and executing many times while the pool moves
    // them between upstream connections.
    let tasks: Vec<_> = (0..6i32)
        .map(|client_no| {
            let stack = stack.clone();
            tokio::spawn(async move {
                let client = connect(&stack).await;
                let statement = client
                    .prepare("select $1::int4 + 1000 * $2::int4")
                    .await
                    .expect("prepare");
                for i in 0..40i32 {
                    let value: i32 = client
                        .query_one(&statement, &[&i, &client_no])
                        .await
                        .expect("execute the prepared statement")
                        .get(0);
                    assert_eq!(value, i + 1000 * client_no);
                }
                // Closing the statement is answered by the sidecar; preparing again works.
                drop(statement);
                let again = client.prepare("select 2").await.expect("prepare again");
                let two: i32 = client.query_one(&again, &[]).await.expect("run").get(0);
                assert_eq!(two, 2);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    let logins = stack.emulator.logins();
    assert!((1..=3).contains(&logins), "{logins} logins");
}

#[tokio::test]
async fn same_statement_name_with_different_sql_stays_apart() {
    use tokio::io::AsyncWriteExt;
    let stack = pooled(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 1;
    })
    .await;
    // Two raw clients both name their statement "stmt", with different SQL, over one upstream
    // connection.
    let mut answers = Vec::new();
    let mut clients = Vec::new();
    for sql in ["select 'first'::text", "select 'second'::text"] {
        let (mut raw, _) = harness::raw_login(&stack).await;
        let parse = extended(b'P', &[b"stmt\0", sql.as_bytes(), b"\0\0\0"].concat());
        raw.write_all(&[parse, extended(b'S', &[])].concat())
            .await
            .expect("parse");
        harness::read_until_ready(&mut raw).await;
        clients.push(raw);
    }
    for raw in &mut clients {
        let bind = extended(b'B', b"\0stmt\0\0\0\0\0\0\0");
        let execute = extended(b'E', b"\0\0\0\0\0");
        raw.write_all(&[bind, execute, extended(b'S', &[])].concat())
            .await
            .expect("bind/execute");
        let messages = harness::read_until_ready(raw).await;
        let row = messages
            .iter()
            .find(|(tag, _)| *tag == b'D')
            .map(|(_, body)| String::from_utf8_lossy(&body[6..]).into_owned());
        answers.push(row);
    }
    assert_eq!(
        answers,
        vec![Some("first".to_owned()), Some("second".to_owned())]
    );
    assert_eq!(
        stack.emulator.logins(),
        1,
        "both went over the one connection"
    );
}

fn extended(tag: u8, body: &[u8]) -> Vec<u8> {
    support::wire::message(tag, body)
}

#[tokio::test]
async fn transaction_mode_pgbench_in_all_three_protocols() {
    if std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED transaction_mode_pgbench: pgbench is not installed");
        return;
    }
    let stack = pooled(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 4;
    })
    .await;
    let script =
        "\\set x random(1, 1000)\nbegin;\nselect :x::int * 2;\nselect :x::int + 1;\nend;\n";
    for mode in ["simple", "extended", "prepared"] {
        // One thread per client: pgbench prepares statements synchronously, one at a time,
        // and a client blocked waiting for a pooled connection must not stall the client that
        // holds one inside its transaction.
        let args = ["-n", "-c", "16", "-j", "16", "-t", "30", "-M", mode];
        let Some(out) = harness::pgbench(&stack, &args, script).await else {
            eprintln!("SKIPPED: pgbench is not installed");
            return;
        };
        assert!(
            out.contains("number of transactions actually processed: 480/480"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    let logins = stack.emulator.logins();
    assert!((1..=4).contains(&logins), "{logins} logins for 16 clients");
}

#[tokio::test]
async fn a_cancel_with_another_clients_keys_does_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = pooled(|_| {}).await;
    let (mut a, a_key) = harness::raw_login(&stack).await;
    let (_b, b_key) = harness::raw_login(&stack).await;
    a.write_all(&support::wire::query_message("select pg_sleep(1)"))
        .await
        .expect("query");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A's pid with B's secret, and B's pid with A's secret: neither is a real key.
    for (pid, secret) in [(&a_key[..4], &b_key[4..]), (&b_key[..4], &a_key[4..])] {
        let mut cancel = tokio::net::TcpStream::connect(stack.sidecar.addr())
            .await
            .expect("connect");
        let packet = support::wire::cancel_request(
            u32::from_be_bytes(pid.try_into().expect("4 bytes")),
            u32::from_be_bytes(secret.try_into().expect("4 bytes")),
        );
        cancel.write_all(&packet).await.expect("cancel");
        let mut rest = Vec::new();
        cancel.read_to_end(&mut rest).await.expect("closed");
    }
    let answer = harness::read_until_ready(&mut a).await; // panics on an ErrorResponse
    assert!(
        answer.iter().any(|(tag, _)| *tag == b'C'),
        "the query completed"
    );
    assert_eq!(stack.emulator.cancels(), 0);
}

/// A client that leaves while its statement waits for a connection (an app's own timeout, a
/// killed process) is not served: its statement never runs, and the connection it waited for
/// goes to the next client unused, with no new login.
#[tokio::test]
async fn a_client_gone_while_waiting_for_a_connection_runs_nothing() {
    use tokio::io::AsyncWriteExt;
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("cluster");
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let stack = pooled(|c| {
            c.pool.mode = mode;
            c.pool.size = 1;
        })
        .await;
        let table = support::unique_name("gone");
        let admin = cluster.admin_client().await;
        admin
            .batch_execute(&format!("create table {table} (n int)"))
            .await
            .expect("create");
        // Raw logins all: the same startup parameters, so the same pool.
        let (mut holder, _) = harness::raw_login(&stack).await;
        let logins = stack.emulator.logins();
        let held = tokio::spawn(async move {
            holder
                .write_all(&support::wire::query_message("select pg_sleep(0.5)"))
                .await
                .expect("sleep");
            harness::read_until_ready(&mut holder).await;
            // In session mode the connection is the holder's until it leaves.
            drop(holder);
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (mut ghost, _) = harness::raw_login(&stack).await;
        ghost
            .write_all(&support::wire::query_message(&format!(
                "insert into {table} values (1)"
            )))
            .await
            .expect("insert");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Gone with a reset while its statement waits.
        socket2::SockRef::from(&ghost)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
        drop(ghost);
        held.await.expect("holder");
        let (mut next, _) = harness::raw_login(&stack).await;
        next.write_all(&support::wire::query_message(&format!(
            "select count(*) from {table}"
        )))
        .await
        .expect("count");
        let answer = harness::read_until_ready(&mut next).await;
        let row = answer
            .iter()
            .find(|(tag, _)| *tag == b'D')
            .map(|(_, body)| String::from_utf8_lossy(&body[6..]).into_owned());
        let rows: i64 = row.and_then(|n| n.parse().ok()).expect("a count");
        assert_eq!(rows, 0, "{mode:?}: the statement of a client gone ran");
        assert_eq!(
            stack.emulator.logins(),
            logins,
            "{mode:?}: the connection was lost for the client gone"
        );
    }
}

/// A cancel that reaches the server late (a slow path) must not land on the statement of the
/// client that got the connection once the cancelled statement ended by itself
/// (pgbouncer#245): the connection goes back to the pool only once the cancel was delivered,
/// when its backend is idle and PostgreSQL ignores it.
#[tokio::test]
async fn a_late_cancel_never_reaches_the_next_client_of_its_connection() {
    let stack = plain_stack_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 1;
    })
    .await;
    stack.emulator.delay_cancels(Duration::from_millis(600));
    let (first, second) = (connect(&stack).await, connect(&stack).await);
    // The first client's statement runs 300 ms; its cancel, sent at 100 ms, reaches the server
    // at ~700 ms.
    let cancelled = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        first
            .cancel_token()
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("send cancel");
    };
    // The second asks for the only connection while the first holds it.
    let next = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        second.simple_query("select pg_sleep(0.8)").await
    };
    let (ran, (), next) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(first.simple_query("select pg_sleep(0.3)"), cancelled, next)
    })
    .await
    .expect("all ended within the bound");
    assert_eq!(stack.emulator.cancels(), 1, "the cancel was forwarded");
    if let Err(error) = &next {
        panic!("the next client's statement was hit: {:?}", db_error(error));
    }
    // The cancel came after the first statement ended: nothing of it is cancelled either.
    ran.expect("the first statement ended by itself");
}

#[tokio::test]
async fn transaction_mode_forwards_cancels_to_the_serving_connection() {
    let stack = plain_stack_with(|c| {
        c.pool.mode = PoolMode::Transaction;
        c.pool.size = 2;
    })
    .await;
    let bystander = connect(&stack).await;
    assert_eq!(cancel_a_sleeping_query(&stack).await, "57014");
    assert_eq!(stack.emulator.cancels(), 1);
    bystander
        .simple_query("select 1")
        .await
        .expect("the other client is untouched");
}
