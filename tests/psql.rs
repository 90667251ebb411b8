//! Through the sidecar with the real libpq clients: `psql` (simple queries, a transaction with
//! rollback, an error then recovery, `\copy` of a few MB both ways, the unix socket) and a short
//! `pgbench` run in the simple, extended and prepared protocols.

mod harness;
mod support;

use std::process::{Command, Output};

use harness::{Stack, stack, stack_with};
use support::{TEST_AKID, TEST_SECRET, unique_name};

fn tool_available(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// psql for `postgres@postgres` at `host:port`, unaligned and tuples only, no psqlrc.
fn psql_command(host: &str, port: u16) -> Command {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-At", "-h", host, "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD");
    command
}

fn psql(host: &str, port: u16, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut command = psql_command(host, port);
    command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn psql");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .expect("write psql stdin");
    }
    child.wait_with_output().expect("psql output")
}

async fn psql_async(stack: &Stack, args: Vec<String>, stdin: Option<String>) -> Output {
    let port = stack.sidecar.addr().port();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        psql("127.0.0.1", port, &args, stdin.as_deref())
    })
    .await
    .expect("join psql")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn psql_queries_transactions_and_errors() {
    if !tool_available("psql") {
        eprintln!("SKIPPED psql_queries_transactions_and_errors: psql is not installed");
        return;
    }
    let stack = stack().await;
    let output = psql_async(&stack, vec!["-c".into(), "select 6 * 7".into()], None).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).trim(), "42");

    let table = unique_name("psql_tx");
    let script = format!(
        "create table {table} (id int);\n\
         begin;\n\
         insert into {table} values (1), (2);\n\
         rollback;\n\
         select 'count=' || count(*) from {table};\n\
         select 1/0;\n\
         select 'recovered';\n\
         begin; insert into {table} values (3); commit;\n\
         select 'after=' || count(*) from {table};\n\
         drop table {table};\n"
    );
    let output = psql_async(
        &stack,
        vec!["-v".into(), "ON_ERROR_STOP=0".into()],
        Some(script),
    )
    .await;
    let out = stdout(&output);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(out.contains("count=0"), "{out}\n{err}");
    assert!(err.contains("division by zero"), "{err}");
    assert!(out.contains("recovered"), "{out}");
    assert!(out.contains("after=1"), "{out}");
    assert_eq!(
        stack.emulator.logins(),
        1,
        "the second psql run reuses the pooled connection"
    );
}

/// libpq sends PGTZ and PGDATESTYLE as `timezone` and `datestyle`: RDS Proxy gets them in the
/// spelling it documents (the emulator, like the proxy as far as is known, reads names exactly).
#[tokio::test]
async fn psql_with_pgtz_and_pgdatestyle_set() {
    if !tool_available("psql") {
        eprintln!("SKIPPED psql_with_pgtz_and_pgdatestyle_set: psql is not installed");
        return;
    }
    let stack = stack().await;
    let port = stack.sidecar.addr().port();
    let output = tokio::task::spawn_blocking(move || {
        psql_command("127.0.0.1", port)
            .args([
                "-c",
                "select current_setting('TimeZone') || '|' || current_setting('DateStyle')",
            ])
            .env("PGTZ", "America/New_York")
            .env("PGDATESTYLE", "ISO, DMY")
            .output()
            .expect("psql")
    })
    .await
    .expect("join psql");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).trim(), "America/New_York|ISO, DMY");
    assert_eq!(
        stack.emulator.pinned_sessions(),
        0,
        "in the packet, not SET"
    );
}

#[tokio::test]
async fn psql_copy_both_ways() {
    if !tool_available("psql") {
        eprintln!("SKIPPED psql_copy_both_ways: psql is not installed");
        return;
    }
    let stack = stack().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.tsv");
    let exported = dir.path().join("out.tsv");
    let mut data = String::new();
    for i in 0..30_000 {
        data.push_str(&format!("{i}\t{}\n", "y".repeat(80 + i % 40)));
    }
    std::fs::write(&input, &data).expect("write input");
    let table = unique_name("psql_copy");
    let script = format!(
        "create table {table} (id int, payload text);\n\
         \\copy {table} from '{}'\n\
         \\copy (select * from {table} order by id) to '{}'\n\
         drop table {table};\n",
        input.display(),
        exported.display()
    );
    let output = psql_async(
        &stack,
        vec!["-v".into(), "ON_ERROR_STOP=1".into()],
        Some(script),
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("COPY 30000"),
        "{}",
        stdout(&output)
    );
    let back = std::fs::read_to_string(&exported).expect("read export");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "exported data equals imported data");
}

#[tokio::test]
async fn psql_large_objects_use_the_function_call_protocol() {
    if !tool_available("psql") {
        eprintln!(
            "SKIPPED psql_large_objects_use_the_function_call_protocol: psql is not installed"
        );
        return;
    }
    let stack = stack().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = dir.path().join("blob.bin");
    let exported = dir.path().join("blob.out");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&blob, &content).expect("write blob");
    // psql's \lo_import / \lo_export call libpq's lo_* functions: FunctionCall ('F') messages.
    let script = format!(
        "begin;\n\\lo_import '{}'\n\\set oid :LASTOID\n\\lo_export :oid '{}'\n\
         select 'len=' || length(lo_get(:oid));\nselect lo_unlink(:oid);\ncommit;\n",
        blob.display(),
        exported.display()
    );
    let output = psql_async(
        &stack,
        vec!["-v".into(), "ON_ERROR_STOP=1".into()],
        Some(script),
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).contains("len=300000"),
        "{}",
        stdout(&output)
    );
    assert!(std::fs::read(&exported).expect("exported") == content);
}

#[tokio::test]
async fn psql_over_the_unix_socket() {
    if !tool_available("psql") {
        eprintln!("SKIPPED psql_over_the_unix_socket: psql is not installed");
        return;
    }
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let dir = socket_dir.path().to_path_buf();
    let stack = stack_with(
        |c| c.unix_socket = Some(dir),
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let port = stack.sidecar.addr().port();
    let socket = stack.sidecar.unix_socket().cloned().expect("socket path");
    assert_eq!(
        socket,
        socket_dir.path().join(format!(".s.PGSQL.{port}")),
        "libpq's socket name"
    );
    let host = socket_dir.path().to_str().expect("utf-8").to_owned();
    let output = tokio::task::spawn_blocking(move || {
        psql(&host, port, &["-c", "select current_user"], None)
    })
    .await
    .expect("join");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).trim(), "postgres");
}

#[tokio::test]
async fn pgbench_in_all_three_protocols() {
    if !tool_available("pgbench") {
        eprintln!("SKIPPED pgbench_in_all_three_protocols: pgbench is not installed");
        return;
    }
    let stack = stack().await;
    let port = stack.sidecar.addr().port().to_string();
    let script_dir = tempfile::tempdir().expect("tempdir");
    let script = script_dir.path().join("select.sql");
    std::fs::write(&script, "\\set x random(1, 1000)\nselect :x::int * 2;\n").expect("script");
    for mode in ["simple", "extended", "prepared"] {
        let port = port.clone();
        let script = script.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("pgbench")
                .args(["-n", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .args(["-c", "4", "-t", "50", "-M", mode, "-f"])
                .arg(&script)
                .arg("postgres")
                .output()
                .expect("run pgbench")
        })
        .await
        .expect("join");
        let out = stdout(&output);
        assert!(output.status.success(), "{mode}: {output:?}");
        assert!(
            out.contains("number of transactions actually processed: 200/200"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    // 4 clients at once plus pgbench's own first connection at most; runs reuse the pool.
    let logins = stack.emulator.logins();
    assert!((1..=5).contains(&logins), "{logins} logins");
}
