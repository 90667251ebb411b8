//! `rds-iam-sidecar exec -- COMMAND`: the command runs once the sidecar is ready, reaches the
//! database through `PGHOST`/`PGPORT`, its exit code (or 128 + the signal that ended it) is
//! the process's, signals are passed to it, and a sidecar that cannot become ready never starts
//! it (exit 2).

mod harness;
mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use harness::binary::{KillOnDrop, free_port, sidecar_command};
use support::{DEFAULT_ENDPOINT_HOST, TEST_AKID, TEST_SECRET, TestPki};

/// `exec` against `upstream_addr` for the default endpoint, with static credentials, running
/// `sh -c script`.
fn exec_command(
    upstream_addr: &str,
    pki: &TestPki,
    home: &std::path::Path,
    extra: &[&str],
    script: &str,
) -> std::process::Command {
    let mut command = sidecar_command(home);
    command
        .args([
            "exec",
            "--upstream",
            &format!("{DEFAULT_ENDPOINT_HOST}:5432"),
        ])
        .args(["--upstream-addr", upstream_addr, "--admin-listen", "off"])
        .args(["--ca-file", pki.ca_file().to_str().expect("utf-8 path")])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(extra)
        .args(["--ready-timeout", "3s", "--", "sh", "-c", script])
        .env("AWS_ACCESS_KEY_ID", TEST_AKID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET);
    command
}

async fn finished(mut command: std::process::Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run exec"))
        .await
        .expect("join")
}

#[tokio::test]
async fn the_command_reaches_the_database_and_its_exit_code_is_the_processs() {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    let has_psql = std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let query = if has_psql {
        "psql -XAt -U postgres -d postgres -c \"select 'through '||current_user\""
    } else {
        "echo through postgres"
    };
    let script = format!("echo \"$PGHOST\"; {query}; exit 7");
    let output = finished(exec_command(
        &emulator.addr.to_string(),
        &pki,
        home.path(),
        &[],
        &script,
    ))
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(7),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["127.0.0.1", "through postgres"]);
    // Killed by a signal: 128 + its number.
    let output = finished(exec_command(
        &emulator.addr.to_string(),
        &pki,
        home.path(),
        &[],
        "kill -9 $$",
    ))
    .await;
    assert_eq!(output.status.code(), Some(137));
}

/// Spawns `command` (output discarded) and waits until its script touched `marker`.
async fn started_command(
    mut command: std::process::Command,
    marker: &std::path::Path,
) -> KillOnDrop {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let child = KillOnDrop(command.spawn().expect("spawn exec"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !marker.exists() {
        assert!(std::time::Instant::now() < deadline, "the command started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

#[tokio::test]
async fn signals_are_passed_to_the_command_and_its_answer_is_the_exit_code() {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    let ready = home.path().join("started");
    let script = format!(
        "trap 'exit 3' TERM; touch {}; while true; do sleep 0.1; done",
        ready.display()
    );
    let command = exec_command(&emulator.addr.to_string(), &pki, home.path(), &[], &script);
    let mut child = started_command(command, &ready).await;
    child.signal("TERM");
    let status = child.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "the command's answer to SIGTERM");
}

#[tokio::test]
async fn a_sidecar_that_cannot_become_ready_never_starts_the_command() {
    let pki = TestPki::new();
    let home = tempfile::tempdir().expect("tempdir");
    let marker = home.path().join("ran");
    let closed = format!("127.0.0.1:{}", free_port());
    let script = format!("touch {}", marker.display());
    let command = exec_command(
        &closed,
        &pki,
        home.path(),
        &["--connect-timeout", "1s"],
        &script,
    );
    let output = finished(command).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the command was not started"), "{stderr}");
    assert!(!marker.exists(), "the command never ran");
}

#[tokio::test]
async fn as_pid_1_it_reaps_the_orphans_the_command_leaves() {
    let unshare_works = std::process::Command::new("unshare")
        .args(["--fork", "--pid", "--mount-proc", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let has_ps = std::process::Command::new("ps")
        .arg("-e")
        .output()
        .is_ok_and(|o| o.status.success());
    if !unshare_works || !has_ps {
        eprintln!("SKIPPED: needs unshare (a PID namespace) and ps");
        return;
    }
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    // The inner shell leaves a sleep behind, which becomes PID 1's (the sidecar's) child; once
    // it exits, it is a zombie unless PID 1 collects it.
    let script = "sh -c 'sleep 0.2 &'; sleep 1; ps -e -o stat= | grep -c '^Z' || true";
    let exec = exec_command(&emulator.addr.to_string(), &pki, home.path(), &[], script);
    let mut command = std::process::Command::new("unshare");
    command
        .args(["--fork", "--pid", "--mount-proc"])
        .arg(exec.get_program())
        .args(exec.get_args())
        .envs(exec.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("PGHOST");
    let output = finished(command).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "0",
        "no zombies left: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0));
}

#[tokio::test]
async fn a_bad_setting_exits_2_without_starting_the_command() {
    let pki = TestPki::new();
    let home = tempfile::tempdir().expect("tempdir");
    let marker = home.path().join("ran");
    let script = format!("touch {}", marker.display());
    let command = exec_command(
        "127.0.0.1:1",
        &pki,
        home.path(),
        &["--pool-size", "0"],
        &script,
    );
    let output = finished(command).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("pool-size"));
    assert!(!marker.exists(), "the command never ran");
}

#[tokio::test]
async fn after_sigterm_the_commands_transaction_still_finishes() {
    if !std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED: psql not installed");
        return;
    }
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    let (started, out) = (home.path().join("started"), home.path().join("out"));
    // The app's shutdown: on SIGTERM it finishes a transaction, then exits.
    let script = format!(
        "trap 'psql -XAt -U postgres -d postgres -c \"begin\" -c \"select pg_sleep(0.5)\" \
         -c \"select 42\" -c \"commit\" > {out}; exit 0' TERM; touch {started}; \
         while true; do sleep 0.1; done",
        out = out.display(),
        started = started.display()
    );
    let command = exec_command(&emulator.addr.to_string(), &pki, home.path(), &[], &script);
    let mut child = started_command(command, &started).await;
    child.signal("TERM");
    let status = child.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    let written = std::fs::read_to_string(&out).expect("the transaction's output");
    assert!(written.lines().any(|l| l == "42"), "{written}");
}
