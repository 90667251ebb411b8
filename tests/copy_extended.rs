//! COPY FROM STDIN at its edges. Started with the extended protocol (tokio-postgres `copy_in`,
//! libpq's `PQexecParams`), the client sends Sync right after the Execute and again after
//! CopyDone or CopyFail, and PostgreSQL ignores the first (it is in copy-in mode then), so two
//! sync points get one ReadyForQuery. A COPY that fails mid-stream is answered (error and
//! ReadyForQuery) while the client still sends data, which PostgreSQL then ignores. Either way
//! the connection must go back to the pool, in both modes, and the answers to what the client
//! sends next must stay in step.

mod harness;
mod support;

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use harness::{Stack, backend_pid, connect, credentials, stack_with, table_made_apart};
use rds_iam_sidecar::pool::PoolMode;
use support::{TEST_AKID, TEST_SECRET, wire};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One upstream connection, and a short wait for it: a connection kept by a client that
/// finished its COPY shows as another client's 53300.
async fn one_connection(mode: PoolMode) -> Stack {
    stack_with(
        |c| {
            c.pool.mode = mode;
            c.pool.size = 1;
            c.pool.timeout = Duration::from_secs(3);
        },
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await
}

/// Copies `rows` rows into `table` with the extended protocol; finished, or failed with a
/// CopyFail when `fail` (the sink dropped unfinished).
async fn copy_rows(client: &tokio_postgres::Client, table: &str, rows: i32, fail: bool) {
    let sink = client
        .copy_in::<_, Bytes>(&format!("copy {table} from stdin"))
        .await
        .expect("copy in");
    let mut sink = pin!(sink);
    for i in 0..rows {
        sink.send(Bytes::from(format!("{i}\n")))
            .await
            .expect("send");
    }
    if fail {
        return;
    }
    assert_eq!(sink.finish().await.expect("finish"), rows as u64);
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// Runs new prepared statements on `client` twice (their second Bind finds them on the
/// connection), checking `table` holds `rows` rows.
async fn goes_on(client: &tokio_postgres::Client, table: &str, rows: i64) {
    for _ in 0..2 {
        assert_eq!(count(client, table).await, rows);
        let doubled: i32 = client
            .query_one("select $1::int4 * 2", &[&21i32])
            .await
            .expect("a statement prepared after the COPY")
            .get(0);
        assert_eq!(doubled, 42);
    }
}

/// After finished COPYs the same client's new prepared statements run, and a second client
/// gets the same connection within the pool timeout. After one that failed (a CopyFail), the
/// client goes on too, but its connection serves no one else: whether the server answered the
/// Sync after the COPY's Execute depends on when it failed, which the sidecar cannot always
/// tell (`forward/copy_state.rs`), so the next client gets a fresh connection.
async fn copy_then_more(mode: PoolMode) {
    let stack = one_connection(mode).await;
    let table = table_made_apart(&stack, "copy_ext", "id int").await;
    let first = connect(&stack).await;
    let pid = backend_pid(&first).await;
    copy_rows(&first, &table, 3, false).await;
    copy_rows(&first, &table, 2, false).await;
    goes_on(&first, &table, 5).await;
    if mode == PoolMode::Session {
        drop(first);
    }
    let second = connect(&stack).await;
    assert_eq!(backend_pid(&second).await, pid, "the connection was pooled");
    copy_rows(&second, &table, 4, true).await;
    goes_on(&second, &table, 5).await;
    drop(second);
    let third = connect(&stack).await;
    assert_ne!(
        backend_pid(&third).await,
        pid,
        "not the connection of the failed COPY"
    );
    goes_on(&third, &table, 5).await;
    third
        .batch_execute(&format!("drop table {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn transaction_mode_extended_copy_leaves_the_connection_shareable() {
    copy_then_more(PoolMode::Transaction).await;
}

#[tokio::test]
async fn session_mode_extended_copy_leaves_the_connection_poolable() {
    copy_then_more(PoolMode::Session).await;
}

/// Logs in with raw messages (transaction mode answers from the pool's parameters).
async fn raw_client(stack: &Stack) -> TcpStream {
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    let startup = wire::startup_message(&[("user", "postgres"), ("database", "postgres")]);
    raw.write_all(&startup).await.expect("startup");
    read_until(&mut raw, b'Z').await;
    raw
}

/// The tags of the messages up to the first with `tag`, or up to the close.
async fn read_until(raw: &mut TcpStream, tag: u8) -> Vec<u8> {
    let mut tags = Vec::new();
    while let Ok((got, _)) = wire::read_message(raw).await {
        tags.push(got);
        if got == tag {
            break;
        }
    }
    tags
}

/// A simple-protocol COPY fails at its first row; the client learns it (ErrorResponse and
/// ReadyForQuery) and only then sends the rest of its data (one message cut in two writes)
/// and CopyDone, as libpq, pgJDBC and pg-copy-streams do. Transaction mode released the
/// connection at that ReadyForQuery: the late messages must not keep it, so a second client
/// is served on the pool's one connection, and the first goes on. Cut in its header, the late
/// CopyData takes the connection (it might be a statement) and gives it back once whole; cut in
/// its body, it is dropped without one.
#[tokio::test]
async fn transaction_mode_late_copy_data_after_a_failed_copy_holds_no_connection() {
    for cut in [3, 7] {
        late_copy_data_cut_at(cut).await;
    }
}

async fn late_copy_data_cut_at(cut: usize) {
    let stack = one_connection(PoolMode::Transaction).await;
    let table = table_made_apart(&stack, "copy_late", "id int").await;
    let mut raw = raw_client(&stack).await;
    let copy = wire::query_message(&format!("copy {table} from stdin"));
    raw.write_all(&copy).await.expect("copy");
    read_until(&mut raw, b'G').await;
    raw.write_all(&wire::message(b'd', b"not a number\n"))
        .await
        .expect("bad row");
    assert_eq!(read_until(&mut raw, b'Z').await, b"EZ", "the COPY failed");
    let late = wire::message(b'd', b"1\n2\n3\n");
    for part in [&late[..cut], &late[cut..]] {
        raw.write_all(part).await.expect("late data");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    raw.write_all(&wire::message(b'c', &[]))
        .await
        .expect("late CopyDone");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A client of the same pool (the same startup parameters).
    let mut second = raw_client(&stack).await;
    let counted = wire::query_message(&format!("select count(*) from {table}"));
    second.write_all(&counted).await.expect("query");
    assert_eq!(
        read_until(&mut second, b'Z').await,
        b"TDCZ",
        "served on the one connection, not 53300 after the pool timeout"
    );
    raw.write_all(&wire::query_message("select 1"))
        .await
        .expect("query");
    assert_eq!(
        read_until(&mut raw, b'Z').await,
        b"TDCZ",
        "the first client goes on"
    );
}

/// A COPY whose statement trigger fails (after a pause, so that the client's CopyDone and
/// Sync cross the error) fails after the server said CopyInResponse but before it read the
/// Sync after the Execute, so the server answers that Sync as well as the one after CopyDone.
/// tokio-postgres then reads the second ReadyForQuery as the answer to its next query and
/// fails it (UnexpectedMessage), directly against PostgreSQL too; what matters here is that
/// no answer of the first client strays to the next clients of the pool's connection.
#[tokio::test]
async fn an_extended_copy_failing_before_its_first_sync_strays_nowhere() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let stack = one_connection(mode).await;
        let table = table_made_apart(&stack, "copy_trigger", "id int").await;
        let setup = connect(&stack).await;
        setup
            .batch_execute(&format!(
                "create function {table}_no() returns trigger language plpgsql as \
                 $$ begin perform pg_sleep(0.3); raise exception 'no copy today'; end $$; \
                 create trigger {table}_no before insert on {table} \
                 for each statement execute function {table}_no()"
            ))
            .await
            .expect("trigger");
        drop(setup);
        let first = connect(&stack).await;
        // Logged in before, and waiting for the pool's one connection while the COPY runs: it
        // gets the connection the moment the first client's leaves it.
        let next = connect(&stack).await;
        // The next client asks once the COPY holds the connection (its CopyInResponse came),
        // not after a fixed pause, which a loaded machine could outlast.
        let copying = tokio::sync::Notify::new();
        let failed = async {
            let sink = first
                .copy_in::<_, Bytes>(&format!("copy {table} from stdin"))
                .await;
            copying.notify_one();
            let mut sink = pin!(sink?);
            // Megabytes, which the server reads (and ignores) after it answered the first Sync
            // and before the one after CopyDone: the two answers come apart.
            let rows = Bytes::from("1\n".repeat(512 * 1024));
            for _ in 0..8 {
                sink.send(rows.clone()).await?;
            }
            let finished = sink.finish().await;
            drop(first);
            finished
        };
        let waiting = async {
            copying.notified().await;
            goes_on(&next, &table, 0).await;
        };
        let (failed, ()) = tokio::join!(failed, waiting);
        let error = failed.expect_err("the trigger refuses");
        assert_eq!(harness::db_error(&error).0, "P0001", "{mode:?}");
    }
}
