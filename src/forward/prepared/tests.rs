//! Statement renaming end to end: client messages through the rewriter, server answers back.

use super::*;

pub(super) fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

pub(super) fn bind(statement: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(statement.as_bytes());
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    message(b'B', &body)
}

pub(super) fn sync() -> Vec<u8> {
    message(b'S', &[])
}

/// One client and one connection.
pub(super) struct Conn {
    pub(super) plan: Plan,
    pub(super) statements: ClientStatements,
    pub(super) conn: Mutex<ServerStatements>,
    pub(super) client: ClientRewriter,
    pub(super) server: ServerRewriter,
}

impl Conn {
    pub(super) fn new() -> Self {
        Conn {
            plan: Plan::default(),
            statements: ClientStatements::default(),
            conn: Mutex::new(ServerStatements::default()),
            client: ClientRewriter::new(),
            server: ServerRewriter::default(),
        }
    }

    /// What the client's `bytes` became for the server (tags and names), and where the
    /// rewrite paused, if it did.
    pub(super) fn send(&mut self, bytes: &[u8]) -> (Vec<(u8, String)>, Option<usize>) {
        let mut out = Vec::new();
        let report = self
            .client
            .process(
                bytes,
                &mut self.statements,
                &self.conn,
                &self.plan,
                &mut out,
                false,
            )
            .expect("valid");
        (names_in(&out), report.paused_at)
    }

    /// The tags of what the client's `bytes` became (the rewrite must not pause).
    pub(super) fn tags(&mut self, bytes: &[u8]) -> Vec<u8> {
        let (sent, paused) = self.send(bytes);
        assert_eq!(paused, None);
        sent.iter().map(|(t, _)| *t).collect()
    }

    /// What the client gets of the server's `bytes`, fed one byte at a time (every message
    /// split across chunks).
    pub(super) fn answer(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut to_client = Vec::new();
        for byte in bytes.chunks(1) {
            self.server
                .process(byte, &self.plan, &self.conn, &mut to_client)
                .expect("valid");
        }
        to_client
    }

    pub(super) fn learning(&self) -> bool {
        self.plan
            .lock()
            .iter()
            .any(|e| matches!(e, Expect::Learn(_)))
    }
}

pub(super) fn names_in(bytes: &[u8]) -> Vec<(u8, String)> {
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
        .process(&batch, &mut statements, &first_conn, &plan, &mut out, false)
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
            false,
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
fn a_parse_the_connection_has_is_parsed_afresh_after_a_swallowed_close() {
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
            false,
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
    // Another client prepares the same SQL under another name: parsed afresh, as PostgreSQL
    // would for its session (the held plan may predate a schema change).
    let mut other = ClientStatements::default();
    out.clear();
    rewriter
        .process(
            &[parse("b", "select 1"), bind("b"), sync()].concat(),
            &mut other,
            &conn,
            &plan,
            &mut out,
            false,
        )
        .expect("valid");
    assert_eq!(
        names_in(&out).iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        b"CPBS"
    );
    to_client.clear();
    let answers = [CLOSE_COMPLETE, PARSE_COMPLETE, [b'2', 0, 0, 0, 4]].concat();
    let answers = [answers, message(b'Z', b"I")].concat();
    server
        .process(&answers, &plan, &conn, &mut to_client)
        .expect("valid");
    let seen = [
        PARSE_COMPLETE.to_vec(),
        message(b'2', &[]),
        message(b'Z', b"I"),
    ];
    assert_eq!(to_client, seen.concat());
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

/// COPY FROM STDIN begun with Bind, Execute and Sync, then CopyData, CopyDone and Sync: the
/// server ignored the first Sync (copy-in mode), so its entry goes once the COPY ends, and the
/// one ReadyForQuery leaves nothing planned. Not while the server is outside copy-in mode: a
/// stray CopyDone forgets nothing.
#[test]
fn a_sync_sent_in_copy_in_mode_expects_no_answer() {
    for server_in_copy in [true, false] {
        let mut conn = Conn::new();
        let execute = message(b'E', &[0, 0, 0, 0, 0]);
        conn.tags(&[parse("", "copy t from stdin"), bind(""), execute, sync()].concat());
        let copy_in = message(b'G', &[0, 0, 1, 0, 0]);
        conn.answer(&[PARSE_COMPLETE.to_vec(), message(b'2', &[]), copy_in].concat());
        let mut out = Vec::new();
        let copy_end = [message(b'd', b"1\n"), message(b'c', &[]), sync()].concat();
        let report = conn
            .client
            .process(
                &copy_end,
                &mut conn.statements,
                &conn.conn,
                &conn.plan,
                &mut out,
                server_in_copy,
            )
            .expect("valid");
        assert_eq!(out, copy_end, "forwarded unchanged");
        assert_eq!(report.sync_points, 1);
        assert_eq!(report.ignored_syncs, u32::from(server_in_copy));
        let done = [message(b'C', b"COPY 1\0"), message(b'Z', b"I")].concat();
        assert_eq!(conn.answer(&done), done);
        assert_eq!(conn.plan.is_empty(), server_in_copy);
    }
}
