//! Transaction mode's shared server statements when the server drops or invalidates them
//! behind the sidecar's back, against a real PostgreSQL: one client's `DEALLOCATE ALL` or
//! `DISCARD ALL` (psycopg 3 sends one itself after a ROLLBACK or DDL), and a schema change that
//! changes a statement's result type. Each client sees what PostgreSQL would show it, and no
//! client's statement stays broken for the others (found by a driver compatibility run with
//! psycopg 3, asyncpg and pgJDBC: every later client got 26000 or 0A000 until the upstream
//! connection was retired).

mod harness;
mod support;

use harness::{Stack, connect, credentials, db_error, stack_with};
use rds_iam_sidecar::pool::PoolMode;
use support::{TEST_AKID, TEST_SECRET, unique_name};

/// Transaction mode with one upstream connection: every client shares it.
async fn one_connection() -> Stack {
    stack_with(
        |c| {
            c.pool.mode = PoolMode::Transaction;
            c.pool.size = 1;
        },
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await
}

/// A new table named after `prefix`, with one column `a int4` holding 1.
async fn one_row_table(admin: &tokio_postgres::Client, prefix: &str) -> String {
    let table = unique_name(prefix);
    admin
        .batch_execute(&format!(
            "create table {table} (a int4); insert into {table} values (1)"
        ))
        .await
        .expect("table");
    table
}

async fn drop_table(admin: &tokio_postgres::Client, table: &str) {
    admin
        .batch_execute(&format!("drop table {table}"))
        .await
        .expect("drop");
}

async fn add_100(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    n: i32,
) -> i32 {
    client
        .query_one(statement, &[&n])
        .await
        .expect("the prepared statement runs")
        .get(0)
}

#[tokio::test]
async fn another_clients_deallocate_all_or_discard_all_breaks_no_statement() {
    let stack = one_connection().await;
    let sql = "select $1::int4 + 100";
    let first = connect(&stack).await;
    let statement = first.prepare(sql).await.expect("prepare");
    assert_eq!(add_100(&first, &statement, 1).await, 101);
    for drop_all in ["DEALLOCATE ALL", "DISCARD ALL"] {
        let other = connect(&stack).await;
        other.batch_execute(drop_all).await.expect(drop_all);
        let newcomer = connect(&stack).await;
        let same_sql = newcomer.prepare(sql).await.expect("prepare after it");
        assert_eq!(
            add_100(&newcomer, &same_sql, 2).await,
            102,
            "a new client's statement after {drop_all}"
        );
        assert_eq!(
            add_100(&first, &statement, 3).await,
            103,
            "the first client's statement after {drop_all}"
        );
    }
    // In one pipeline (tokio-postgres writes both before reading an answer): the statement
    // runs after the server dropped it, so the sidecar must prepare it again first.
    for _ in 0..3 {
        let (dropped, row) = tokio::join!(
            first.batch_execute("DEALLOCATE ALL"),
            first.query_one(&statement, &[&4])
        );
        dropped.expect("DEALLOCATE ALL in the pipeline");
        let value: i32 = row.expect("the statement after it in the pipeline").get(0);
        assert_eq!(value, 104);
    }
}

#[tokio::test]
async fn a_statement_whose_result_type_changed_is_prepared_again_for_whoever_asks() {
    let stack = one_connection().await;
    let admin = connect(&stack).await;
    let table = one_row_table(&admin, "reshaped").await;
    let sql = format!("select * from {table}");
    let first = connect(&stack).await;
    let before = first.prepare(&sql).await.expect("prepare");
    assert_eq!(first.query_one(&before, &[]).await.expect("run").len(), 1);

    admin
        .batch_execute(&format!("alter table {table} add column b int4 default 7"))
        .await
        .expect("alter");
    // PostgreSQL's own answer to a statement prepared before the change.
    let error = first
        .query_one(&before, &[])
        .await
        .expect_err("the old plan is refused");
    let (code, message, _) = db_error(&error);
    assert_eq!(code, "0A000", "{message}");

    // Preparing again, as drivers do on 0A000, gives the new shape; so does a new client.
    let again = first.prepare(&sql).await.expect("prepare again");
    let row = first.query_one(&again, &[]).await.expect("runs again");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    let newcomer = connect(&stack).await;
    let fresh = newcomer.prepare(&sql).await.expect("prepare");
    let row = newcomer
        .query_one(&fresh, &[])
        .await
        .expect("a new client runs it");
    assert_eq!(row.len(), 2);
    drop_table(&admin, &table).await;
}

/// After a migration, a statement the client prepared before it is run where the sidecar
/// prepared it again (here: after another client's `DEALLOCATE ALL`). PostgreSQL itself would
/// refuse the old statement; the sidecar must too, not send rows of the new shape (tokio-postgres,
/// like asyncpg, reads them in binary with the description it cached: a float4 read as an int4).
#[tokio::test]
async fn a_statement_prepared_again_after_a_migration_is_refused_as_postgresql_refuses_it() {
    let stack = one_connection().await;
    let admin = connect(&stack).await;
    let table = one_row_table(&admin, "retyped").await;
    let sql = format!("select * from {table}");
    let first = connect(&stack).await;
    let before = first.prepare(&sql).await.expect("prepare");
    let unchanged = first
        .prepare("select 41 + 1 as answer")
        .await
        .expect("prepare");
    assert_eq!(
        first
            .query_one(&before, &[])
            .await
            .expect("run")
            .get::<_, i32>(0),
        1
    );
    admin
        .batch_execute(&format!(
            "alter table {table} alter column a type float4 using a + 0.5"
        ))
        .await
        .expect("alter");

    for round in 0..2 {
        admin
            .batch_execute("DEALLOCATE ALL")
            .await
            .expect("drop all");
        let error = first
            .query_one(&before, &[])
            .await
            .expect_err("a statement of the old shape is refused, not run");
        let (code, message, hint) = db_error(&error);
        assert_eq!(code, "0A000", "round {round}: {message}");
        assert_eq!(message, "cached plan must not change result type");
        assert!(hint.is_some_and(|h| h.contains("Prepare the statement again")));
        // What asyncpg and pgJDBC match before they prepare again by themselves.
        let routine = error.as_db_error().and_then(|e| e.routine());
        assert_eq!(routine, Some("RevalidateCachedQuery"));
        // A statement whose shape did not change runs where it was prepared again.
        let row = first.query_one(&unchanged, &[]).await.expect("unchanged");
        assert_eq!(row.get::<_, i32>(0), 42, "round {round}");
    }
    // Inside a transaction the refusal aborts it, as PostgreSQL's own error does.
    admin
        .batch_execute("DEALLOCATE ALL")
        .await
        .expect("drop all");
    first.batch_execute("begin").await.expect("begin");
    let refused = first.query_one(&before, &[]).await.expect_err("refused");
    assert_eq!(db_error(&refused).0, "0A000");
    let aborted = first.query_one("select 1", &[]).await.expect_err("aborted");
    assert_eq!(db_error(&aborted).0, "25P02");
    first.batch_execute("rollback").await.expect("rollback");

    // Prepared again, as drivers do on 0A000: the new type, read right.
    let again = first.prepare(&sql).await.expect("prepare again");
    let row = first.query_one(&again, &[]).await.expect("runs again");
    assert_eq!(row.get::<_, f32>(0), 1.5);
    admin
        .batch_execute("DEALLOCATE ALL")
        .await
        .expect("drop all");
    let row = first
        .query_one(&again, &[])
        .await
        .expect("runs where prepared again");
    assert_eq!(row.get::<_, f32>(0), 1.5);
    drop_table(&admin, &table).await;
}

/// A client preparing a statement after a migration gets the new plan, as from PostgreSQL,
/// although the connection holds the old one another client prepared before (skipping its
/// Parse, the sidecar let the old plan answer the client's Describe with 0A000).
#[tokio::test]
async fn a_statement_prepared_after_a_migration_is_parsed_afresh() {
    let stack = one_connection().await;
    let admin = connect(&stack).await;
    let table = one_row_table(&admin, "widened").await;
    let sql = format!("select * from {table}");
    let before = connect(&stack).await;
    before.prepare(&sql).await.expect("prepare before");
    admin
        .batch_execute(&format!("alter table {table} add column b int4 default 7"))
        .await
        .expect("alter");
    let after = connect(&stack).await;
    let statement = after.prepare(&sql).await.expect("prepared after: no 0A000");
    let row = after.query_one(&statement, &[]).await.expect("runs");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    drop_table(&admin, &table).await;
}
