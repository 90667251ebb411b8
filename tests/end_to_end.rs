//! Through the sidecar with tokio-postgres: the PostgreSQL protocol works end to end over the
//! emulator's IAM + TLS login to a real PostgreSQL.

mod harness;
mod support;

use std::time::Duration;

use harness::{connect, connect_with_notifications, stack};
use support::unique_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[tokio::test]
async fn simple_and_extended_queries() {
    let stack = stack().await;
    let client = connect(&stack).await;

    let rows = client
        .simple_query("select 1 as one, 'two' as two")
        .await
        .expect("simple query");
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    assert_eq!(row.get("one"), Some("1"));
    assert_eq!(row.get("two"), Some("two"));

    let statement = client
        .prepare("select $1::int4 + 1, $2::text || '!'")
        .await
        .expect("prepare");
    for i in 0..20 {
        let row = client
            .query_one(&statement, &[&i, &"hi"])
            .await
            .expect("extended query");
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(row.get::<_, String>(1), "hi!");
    }
    // The login went through the emulator with a verified token, as the client's user.
    assert_eq!(stack.emulator.logins(), 1);
    let login = stack.emulator.accepted_logins().pop().expect("a login");
    assert_eq!(login.param("user"), Some("postgres"));
    assert_eq!(login.access_key_id.as_deref(), Some(support::TEST_AKID));
    assert!(login.tls);
}

#[tokio::test]
async fn transaction_rollback_and_commit() {
    let stack = stack().await;
    let mut client = connect(&stack).await;
    let table = unique_name("tx");
    client
        .batch_execute(&format!("create table {table} (id int)"))
        .await
        .expect("create");

    let tx = client.transaction().await.expect("begin");
    tx.execute(&format!("insert into {table} values (1), (2)"), &[])
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");
    let count: i64 = client
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);

    let tx = client.transaction().await.expect("begin");
    tx.execute(&format!("insert into {table} values (3)"), &[])
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let count: i64 = client
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1);
    client
        .batch_execute(&format!("drop table {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn error_then_recovery_on_the_same_connection() {
    let stack = stack().await;
    let client = connect(&stack).await;
    let error = client
        .simple_query("select 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(harness::db_error(&error).0, "22012");
    let error = client
        .query("select * from no_such_table_here", &[])
        .await
        .expect_err("undefined table");
    assert_eq!(harness::db_error(&error).0, "42P01");
    // Inside a transaction: the error aborts it, rollback recovers.
    client.batch_execute("begin").await.expect("begin");
    assert!(client.batch_execute("select 1/0").await.is_err());
    let error = client
        .batch_execute("select 1")
        .await
        .expect_err("aborted transaction");
    assert_eq!(harness::db_error(&error).0, "25P02");
    client.batch_execute("rollback").await.expect("rollback");
    let value: i32 = client
        .query_one("select 7", &[])
        .await
        .expect("recovered")
        .get(0);
    assert_eq!(value, 7);
}

#[tokio::test]
async fn copy_in_and_out_of_several_megabytes() {
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use std::pin::pin;

    let stack = stack().await;
    let client = connect(&stack).await;
    let table = unique_name("copy");
    client
        .batch_execute(&format!("create table {table} (id int, payload text)"))
        .await
        .expect("create");

    let rows = 40_000;
    let mut data = String::new();
    for i in 0..rows {
        data.push_str(&format!("{i}\t{}\n", "x".repeat(100 + i % 50)));
    }
    let data_len = data.len();
    assert!(data_len > 4_000_000, "COPY payload should be a few MB");

    let sink = client
        .copy_in::<_, Bytes>(&format!("copy {table} from stdin"))
        .await
        .expect("copy in");
    let mut sink = pin!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk))
            .await
            .expect("send");
    }
    let copied = sink.finish().await.expect("finish copy in");
    assert_eq!(copied, rows as u64);

    let stream = client
        .copy_out(&format!(
            "copy (select * from {table} order by id) to stdout"
        ))
        .await
        .expect("copy out");
    let mut stream = pin!(stream);
    let mut received = Vec::with_capacity(data_len);
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.expect("copy out chunk"));
    }
    assert_eq!(received.len(), data_len);
    assert!(
        received == data.as_bytes(),
        "COPY OUT returns what COPY IN sent"
    );
    client
        .batch_execute(&format!("drop table {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn listen_and_notify() {
    let stack = stack().await;
    let (listener, mut notifications) = connect_with_notifications(&stack).await;
    let channel = unique_name("chan");
    listener
        .batch_execute(&format!("listen {channel}"))
        .await
        .expect("listen");
    let sender = connect(&stack).await;
    sender
        .batch_execute(&format!("notify {channel}, 'hello through the sidecar'"))
        .await
        .expect("notify");
    let notification = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("notification in time")
        .expect("a notification");
    assert_eq!(notification.channel(), channel);
    assert_eq!(notification.payload(), "hello through the sidecar");
}

#[tokio::test]
async fn cancel_a_running_query() {
    let stack = stack().await;
    let client = connect(&stack).await;
    let cancel = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(NoTls).await.expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("query ends soon after the cancel")
        .expect("join");
    let error = result.expect_err("query was cancelled");
    assert_eq!(harness::db_error(&error).0, "57014");
    // RDS Proxy has no cancel: the sidecar closed the upstream connection instead.
    assert_eq!(
        (stack.emulator.cancels(), stack.emulator.ignored_cancels()),
        (0, 0)
    );
}

#[tokio::test]
async fn cancel_with_unknown_key_is_ignored() {
    let stack = stack().await;
    let client = connect(&stack).await;
    let query = tokio::spawn(async move { client.simple_query("select pg_sleep(1)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    raw.write_all(&support::wire::cancel_request(12345, 67890))
        .await
        .expect("write cancel");
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.expect("sidecar closes");
    assert!(rest.is_empty(), "a cancel gets no answer");
    let result = query.await.expect("join");
    assert!(result.is_ok(), "the query was not cancelled: {result:?}");
    assert_eq!(stack.emulator.cancels(), 0);
}

#[tokio::test]
async fn fifty_concurrent_clients() {
    let stack = std::sync::Arc::new(stack().await);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let stack = stack.clone();
            tokio::spawn(async move {
                let client = connect(&stack).await;
                let mut sum = 0i64;
                for j in 0..10i64 {
                    let row = client
                        .query_one("select $1::int8 * 2", &[&(i * 100 + j)])
                        .await
                        .expect("query");
                    sum += row.get::<_, i64>(0);
                }
                sum
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let i = i as i64;
        let expected: i64 = (0..10).map(|j| (i * 100 + j) * 2).sum();
        assert_eq!(task.await.expect("join"), expected);
    }
    // Session mode, --pool-size 20 by default: never more upstream logins than that.
    let logins = stack.emulator.logins();
    assert!((1..=20).contains(&logins), "{logins} logins");
}

#[tokio::test]
async fn ssl_and_gss_requests_are_declined_and_startup_parameters_applied() {
    use support::wire;
    let stack = stack().await;
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    raw.write_all(&wire::gssenc_request()).await.expect("gss");
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    raw.write_all(&wire::ssl_request()).await.expect("ssl");
    raw.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    // search_path would make RDS Proxy refuse the login: the sidecar applies it after login.
    raw.write_all(&wire::startup_message(&[
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", "e2e-app"),
        ("search_path", "public"),
    ]))
    .await
    .expect("startup");
    let mut tags = Vec::new();
    let mut notice = String::new();
    loop {
        let (tag, body) = wire::read_message(&mut raw).await.expect("message");
        if tag == b'N' {
            notice = wire::parse_error_fields(&body)
                .get(&'M')
                .cloned()
                .unwrap_or_default();
        }
        tags.push(tag);
        if tag == b'Z' || tag == b'E' {
            break;
        }
    }
    assert_eq!(
        tags.first(),
        Some(&b'R'),
        "AuthenticationOk first: {tags:?}"
    );
    assert!(notice.is_empty(), "nothing is dropped: {notice}");
    assert!(tags.contains(&b'S') && tags.contains(&b'K'), "{tags:?}");
    assert_eq!(tags.last(), Some(&b'Z'));
    let login = stack.emulator.accepted_logins().pop().expect("a login");
    assert_eq!(login.param("application_name"), Some("e2e-app"));
    assert_eq!(login.param("search_path"), None);
    let rows = wire::simple_query(&mut raw, "show search_path")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("public".to_owned())]]);
    raw.write_all(&wire::terminate_message())
        .await
        .expect("terminate");
}

#[tokio::test]
async fn garbage_instead_of_a_startup_packet_gets_a_protocol_error() {
    let stack = stack().await;
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let (tag, body) = support::wire::read_message(&mut raw)
        .await
        .expect("error response");
    assert_eq!(tag, b'E');
    let fields = support::wire::parse_error_fields(&body);
    assert_eq!(fields.get(&'C').map(String::as_str), Some("08P01"));
    // The sidecar still serves others.
    let client = connect(&stack).await;
    client.simple_query("select 1").await.expect("query");
}

#[tokio::test]
async fn protocol_3_2_is_negotiated_down_to_3_0() {
    use support::wire;
    let stack = stack().await;
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    let mut rest = Vec::new();
    for (k, v) in [
        ("user", "postgres"),
        ("database", "postgres"),
        ("_pq_.future", "1"),
    ] {
        rest.extend_from_slice(k.as_bytes());
        rest.push(0);
        rest.extend_from_slice(v.as_bytes());
        rest.push(0);
    }
    rest.push(0);
    raw.write_all(&wire::startup_packet(0x0003_0002, &rest))
        .await
        .expect("startup 3.2");
    let (tag, body) = wire::read_message(&mut raw).await.expect("first message");
    assert_eq!(tag, b'v', "NegotiateProtocolVersion first");
    // PostgreSQL sends the full version number (3.0 = 196608) here, and libpq 18 expects it.
    assert_eq!(&body[..4], &196_608i32.to_be_bytes(), "newest version 3.0");
    assert_eq!(&body[4..8], &1i32.to_be_bytes(), "one unsupported option");
    assert_eq!(wire::first_cstr(&body[8..]), "_pq_.future");
    let (tag, _) = wire::read_message(&mut raw).await.expect("auth");
    assert_eq!(tag, b'R');
    raw.write_all(&wire::terminate_message())
        .await
        .expect("terminate");
}

/// Reads a raw connection's messages up to its next ReadyForQuery: the tags, and the text of
/// each DataRow's first column.
async fn messages_to_ready(raw: &mut TcpStream) -> (Vec<u8>, Vec<String>) {
    use support::wire;
    let mut tags = Vec::new();
    let mut values = Vec::new();
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), wire::read_message(raw));
        let (tag, body) = read.await.expect("within 10 s").expect("message");
        if tag == b'D' {
            // One column: its 2-byte count, 4-byte length, then the text.
            values.push(String::from_utf8_lossy(&body[6..]).into_owned());
        }
        tags.push(tag);
        if tag == b'Z' {
            return (tags, values);
        }
    }
}

/// The startup packet and a query in one write (read by the sidecar in one `recv`): the
/// query is answered after the login, in both pool modes, and so is the next one.
#[tokio::test]
async fn a_query_sent_with_the_startup_packet_is_answered() {
    use rds_iam_sidecar::pool::PoolMode;
    use support::wire;
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let stack = harness::stack_with(
            |c| c.pool.mode = mode,
            harness::credentials(support::TEST_AKID, support::TEST_SECRET),
        )
        .await;
        let mut raw = TcpStream::connect(stack.sidecar.addr())
            .await
            .expect("connect");
        let mut bytes = wire::startup_message(&[("user", "postgres"), ("database", "postgres")]);
        bytes.extend(wire::query_message("select 'carried'"));
        raw.write_all(&bytes).await.expect("startup and query");
        let (tags, values) = messages_to_ready(&mut raw).await;
        assert_eq!(tags.first(), Some(&b'R'), "{mode:?}: {tags:?}");
        assert!(
            values.is_empty(),
            "{mode:?}: the login's own ReadyForQuery first"
        );
        let (tags, values) = messages_to_ready(&mut raw).await;
        assert_eq!(values, ["carried"], "{mode:?}: {tags:?}");
        let rows = wire::simple_query(&mut raw, "select 'next'")
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(rows, vec![vec![Some("next".to_owned())]]);
    }
}

/// A startup packet that comes a few bytes at a time (a slow client, a packet cut by the
/// network) is read whole; and an SSLRequest with the startup packet right behind it in one
/// write is declined, then the startup packet read from what came with it.
#[tokio::test]
async fn a_startup_packet_in_pieces_or_behind_an_ssl_request_logs_in() {
    use support::wire;
    let stack = stack().await;
    let startup = wire::startup_message(&[("user", "postgres"), ("database", "postgres")]);
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    for piece in startup.chunks(3) {
        raw.write_all(piece).await.expect("piece");
        raw.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (tags, _) = messages_to_ready(&mut raw).await;
    assert_eq!(tags.first(), Some(&b'R'), "{tags:?}");
    let rows = wire::simple_query(&mut raw, "select 'pieces'")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("pieces".to_owned())]]);

    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    let mut bytes = wire::ssl_request();
    bytes.extend(&startup);
    raw.write_all(&bytes)
        .await
        .expect("ssl request and startup");
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"N");
    let (tags, _) = messages_to_ready(&mut raw).await;
    assert_eq!(tags.first(), Some(&b'R'), "{tags:?}");
    let rows = wire::simple_query(&mut raw, "select 'behind'")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("behind".to_owned())]]);
}

/// A client that connects and says nothing for a while is still logged in when its startup
/// packet comes: the sidecar's first read, tried at once, finds nothing, and the wait for the
/// packet must still see it arrive (issue 16 reads a new client before epoll says anything).
#[tokio::test]
async fn a_client_silent_after_connecting_logs_in_when_it_speaks() {
    use support::wire;
    let stack = stack().await;
    let mut raw = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let startup = wire::startup_message(&[("user", "postgres"), ("database", "postgres")]);
    raw.write_all(&startup).await.expect("startup");
    let (tags, _) = tokio::time::timeout(Duration::from_secs(10), messages_to_ready(&mut raw))
        .await
        .expect("a login within 10 s");
    assert_eq!(tags.first(), Some(&b'R'), "{tags:?}");
    let rows = wire::simple_query(&mut raw, "select 'late'")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("late".to_owned())]]);
}

#[tokio::test]
async fn pipelined_queries_on_one_connection() {
    let stack = stack().await;
    let client = connect(&stack).await;
    let statement = client
        .prepare("select $1::int4 * 3")
        .await
        .expect("prepare");
    // tokio-postgres pipelines requests issued concurrently on one connection.
    let queries = (0..200).map(|i| {
        let client = &client;
        let statement = &statement;
        async move {
            client
                .query_one(statement, &[&i])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = futures_util::future::join_all(queries).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.expect("pipelined query"), i as i32 * 3);
    }
}

#[tokio::test]
async fn every_listen_address_serves() {
    let stack = harness::stack_with(
        |c| {
            c.listen = vec![
                "127.0.0.1:0".parse().expect("addr"),
                "127.0.0.1:0".parse().expect("addr"),
            ]
        },
        harness::credentials(support::TEST_AKID, support::TEST_SECRET),
    )
    .await;
    assert_eq!(stack.sidecar.tcp_addrs().len(), 2);
    for addr in stack.sidecar.tcp_addrs() {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                addr.port()
            ),
            NoTls,
        )
        .await
        .expect("connect");
        tokio::spawn(connection);
        client.simple_query("select 1").await.expect("query");
    }
    let logins = stack.emulator.logins();
    assert!((1..=2).contains(&logins), "{logins} logins");
}

#[tokio::test]
async fn db_user_overrides_the_clients_user() {
    let stack = harness::stack_with(
        |c| c.frontend.db_user = Some("postgres".to_owned()),
        harness::credentials(support::TEST_AKID, support::TEST_SECRET),
    )
    .await;
    let client = harness::try_connect(&stack, "whoever_the_app_says", "postgres")
        .await
        .expect("connect");
    let user: String = client
        .query_one("select current_user::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(user, "postgres");
    let login = stack.emulator.accepted_logins().pop().expect("a login");
    assert_eq!(
        login.param("user"),
        Some("postgres"),
        "token and startup use --db-user"
    );
}
