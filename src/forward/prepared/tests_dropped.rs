//! Statement renaming when the server drops or invalidates statements behind the rewriter's
//! back (`DEALLOCATE ALL`, `DISCARD ALL`, 26000, 0A000, 42P05), answers fed one byte at a time.

use super::tests::{Conn, bind, parse, sync};
use super::*;

/// One connection with statement `s1` (`select 1`) prepared and bound once by a client.
fn prepared() -> Conn {
    let mut conn = Conn::new();
    let sent = conn.tags(&[parse("s1", "select 1"), bind("s1"), sync()].concat());
    assert_eq!(sent, b"PBS");
    conn.answer(&[PARSE_COMPLETE.to_vec(), message(b'2', &[]), ready()].concat());
    conn
}

fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

/// An ErrorResponse as PostgreSQL 15 sends it: severity, SQLSTATE, message, file, line,
/// routine (well over the 64 bytes the rewriter reads).
fn error(code: &str) -> Vec<u8> {
    let mut body = b"SERROR\0VERROR\0C".to_vec();
    body.extend_from_slice(code.as_bytes());
    body.extend_from_slice(b"\0Mcached plan must not change result type\0Fplancache.c\0L735\0RRevalidateCachedQuery\0\0");
    message(b'E', &body)
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

#[test]
fn deallocate_all_from_any_client_makes_the_next_bind_prepare_again() {
    for tag in ["DEALLOCATE ALL", "DISCARD ALL"] {
        let mut conn = prepared();
        assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"BS", "held");
        conn.answer(&[message(b'2', &[]), ready()].concat());
        assert_eq!(conn.tags(&query(tag)), b"Q");
        let mut complete = tag.as_bytes().to_vec();
        complete.push(0);
        conn.answer(&[message(b'C', &complete), ready()].concat());
        assert_eq!(
            conn.tags(&[bind("s1"), sync()].concat()),
            b"PBS",
            "after {tag} the statement is prepared again"
        );
        let seen = conn.answer(&[PARSE_COMPLETE.to_vec(), message(b'2', &[]), ready()].concat());
        assert_eq!(seen, [message(b'2', &[]), ready()].concat());
    }
}

#[test]
fn other_command_tags_leave_the_statements_alone() {
    let mut conn = prepared();
    conn.tags(&query("select 1"));
    // As long as "DISCARD ALL\0" and "DEALLOCATE ALL\0", but other tags.
    conn.answer(&[message(b'C', b"UPDATE 1234\0"), ready()].concat());
    conn.tags(&query("select 1"));
    conn.answer(&[message(b'C', b"INSERT 0 12345\0"), ready()].concat());
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"BS");
}

#[test]
fn a_stale_plan_is_closed_and_prepared_again_at_its_next_use() {
    let mut conn = prepared();
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"BS");
    // After an ALTER TABLE: the Bind fails and the client is told, as PostgreSQL tells it.
    let failed = [error("0A000"), ready()].concat();
    assert_eq!(conn.answer(&failed), failed);
    // The client prepares again (any name): the stale statement is closed first, and both
    // answers the client did not ask for are swallowed.
    assert_eq!(
        conn.tags(&[parse("s2", "select 1"), bind("s2"), sync()].concat()),
        b"CPBS"
    );
    let seen = conn.answer(
        &[
            CLOSE_COMPLETE.to_vec(),
            PARSE_COMPLETE.to_vec(),
            message(b'2', &[]),
            ready(),
        ]
        .concat(),
    );
    assert_eq!(
        seen,
        [PARSE_COMPLETE.to_vec(), message(b'2', &[]), ready()].concat()
    );
    assert!(conn.plan.is_empty());
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"BS", "once");
}

#[test]
fn a_statement_the_server_lost_is_prepared_again_without_a_close() {
    let mut conn = prepared();
    conn.tags(&[bind("s1"), sync()].concat());
    conn.answer(&[error("26000"), ready()].concat());
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"PBS");
}

#[test]
fn an_error_in_a_statement_of_the_clients_own_changes_nothing() {
    let mut conn = prepared();
    conn.tags(&[bind("s1"), sync()].concat());
    conn.answer(&[error("22012"), ready()].concat());
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"BS");
}

#[test]
fn statements_parsed_after_a_deallocate_all_in_the_same_pipeline_stay_held() {
    let mut conn = prepared();
    // psycopg 3's pipeline: DEALLOCATE ALL, then a statement the connection does not hold.
    let batch = [
        query("DEALLOCATE ALL"),
        parse("s2", "select 2"),
        bind("s2"),
        sync(),
    ]
    .concat();
    assert_eq!(conn.tags(&batch), b"QPBS");
    let answers = [
        message(b'C', b"DEALLOCATE ALL\0"),
        ready(),
        PARSE_COMPLETE.to_vec(),
        message(b'2', &[]),
        ready(),
    ]
    .concat();
    conn.answer(&answers);
    assert_eq!(
        conn.tags(&[bind("s2"), sync()].concat()),
        b"BS",
        "the server made s2 after it dropped everything: it holds it"
    );
    assert_eq!(
        conn.tags(&[bind("s1"), sync()].concat()),
        b"PBS",
        "and dropped s1"
    );
}

#[test]
fn a_close_owed_is_still_sent_when_an_earlier_message_of_its_batch_failed() {
    let mut conn = prepared();
    conn.tags(&[bind("s1"), sync()].concat());
    conn.answer(&[error("0A000"), ready()].concat());
    // A Bind of an unknown portal statement fails first: the Close and Parse queued behind
    // it are skipped by the server.
    assert_eq!(
        conn.tags(&[bind("never-prepared"), bind("s1"), sync()].concat()),
        b"BCPBS"
    );
    conn.answer(&[error("26000"), ready()].concat());
    assert!(conn.plan.is_empty());
    assert_eq!(
        conn.tags(&[bind("s1"), sync()].concat()),
        b"CPBS",
        "still stale on the server: closed before it is prepared"
    );
}

#[test]
fn a_parse_the_server_says_exists_is_closed_before_the_next_one() {
    let mut conn = prepared();
    conn.tags(&[query("DEALLOCATE ALL")].concat());
    conn.answer(&[message(b'C', b"DEALLOCATE ALL\0"), ready()].concat());
    // Whatever made the sidecar wrong (a statement made behind its back), the server holds
    // s1 after all: one 42P05, then a Close before the next Parse.
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"PBS");
    conn.answer(&[error("42P05"), ready()].concat());
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"CPBS");
}

#[test]
fn a_describe_of_a_stale_statement_marks_it_too() {
    let mut conn = prepared();
    let mut describe = vec![b'S'];
    describe.extend_from_slice(b"s1\0");
    assert_eq!(
        conn.tags(&[message(b'D', &describe), sync()].concat()),
        b"DS"
    );
    conn.answer(&[error("0A000"), ready()].concat());
    assert_eq!(conn.tags(&[bind("s1"), sync()].concat()), b"CPBS");
}

#[test]
fn texts_that_drop_every_statement() {
    for text in [
        "DEALLOCATE ALL",
        "deallocate all;",
        "  Deallocate\n prepare  ALL",
        "discard all",
        "DISCARD ALL\0",
    ] {
        assert!(drops_all_statements(text.as_bytes()), "{text:?}");
    }
    for text in [
        "DEALLOCATE s1",
        "deallocate prepare s1",
        "discard plans",
        "select 'deallocate all'",
        "delete from t",
        "",
        "d",
    ] {
        assert!(!drops_all_statements(text.as_bytes()), "{text:?}");
    }
}

/// The client's extended-protocol Parse/Bind/Execute of `sql` in the unnamed statement.
fn unnamed(sql: &str) -> Vec<u8> {
    let execute = message(b'E', &[0, 0, 0, 0, 0]);
    [parse("", sql), bind(""), execute].concat()
}

#[test]
fn a_deallocate_all_earlier_in_the_pipeline_makes_a_held_statement_be_parsed_again() {
    // psycopg 3's pipeline: DEALLOCATE ALL in the extended protocol, then a statement the
    // connection holds. The server drops it before it gets there: the Parse must be sent.
    let mut conn = prepared();
    let batch = [
        unnamed("DEALLOCATE ALL"),
        parse("s2", "select 1"),
        bind("s2"),
        sync(),
    ]
    .concat();
    assert_eq!(conn.tags(&batch), b"PBEPBS");
    // The same with a simple Query ahead of the batch, its text split across chunks.
    let mut conn = prepared();
    let query = query("  deallocate   all");
    let mut out = Vec::new();
    for byte in query.chunks(1) {
        conn.client
            .process(
                byte,
                &mut conn.statements,
                &conn.conn,
                &conn.plan,
                &mut out,
                false,
            )
            .expect("valid");
    }
    assert_eq!(out, query);
    assert_eq!(
        conn.tags(&[parse("s2", "select 1"), bind("s2"), sync()].concat()),
        b"PBS"
    );
}
