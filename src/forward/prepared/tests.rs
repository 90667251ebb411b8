//! Statement renaming end to end: client messages through the rewriter, server answers back.

use super::*;

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

fn bind(statement: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(statement.as_bytes());
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    message(b'B', &body)
}

fn sync() -> Vec<u8> {
    message(b'S', &[])
}

fn names_in(bytes: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 5 <= bytes.len() {
        let tag = bytes[pos];
        let len = u32::from_be_bytes([
            bytes[pos + 1],
            bytes[pos + 2],
            bytes[pos + 3],
            bytes[pos + 4],
        ]) as usize;
        let body = &bytes[pos + 5..pos + 1 + len];
        let name = match tag {
            b'P' => cstr(body).map(|(n, _)| n),
            b'B' => cstr(body).and_then(|(_, r)| cstr(r)).map(|(n, _)| n),
            _ => Some(&b""[..]),
        };
        out.push((
            tag,
            String::from_utf8_lossy(name.unwrap_or_default()).into_owned(),
        ));
        pos += 1 + len;
    }
    out
}

#[test]
fn second_connection_gets_the_parse_again_and_its_parse_complete_is_swallowed() {
    let plan = Plan::default();
    let mut statements = ClientStatements::default();
    let first_conn = Mutex::new(ServerStatements::default());
    let mut rewriter = ClientRewriter::new();
    let mut out = Vec::new();
    let batch = [parse("s1", "select 1"), bind("s1"), sync()].concat();
    rewriter
        .process(&batch, &mut statements, &first_conn, &plan, &mut out)
        .expect("valid");
    let sent = names_in(&out);
    assert_eq!(sent[0].0, b'P');
    assert!(sent[0].1.starts_with("rdsiam_"));
    assert_eq!(sent[1], (b'B', sent[0].1.clone()));

    // Server answers 1, 2, Z: all forwarded.
    let mut server = ServerRewriter::default();
    let answers = [
        PARSE_COMPLETE.to_vec(),
        message(b'2', &[]),
        message(b'Z', b"I"),
    ]
    .concat();
    let mut to_client = Vec::new();
    server
        .process(&answers, &plan, &first_conn, &mut to_client)
        .expect("valid");
    assert_eq!(to_client, answers);
    assert!(plan.is_empty());

    // Next transaction on another connection: Bind alone gets the Parse injected.
    let second_conn = Mutex::new(ServerStatements::default());
    out.clear();
    rewriter
        .process(
            &[bind("s1"), sync()].concat(),
            &mut statements,
            &second_conn,
            &plan,
            &mut out,
        )
        .expect("valid");
    let sent = names_in(&out);
    assert_eq!(sent.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"PBS");
    let mut to_client = Vec::new();
    server
        .process(&answers, &plan, &second_conn, &mut to_client)
        .expect("valid");
    assert_eq!(
        to_client,
        [message(b'2', &[]), message(b'Z', b"I")].concat()
    );
    assert!(plan.is_empty());
}

#[test]
fn a_parse_the_connection_has_is_answered_locally_in_order() {
    let plan = Plan::default();
    let mut statements = ClientStatements::default();
    let conn = Mutex::new(ServerStatements::default());
    let mut rewriter = ClientRewriter::new();
    let mut out = Vec::new();
    rewriter
        .process(
            &[parse("a", "select 1"), sync()].concat(),
            &mut statements,
            &conn,
            &plan,
            &mut out,
        )
        .expect("valid");
    let mut server = ServerRewriter::default();
    let mut to_client = Vec::new();
    server
        .process(
            &[PARSE_COMPLETE.to_vec(), message(b'Z', b"I")].concat(),
            &plan,
            &conn,
            &mut to_client,
        )
        .expect("valid");
    // Another client prepares the same SQL under another name: no Parse is sent.
    let mut other = ClientStatements::default();
    out.clear();
    rewriter
        .process(
            &[parse("b", "select 1"), bind("b"), sync()].concat(),
            &mut other,
            &conn,
            &plan,
            &mut out,
        )
        .expect("valid");
    assert_eq!(
        names_in(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        b"BS"
    );
    to_client.clear();
    server
        .process(
            &[message(b'2', &[]), message(b'Z', b"I")].concat(),
            &plan,
            &conn,
            &mut to_client,
        )
        .expect("valid");
    assert_eq!(
        to_client,
        [
            PARSE_COMPLETE.to_vec(),
            message(b'2', &[]),
            message(b'Z', b"I")
        ]
        .concat()
    );
}

#[test]
fn same_name_different_sql_gets_different_server_statements() {
    assert_ne!(
        server_name(b"select 1", b"\0\0"),
        server_name(b"select 2", b"\0\0")
    );
    assert_eq!(
        server_name(b"select 1", b"\0\0"),
        server_name(b"select 1", b"\0\0")
    );
}

/// One connection with statement `s1` (`select 1`) prepared and bound once by a client.
struct Prepared {
    plan: Plan,
    statements: ClientStatements,
    conn: Mutex<ServerStatements>,
    client: ClientRewriter,
    server: ServerRewriter,
}

impl Prepared {
    fn new() -> Self {
        let mut prepared = Prepared {
            plan: Plan::default(),
            statements: ClientStatements::default(),
            conn: Mutex::new(ServerStatements::default()),
            client: ClientRewriter::new(),
            server: ServerRewriter::default(),
        };
        let sent = prepared.send(&[parse("s1", "select 1"), bind("s1"), sync()].concat());
        assert_eq!(sent, b"PBS");
        prepared.answer(&[PARSE_COMPLETE.to_vec(), message(b'2', &[]), ready()].concat());
        prepared
    }

    /// The tags of what the client's `bytes` became for the server.
    fn send(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.client
            .process(
                bytes,
                &mut self.statements,
                &self.conn,
                &self.plan,
                &mut out,
            )
            .expect("valid");
        names_in(&out).iter().map(|(t, _)| *t).collect()
    }

    /// What the client gets of the server's `bytes`, fed one byte at a time (every message
    /// split across chunks).
    fn answer(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut to_client = Vec::new();
        for byte in bytes.chunks(1) {
            self.server
                .process(byte, &self.plan, &self.conn, &mut to_client)
                .expect("valid");
        }
        to_client
    }
}

fn ready() -> Vec<u8> {
    message(b'Z', b"I")
}

fn error(code: &str) -> Vec<u8> {
    let mut body = b"SERROR\0VERROR\0C".to_vec();
    body.extend_from_slice(code.as_bytes());
    body.extend_from_slice(b"\0Mcached plan must not change result type\0\0");
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
        let mut conn = Prepared::new();
        assert_eq!(conn.send(&[bind("s1"), sync()].concat()), b"BS", "held");
        conn.answer(&[message(b'2', &[]), ready()].concat());
        assert_eq!(conn.send(&query(tag)), b"Q");
        let mut complete = tag.as_bytes().to_vec();
        complete.push(0);
        conn.answer(&[message(b'C', &complete), ready()].concat());
        assert_eq!(
            conn.send(&[bind("s1"), sync()].concat()),
            b"PBS",
            "after {tag} the statement is prepared again"
        );
        let seen = conn.answer(&[PARSE_COMPLETE.to_vec(), message(b'2', &[]), ready()].concat());
        assert_eq!(seen, [message(b'2', &[]), ready()].concat());
    }
}

#[test]
fn other_command_tags_leave_the_statements_alone() {
    let mut conn = Prepared::new();
    conn.send(&query("select 1"));
    // As long as "DISCARD ALL\0" but another tag.
    conn.answer(&[message(b'C', b"SELECT 12345\0"), ready()].concat());
    assert_eq!(conn.send(&[bind("s1"), sync()].concat()), b"BS");
}

#[test]
fn a_stale_plan_is_closed_and_prepared_again_at_its_next_use() {
    let mut conn = Prepared::new();
    assert_eq!(conn.send(&[bind("s1"), sync()].concat()), b"BS");
    // After an ALTER TABLE: the Bind fails and the client is told, as PostgreSQL tells it.
    let failed = [error("0A000"), ready()].concat();
    assert_eq!(conn.answer(&failed), failed);
    // The client prepares again (any name): the stale statement is closed first, and both
    // answers the client did not ask for are swallowed.
    assert_eq!(
        conn.send(&[parse("s2", "select 1"), bind("s2"), sync()].concat()),
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
    assert_eq!(conn.send(&[bind("s1"), sync()].concat()), b"BS", "once");
}

#[test]
fn a_statement_the_server_lost_is_prepared_again_without_a_close() {
    let mut conn = Prepared::new();
    conn.send(&[bind("s1"), sync()].concat());
    conn.answer(&[error("26000"), ready()].concat());
    assert_eq!(conn.send(&[bind("s1"), sync()].concat()), b"PBS");
}

#[test]
fn an_error_in_a_statement_of_the_clients_own_changes_nothing() {
    let mut conn = Prepared::new();
    conn.send(&[bind("s1"), sync()].concat());
    conn.answer(&[error("22012"), ready()].concat());
    assert_eq!(conn.send(&[bind("s1"), sync()].concat()), b"BS");
}
