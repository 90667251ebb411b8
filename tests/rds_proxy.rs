//! Behind the real RDS Proxy's rules (the emulator's default): startup parameters it refuses,
//! pinning, logins over a busy pool. Every startup parameter takes effect, the sidecar never
//! sends a statement that pins, a session-mode connection is pooled as it is when its client
//! left it clean, closed (rds-proxy) or reset (postgres) when it did not, and a login never
//! waits for a busy pool. Cancels without server keys: rds_proxy_cancel.rs.

mod harness;
mod support;

use std::time::{Duration, Instant};

use harness::{
    Stack, backend_pid, connect, db_error, plain_stack_with, simple_value, stack_with, try_connect,
};
use rds_iam_sidecar::settings::EndpointSettings;
use support::{TEST_AKID, TEST_SECRET, wire};
use tokio::net::TcpStream;

async fn proxy_stack(adjust: impl FnOnce(&mut EndpointSettings)) -> Stack {
    stack_with(adjust, harness::credentials(TEST_AKID, TEST_SECRET)).await
}

/// Logs in with raw startup parameters and returns what `show NAME` gives for each name.
async fn show_after_login(
    stack: &Stack,
    parameters: &[(&str, &str)],
    names: &[&str],
) -> Result<Vec<String>, wire::LoginError> {
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    wire::login(&mut raw, parameters, "unused").await?;
    let mut values = Vec::new();
    for name in names {
        let rows = wire::simple_query(&mut raw, &format!("show {name}")).await?;
        values.push(rows[0][0].clone().unwrap_or_default());
    }
    Ok(values)
}

#[tokio::test]
async fn every_startup_parameter_takes_effect_for_both_kinds() {
    let proxy = proxy_stack(|_| {}).await;
    let plain = plain_stack_with(|_| {}).await;
    for stack in [&proxy, &plain] {
        let values = show_after_login(
            stack,
            &[
                ("user", "postgres"),
                ("database", "postgres"),
                (
                    "options",
                    r"-c search_path=s1 -c statement_timeout=1234 --lock-timeout=5s",
                ),
                ("application_name", "kinds"),
            ],
            &[
                "search_path",
                "statement_timeout",
                "lock_timeout",
                "application_name",
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(values, ["s1", "1234ms", "5s", "kinds"]);
        let values = show_after_login(
            stack,
            &[
                ("user", "postgres"),
                ("database", "postgres"),
                ("search_path", "s2, public"),
                ("statement_timeout", "4321"),
            ],
            &["search_path", "statement_timeout"],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(values, ["s2, public", "4321ms"]);
    }
    // RDS Proxy never saw a parameter it refuses; the plain PostgreSQL got them all.
    for login in proxy.emulator.accepted_logins() {
        for (name, _) in &login.params {
            assert!(
                support::emulator::SUPPORTED_STARTUP_PARAMS.contains(&name.as_str()),
                "{name} reached RDS Proxy"
            );
        }
    }
    assert_eq!(proxy.emulator.rejected(), 0);
    assert!(
        plain
            .emulator
            .accepted_logins()
            .iter()
            .any(|login| login.param("options").is_some())
    );

    // A setting the server refuses: the server's own error, at login.
    for stack in [&proxy, &plain] {
        let refused = show_after_login(
            stack,
            &[
                ("user", "postgres"),
                ("database", "postgres"),
                ("statement_timeout", "banana"),
            ],
            &[],
        )
        .await;
        match refused {
            Err(wire::LoginError::Server(error)) => assert_eq!(error.code, "22023", "{error}"),
            other => panic!("expected the server's error, got {other:?}"),
        }
    }
    // options holding something that is not a setting cannot be applied behind RDS Proxy.
    let refused = show_after_login(
        &proxy,
        &[
            ("user", "postgres"),
            ("database", "postgres"),
            ("options", "-d 5"),
        ],
        &[],
    )
    .await;
    match refused {
        Err(wire::LoginError::Server(error)) => {
            assert_eq!(error.code, "0A000");
            assert!(error.message.contains("'-d'"), "{error}");
        }
        other => panic!("expected 0A000, got {other:?}"),
    }
}

#[tokio::test]
async fn plain_sessions_never_pin_and_reuse_one_connection() {
    // One connection: each client waits for the previous one's to come back.
    let stack = proxy_stack(|c| c.pool.size = 1).await;
    for i in 0..20 {
        let client = connect(&stack).await;
        let left = simple_value(&client, "select count(*) from pg_prepared_statements").await;
        assert_eq!(
            left.as_deref(),
            Some("0"),
            "the previous client's statements were closed"
        );
        let value = simple_value(&client, &format!("select {i}")).await;
        assert_eq!(value, Some(i.to_string()));
        // Extended protocol with a named statement (tokio-postgres prepares every query).
        let value: i32 = client
            .query_one("select $1::int4 + 1", &[&i])
            .await
            .expect("query")
            .get(0);
        assert_eq!(value, i + 1);
    }
    // Give the last client's connection time to go back to the pool.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stack.emulator.pinned_sessions(),
        0,
        "{:?}",
        stack.emulator.pin_log()
    );
    assert_eq!(stack.emulator.discards(), 0);
    assert_eq!(
        stack.emulator.logins(),
        1,
        "one connection served all 20 clients"
    );
}

/// What a client leaves behind, and how the next client checks that it is gone.
struct LeftState {
    statement: &'static str,
    gone: &'static str,
}

const LEFT_STATES: [LeftState; 6] = [
    LeftState {
        statement: "set statement_timeout = 4321",
        gone: "select case when current_setting('statement_timeout') = '0' then 1 else 0 end",
    },
    LeftState {
        statement: "create temp table left_behind_as as select 1 as x",
        gone: "select case when to_regclass('pg_temp.left_behind_as') is null then 1 else 0 end",
    },
    LeftState {
        statement: "listen left_behind",
        gone: "select case when count(*) = 0 then 1 else 0 end from pg_listening_channels()",
    },
    LeftState {
        statement: "create temp table left_behind (x int)",
        gone: "select case when to_regclass('pg_temp.left_behind') is null then 1 else 0 end",
    },
    LeftState {
        statement: "prepare left_behind as select 1",
        gone: "select case when count(*) = 0 then 1 else 0 end from pg_prepared_statements",
    },
    LeftState {
        statement: "select pg_advisory_lock(4242)",
        gone: "select case when count(*) = 0 then 1 else 0 end from pg_locks \
               where locktype = 'advisory' and objid = 4242",
    },
];

/// Each state in turn: one client leaves it, the next finds none of it.
async fn next_client_sees_none_of_it(stack: &Stack) -> Vec<(String, String)> {
    let mut pids = Vec::new();
    for state in &LEFT_STATES {
        let first = connect(stack).await;
        let left = backend_pid(&first).await;
        first
            .batch_execute(state.statement)
            .await
            .expect(state.statement);
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = try_connect(stack, "postgres", "postgres")
            .await
            .expect("connect");
        let gone = simple_value(&second, state.gone).await;
        assert_eq!(
            gone.as_deref(),
            Some("1"),
            "{} was left behind",
            state.statement
        );
        pids.push((left, backend_pid(&second).await));
    }
    pids
}

#[tokio::test]
async fn session_state_is_closed_behind_rds_proxy_and_reset_behind_postgres() {
    let proxy = harness::stack_with_settings(
        |s| {
            s.admin_listen = Some(([127, 0, 0, 1], 0).into());
            s.endpoints[0].pool.size = 1;
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let pids = next_client_sees_none_of_it(&proxy).await;
    assert!(
        pids.iter().all(|(left, next)| left != next),
        "closed, not reused: {pids:?}"
    );
    assert_eq!(proxy.emulator.discards(), 0, "no DISCARD against RDS Proxy");
    assert_eq!(
        proxy.emulator.pinned_sessions(),
        LEFT_STATES.len() as u64,
        "only the connections whose clients changed state were pinned: {:?}",
        proxy.emulator.pin_log()
    );
    let admin = proxy.sidecar.admin_addr.expect("admin").to_string();
    let metrics = harness::scrape::scrape(&admin).await;
    for reason in [
        "setting",
        "listen",
        "temp_object",
        "prepared_statement",
        "advisory_lock",
    ] {
        let closed = harness::scrape::value(
            &metrics,
            "rds_iam_sidecar_session_state_connections_total",
            &[("action", "closed"), ("reason", reason)],
        );
        assert!(closed >= Some(1.0), "{reason}: {closed:?}");
    }

    let plain = plain_stack_with(|c| c.pool.size = 1).await;
    let before = plain.emulator.logins();
    let pids = next_client_sees_none_of_it(&plain).await;
    assert!(
        pids.iter().all(|(left, next)| left == next),
        "reset and reused: {pids:?}"
    );
    assert_eq!(plain.emulator.discards(), LEFT_STATES.len() as u64);
    assert_eq!(plain.emulator.logins(), before.max(1));
}

#[tokio::test]
async fn pgbench_connecting_per_transaction_over_a_small_pool_never_stalls() {
    // 8 clients that connect synchronously, 5 connections: a login that waited for a busy
    // pool would hold a pgbench thread that never sends the Terminate that frees one.
    let stack = proxy_stack(|c| c.pool.size = 5).await;
    if !harness::pgbench_connect_per_transaction(&stack, 8, 2, 125).await {
        eprintln!("SKIPPED pgbench_connecting_per_transaction: pgbench is not installed");
        return;
    }
    let logins = stack.emulator.logins();
    assert!(logins <= 5, "{logins} IAM logins for a pool of 5");
    assert_eq!(stack.emulator.pinned_sessions(), 0);
}

#[tokio::test]
async fn a_client_over_a_saturated_pool_logs_in_at_once_and_waits_at_its_first_query() {
    let stack = proxy_stack(|c| {
        c.pool.size = 1;
        c.pool.timeout = Duration::from_millis(800);
    })
    .await;
    let holder = connect(&stack).await;
    holder
        .simple_query("select 1")
        .await
        .expect("holds the connection");

    let started = Instant::now();
    let waiting = connect(&stack).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the login took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let error = waiting
        .simple_query("select 1")
        .await
        .expect_err("no connection came free");
    let waited = started.elapsed();
    let (code, message, _) = db_error(&error);
    assert_eq!(code, "53300");
    assert!(message.contains("postgres@postgres"), "{message}");
    assert!(
        waited >= Duration::from_millis(700),
        "answered after {waited:?}"
    );

    // Once the holder leaves, a waiting client gets its connection at its first query.
    let next = connect(&stack).await;
    let query = next.simple_query("select 7");
    let leave = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(holder);
    };
    let (rows, ()) = tokio::join!(query, leave);
    rows.expect("the freed connection serves the next client");
    assert_eq!(stack.emulator.logins(), 1);
}
