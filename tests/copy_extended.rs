//! COPY FROM STDIN started with the extended protocol (tokio-postgres `copy_in`, libpq's
//! `PQexecParams`): the client sends Sync right after the Execute and again after CopyDone or
//! CopyFail, and PostgreSQL ignores the first (it is in copy-in mode then), so two sync points
//! get one ReadyForQuery. The connection must still go back to the pool, in both modes, and
//! the answers to what the client sends next must stay in step.

mod harness;
mod support;

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use harness::{Stack, backend_pid, connect, credentials, stack_with, table_made_apart};
use rds_iam_sidecar::pool::PoolMode;
use support::{TEST_AKID, TEST_SECRET};

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

/// After a finished and a failed COPY, the same client's new prepared statements run (twice:
/// their second Bind finds them on the connection), and a second client gets the same
/// connection within the pool timeout.
async fn copy_then_more(mode: PoolMode) {
    let stack = one_connection(mode).await;
    let table = table_made_apart(&stack, "copy_ext", "id int").await;
    let first = connect(&stack).await;
    let pid = backend_pid(&first).await;
    copy_rows(&first, &table, 3, false).await;
    copy_rows(&first, &table, 5, true).await;
    for _ in 0..2 {
        assert_eq!(count(&first, &table).await, 3);
        let doubled: i32 = first
            .query_one("select $1::int4 * 2", &[&21i32])
            .await
            .expect("a statement prepared after the COPY")
            .get(0);
        assert_eq!(doubled, 42);
    }
    if mode == PoolMode::Session {
        drop(first);
    }
    let second = connect(&stack).await;
    assert_eq!(backend_pid(&second).await, pid, "the connection was pooled");
    assert_eq!(count(&second, &table).await, 3);
    second
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
