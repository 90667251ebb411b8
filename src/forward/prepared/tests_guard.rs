//! The result-type guard: a Bind of a statement whose shape the client was told waits for the
//! connection's shape, runs when it is the same and is refused (0A000) when not; answers fed
//! one byte at a time.

use super::tests::{Conn, bind, parse, sync};
use super::*;

fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    message(b'D', &body)
}

fn describe_portal() -> Vec<u8> {
    message(b'D', b"P\0")
}

fn execute() -> Vec<u8> {
    message(b'E', &[0, 0, 0, 0, 0])
}

/// A RowDescription of int4 columns named `columns`.
fn rows(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as i16).to_be_bytes().to_vec();
    for name in columns {
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0,
        ]);
    }
    message(b'T', &body)
}

fn parameters() -> Vec<u8> {
    message(b't', &[0, 0])
}

fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

fn bind_complete() -> Vec<u8> {
    message(b'2', &[])
}

fn row_and_complete() -> Vec<u8> {
    [
        message(b'D', &[0, 1, 0, 0, 0, 1, b'1']),
        message(b'C', b"SELECT 1\0"),
    ]
    .concat()
}

fn error(code: &str) -> Vec<u8> {
    let mut body = b"SERROR\0VERROR\0C".to_vec();
    body.extend_from_slice(code.as_bytes());
    body.extend_from_slice(b"\0Msome words of the server\0Fpostgres.c\0L1\0Rexec\0\0");
    message(b'E', &body)
}

/// The client prepared `s1` and was told it returns columns `columns`; the connection then
/// dropped every statement (another client's `DEALLOCATE ALL`).
fn told_then_dropped(columns: &[&str]) -> Conn {
    let mut conn = Conn::new();
    let sent = conn.tags(
        &[
            parse("s1", "select * from t"),
            describe_statement("s1"),
            sync(),
        ]
        .concat(),
    );
    assert_eq!(sent, b"PDS");
    let answers = [
        PARSE_COMPLETE.to_vec(),
        parameters(),
        rows(columns),
        ready(),
    ]
    .concat();
    assert_eq!(
        conn.answer(&answers),
        answers,
        "the client sees its answers"
    );
    conn.conn.lock().unwrap().clear();
    conn
}

#[test]
fn a_bind_waits_for_the_shape_and_runs_when_it_is_the_one_the_client_was_told() {
    let mut conn = told_then_dropped(&["a"]);
    let batch = [bind("s1"), execute(), sync()].concat();
    let (sent, paused) = conn.send(&batch);
    let tags: Vec<u8> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"PDH", "prepared again and described, with a Flush");
    assert_eq!(
        paused,
        Some(bind("s1").len()),
        "paused right after the Bind"
    );
    assert!(conn.learning());
    let learnt = conn.answer(&[PARSE_COMPLETE.to_vec(), parameters(), rows(&["a"])].concat());
    assert!(learnt.is_empty(), "the client asked none of this");
    assert!(!conn.learning());
    let rest = &batch[bind("s1").len()..];
    assert_eq!(
        conn.tags(rest),
        b"BES",
        "resumed: the Bind runs, then the rest"
    );
    let answers = [bind_complete(), row_and_complete(), ready()].concat();
    assert_eq!(conn.answer(&answers), answers);
    assert!(conn.plan.is_empty());
    assert_eq!(
        conn.tags(&[bind("s1"), execute(), sync()].concat()),
        b"BES",
        "known now"
    );
}

#[test]
fn a_bind_of_another_shape_is_refused_by_the_server_in_its_place() {
    let mut conn = told_then_dropped(&["a"]);
    let (_, paused) = conn.send(&bind("s1"));
    assert!(paused.is_some());
    conn.answer(&[PARSE_COMPLETE.to_vec(), parameters(), rows(&["a", "b"])].concat());
    let (sent, paused) = conn.send(&[execute(), sync()].concat());
    assert_eq!(paused, None);
    let refusal = "rdsiam_result_type_changed".to_owned();
    assert_eq!(
        sent,
        [
            (b'P', refusal.clone()),
            (b'B', refusal),
            (b'E', String::new()),
            (b'E', String::new()),
            (b'S', String::new()),
        ],
        "the refusal in the Bind's place, then the client's Execute and Sync"
    );
    // The server runs the refusal and skips the client's Execute; the client gets
    // PostgreSQL's own error for its Bind, down to the routine drivers look at.
    let seen = conn.answer(
        &[
            PARSE_COMPLETE.to_vec(),
            bind_complete(),
            error("0A000"),
            ready(),
        ]
        .concat(),
    );
    assert_eq!(seen, [guard::REFUSAL_ERROR.clone(), ready()].concat());
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("C0A000\0Mcached plan must not change result type\0"));
    assert!(text.contains("\0RRevalidateCachedQuery\0"), "{text}");
    assert!(conn.plan.is_empty());
    // The client prepares again and is told the new shape: it runs.
    let sent = conn.tags(
        &[
            parse("s1", "select * from t"),
            describe_statement("s1"),
            sync(),
        ]
        .concat(),
    );
    assert_eq!(sent, b"CPDS", "parsed afresh");
    let answers = [
        CLOSE_COMPLETE.to_vec(),
        PARSE_COMPLETE.to_vec(),
        parameters(),
        rows(&["a", "b"]),
        ready(),
    ];
    conn.answer(&answers.concat());
    assert_eq!(conn.tags(&[bind("s1"), execute(), sync()].concat()), b"BES");
}

/// A Bind of `statement` to `portal`.
fn bind_portal(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = portal.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&bind(statement)[6..]);
    message(b'B', &body)
}

/// The unnamed portal's, and a named one's (pgJDBC with a fetch size reads through `C_n`).
#[test]
fn a_describe_of_a_portal_tells_the_shape_of_the_statement_bound_to_it() {
    for portal in ["", "c1"] {
        let mut conn = Conn::new();
        let describe = message(b'D', format!("P{portal}\0").as_bytes());
        let sent = conn.tags(
            &[
                parse("s1", "select * from t"),
                bind_portal(portal, "s1"),
                describe,
                execute(),
                sync(),
            ]
            .concat(),
        );
        assert_eq!(sent, b"PBDES", "never described: nothing to wait for");
        let answers = [
            PARSE_COMPLETE.to_vec(),
            bind_complete(),
            rows(&["a"]),
            row_and_complete(),
            ready(),
        ]
        .concat();
        assert_eq!(conn.answer(&answers), answers);
        conn.conn.lock().unwrap().clear();
        let (sent, paused) = conn.send(&[bind_portal(portal, "s1"), execute(), sync()].concat());
        assert_eq!(
            sent.len(),
            3,
            "portal {portal:?}: its description was the client's: {sent:?}"
        );
        assert!(paused.is_some(), "portal {portal:?}");
    }
}

#[test]
fn a_statement_never_described_is_bound_at_once() {
    let mut conn = Conn::new();
    conn.tags(&[parse("s1", "select * from t"), sync()].concat());
    conn.answer(&[PARSE_COMPLETE.to_vec(), ready()].concat());
    conn.conn.lock().unwrap().clear();
    assert_eq!(
        conn.tags(&[bind("s1"), execute(), sync()].concat()),
        b"PBES"
    );
}

#[test]
fn a_failed_describe_goes_to_the_client_and_the_skipped_rest_of_its_batch_is_not_awaited() {
    let mut conn = told_then_dropped(&["a"]);
    conn.send(&bind("s1"));
    // The table is gone: the Parse fails, and the server skips to the Sync not sent yet.
    let seen = conn.answer(&error("42P01"));
    assert_eq!(seen, error("42P01"), "the client's Bind failed");
    assert!(!conn.learning(), "the paused Bind does not wait for ever");
    let tags = conn.tags(&[execute(), sync()].concat());
    assert_eq!(tags.last(), Some(&b'S'));
    assert_eq!(conn.answer(&ready()), ready(), "only the Sync is answered");
    assert!(conn.plan.is_empty(), "nothing skipped is still expected");
    // The next batch's answers line up.
    let sent = conn.tags(&[parse("s2", "select 2"), bind("s2"), sync()].concat());
    assert_eq!(sent, b"PBS");
    let answers = [PARSE_COMPLETE.to_vec(), bind_complete(), ready()].concat();
    assert_eq!(conn.answer(&answers), answers);
}

#[test]
fn an_error_before_the_rest_of_its_batch_was_read_leaves_nothing_awaited() {
    let mut conn = Conn::new();
    conn.tags(&[parse("s2", "select 2"), sync()].concat());
    conn.answer(&[PARSE_COMPLETE.to_vec(), ready()].concat());
    // The Bind fails before the client's Execute and Sync were read.
    assert_eq!(conn.tags(&bind("s2")), b"B");
    conn.answer(&error("22P02"));
    assert_eq!(conn.tags(&[execute(), sync()].concat()), b"ES");
    assert_eq!(conn.answer(&ready()), ready());
    assert!(conn.plan.is_empty(), "the skipped Execute is not awaited");
    conn.conn.lock().unwrap().clear();
    let sent = conn.tags(&[bind("s2"), sync()].concat());
    assert_eq!(sent, b"PBS");
    let seen = conn.answer(&[PARSE_COMPLETE.to_vec(), bind_complete(), ready()].concat());
    assert_eq!(
        seen,
        [bind_complete(), ready()].concat(),
        "the injected ParseComplete is swallowed"
    );
}

#[test]
fn a_refused_statement_used_again_is_prepared_afresh_before_it_is_refused_again() {
    let mut conn = told_then_dropped(&["a"]);
    conn.send(&bind("s1"));
    conn.answer(&[PARSE_COMPLETE.to_vec(), parameters(), rows(&["a", "b"])].concat());
    conn.send(&[execute(), sync()].concat());
    conn.answer(
        &[
            PARSE_COMPLETE.to_vec(),
            bind_complete(),
            error("0A000"),
            ready(),
        ]
        .concat(),
    );
    // Used again: a shape other than the one the client was told may be the connection's
    // outdated one, so the statement is prepared afresh and described again first.
    let (sent, paused) = conn.send(&bind("s1"));
    let tags: Vec<u8> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!((tags.as_slice(), paused.is_some()), (&b"CPDH"[..], true));
    let learnt = [
        CLOSE_COMPLETE.to_vec(),
        PARSE_COMPLETE.to_vec(),
        parameters(),
        rows(&["a", "b"]),
    ];
    assert!(conn.answer(&learnt.concat()).is_empty());
    let (sent, _) = conn.send(&[execute(), sync()].concat());
    assert_eq!(
        sent.len(),
        4,
        "refused without preparing the refusal again: {sent:?}"
    );
    conn.answer(&[bind_complete(), error("0A000"), ready()].concat());
    assert!(conn.plan.is_empty());
}

#[test]
fn a_bind_whose_portal_is_described_next_is_not_held_back() {
    let mut conn = told_then_dropped(&["a"]);
    // libpq's prepared query: the client reads the rows with the description it gets now.
    let batch = [bind("s1"), describe_portal(), execute(), sync()].concat();
    let (sent, paused) = conn.send(&batch);
    let tags: Vec<u8> = sent.iter().map(|(t, _)| *t).collect();
    assert_eq!((tags.as_slice(), paused), (&b"PBDES"[..], None));
    // A Describe of another portal, or of the statement, is no such promise.
    let mut conn = told_then_dropped(&["a"]);
    let (_, paused) = conn.send(&[bind("s1"), describe_statement("s1"), sync()].concat());
    assert!(paused.is_some());
    let mut conn = told_then_dropped(&["a"]);
    let other_portal = message(b'D', b"Pc1\0");
    let (_, paused) = conn.send(&[bind("s1"), other_portal, sync()].concat());
    assert!(paused.is_some());
}
