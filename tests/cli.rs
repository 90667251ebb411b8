//! The `rds-iam-sidecar` binary as users run it: configuration errors (exit 2, one line naming
//! the flag), the `token` subcommand, the real AWS credentials chain against a loopback ECS
//! credentials endpoint that rotates keys, and logs that never contain a secret.

mod harness;
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::binary::{KillOnDrop, free_port, sidecar_command, wait_for_port};
use harness::scrape::{scrape, value};
use rds_iam_sidecar::ops::admin_client::request;
use support::sigv4::{Expectation, format_amz_date, verify_token};
use support::{DEFAULT_ENDPOINT_HOST, TEST_AKID, TEST_SECRET, TestPki, unix_now, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    sidecar_command(home)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the binary")
}

#[test]
fn configuration_errors_exit_2_with_one_line_naming_the_setting() {
    let home = tempfile::tempdir().expect("tempdir");
    let proxy = "mydb.proxy-abc123.us-east-1.rds.amazonaws.com:5432";
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], vec![], "--upstream (RDS_IAM_SIDECAR_UPSTREAM)"),
        (
            vec!["--upstream", "10.0.0.5:5432"],
            vec![],
            "--region (RDS_IAM_SIDECAR_REGION)",
        ),
        (
            vec!["--upstream", proxy, "--tls-mode", "disable"],
            vec![],
            "--tls-mode (RDS_IAM_SIDECAR_TLS_MODE)",
        ),
        (
            vec!["--upstream", proxy, "--ca-file", "/nonexistent/ca.pem"],
            vec![],
            "--ca-file (RDS_IAM_SIDECAR_CA_FILE)",
        ),
        (
            vec!["--upstream", proxy, "--listen", "localhost"],
            vec![],
            "--listen (RDS_IAM_SIDECAR_LISTEN)",
        ),
        (
            vec!["--upstream", proxy, "--connect-timeout", "5 parsecs"],
            vec![],
            "--connect-timeout",
        ),
        (
            vec!["--upstream", proxy, "--auth", "password"],
            vec![],
            "--password-file",
        ),
        (
            vec!["--upstream", proxy, "--config", "/nonexistent.toml"],
            vec![],
            "--config",
        ),
        (
            vec![],
            vec![("RDS_IAM_SIDECAR_UPSTREAM", "db:notaport")],
            "--upstream (RDS_IAM_SIDECAR_UPSTREAM)",
        ),
        (
            vec!["--upstream", proxy, "--listen", &busy_addr],
            vec![],
            "cannot listen on",
        ),
        // Beyond loopback without client authentication: refused, naming both ways out.
        (
            vec!["--upstream", proxy, "--listen", "0.0.0.0:0"],
            vec![],
            "--allow-unauthenticated-clients",
        ),
        (
            vec!["--upstream", proxy, "--worker-threads", "0"],
            vec![],
            "--worker-threads (RDS_IAM_SIDECAR_WORKER_THREADS)",
        ),
        (
            vec!["--upstream", proxy, "--client-auth", "scram-sha-256"],
            vec![],
            "RDS_IAM_SIDECAR_CLIENT_PASSWORD",
        ),
    ];
    for (args, env, expected) in cases {
        let output = run(home.path(), &args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected '{expected}' in: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    // Unknown flags and bad enum values are clap's errors: also exit 2.
    for args in [vec!["--no-such-flag"], vec!["--tls-mode", "sometimes"]] {
        let output = run(home.path(), &args, &[]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn token_subcommand_prints_a_verifiable_token() {
    let home = tempfile::tempdir().expect("tempdir");
    let session_token = "IQoJb3JpZ2luX2VjEA8aCXVzLWVhc3QtMSJH/session+token=";
    let output = run(
        home.path(),
        &[
            "token",
            "--host",
            DEFAULT_ENDPOINT_HOST,
            "--port",
            "5432",
            "--user",
            "app_user",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", TEST_AKID),
            ("AWS_SECRET_ACCESS_KEY", TEST_SECRET),
            ("AWS_SESSION_TOKEN", session_token),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let verified = verify_token(
        &token,
        &Expectation {
            host_port: format!("{DEFAULT_ENDPOINT_HOST}:5432"),
            region: "us-east-1".to_owned(),
            db_user: "app_user".to_owned(),
        },
        |akid| (akid == TEST_AKID).then(|| TEST_SECRET.to_owned()),
        unix_now(),
    )
    .expect("the token verifies");
    assert_eq!(verified.session_token.as_deref(), Some(session_token));

    // No credentials anywhere: a clear error naming the sources, exit 1.
    let output = run(
        home.path(),
        &[
            "token",
            "--host",
            DEFAULT_ENDPOINT_HOST,
            "--user",
            "app_user",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no AWS credentials"), "{stderr}");
    assert!(stderr.contains("ECS container credentials"), "{stderr}");
}

/// A loopback ECS container credentials endpoint whose keys the test can rotate.
struct EcsEndpoint {
    port: u16,
    current: Arc<Mutex<(String, String, String)>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const ECS_AUTH: &str = "ecs-auth-token-for-tests";

impl EcsEndpoint {
    async fn start(akid: &str, secret: &str, session: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let current = Arc::new(Mutex::new((
            akid.to_owned(),
            secret.to_owned(),
            session.to_owned(),
        )));
        let requests = Arc::new(AtomicU64::new(0));
        let (c, r) = (current.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (c, r) = (c.clone(), r.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    let authorized =
                        text.contains(&format!("authorization: {}", ECS_AUTH.to_lowercase()));
                    let (status, body) = if authorized {
                        let (akid, secret, session) =
                            c.lock().map(|g| g.clone()).unwrap_or_default();
                        // Expiring inside the refresh-ahead window: every new upstream
                        // connection re-reads the endpoint, so rotation shows at once.
                        let expiry = format_amz_date(unix_now() + 240);
                        let expiration = format!(
                            "{}-{}-{}T{}:{}:{}Z",
                            &expiry[0..4],
                            &expiry[4..6],
                            &expiry[6..8],
                            &expiry[9..11],
                            &expiry[11..13],
                            &expiry[13..15]
                        );
                        (
                            "200 OK",
                            format!(
                                "{{\"AccessKeyId\":\"{akid}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"{session}\",\"Expiration\":\"{expiration}\"}}"
                            ),
                        )
                    } else {
                        ("401 Unauthorized", "{}".to_owned())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            port,
            current,
            requests,
            task,
        }
    }

    fn rotate(&self, akid: &str, secret: &str, session: &str) {
        if let Ok(mut guard) = self.current.lock() {
            *guard = (akid.to_owned(), secret.to_owned(), session.to_owned());
        }
    }
}

/// A query through the sidecar; each database is its own pool, so a new database means a new
/// upstream login.
async fn query_through(port: u16, database: &str) -> Result<i64, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname={database}"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let row = client.query_one("select 40 + 2::int8", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn ecs_credentials_rotate_and_logs_hold_no_secret() {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let key_a = (
        "ASIAROTATEKEYAAAA001",
        "secretA/with+chars",
        "sessionTokenA/xyz=",
    );
    let key_b = (
        "ASIAROTATEKEYBBBB002",
        "secretB/with+chars",
        "sessionTokenB/xyz=",
    );
    emulator.remove_key(TEST_AKID);
    emulator.add_key(key_a.0, key_a.1);
    let ecs = EcsEndpoint::start(key_a.0, key_a.1, key_a.2).await;

    let home = tempfile::tempdir().expect("tempdir");
    let log_path = home.path().join("sidecar.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    let admin_port = free_port();
    let mut child = sidecar_command(home.path())
        .args([
            "--upstream",
            &format!("{DEFAULT_ENDPOINT_HOST}:5432"),
            "--upstream-addr",
            &emulator.addr.to_string(),
            "--ca-file",
            pki.ca_file().to_str().expect("utf-8 path"),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            // Every target the SDK and the HTTP stack log under, named at trace: the sidecar
            // must still keep credentials out (issue 12: aws_sigv4=trace showed the token).
            "trace,aws_sigv4=trace,aws_config=trace,aws_smithy_runtime=trace,\
             aws_smithy_http_client=trace,aws_credential_types=trace,hyper=trace,hyper_util=trace",
            "--log-format",
            "json",
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://127.0.0.1:{}/v2/credentials", ecs.port),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", ECS_AUTH)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map(KillOnDrop)
        .expect("spawn sidecar");
    wait_for_port(port, &mut child.0).await;

    assert_eq!(
        query_through(port, "postgres")
            .await
            .expect("query with key A"),
        42
    );
    // Rotate: the endpoint hands out key B and the proxy forgets key A.
    ecs.rotate(key_b.0, key_b.1, key_b.2);
    emulator.add_key(key_b.0, key_b.1);
    emulator.remove_key(key_a.0);
    assert_eq!(
        query_through(port, "template1")
            .await
            .expect("query with key B"),
        42
    );
    // A failing login, so the failure path is in the log too.
    {
        let mut keys = emulator.keys();
        keys.lock().map(|mut k| k.clear()).ok();
        let _ = &mut keys;
    }
    assert!(query_through(port, "no_such_pool_yet").await.is_err());

    let logins: Vec<_> = emulator
        .accepted_logins()
        .into_iter()
        .map(|l| (l.access_key_id, l.session_token))
        .collect();
    assert_eq!(
        logins,
        vec![
            (Some(key_a.0.to_owned()), Some(key_a.2.to_owned())),
            (Some(key_b.0.to_owned()), Some(key_b.2.to_owned())),
        ]
    );
    assert!(ecs.requests.load(Ordering::SeqCst) >= 2);

    // The expiry of the credentials in use (the endpoint hands out 240 s) and their fetches
    // are exported.
    let metrics = scrape(&format!("127.0.0.1:{admin_port}")).await;
    let expiry = value(
        &metrics,
        "rds_iam_sidecar_credentials_expiry_timestamp_seconds",
        &[],
    )
    .expect("credentials expiry exported");
    let now = unix_now() as f64;
    assert!(
        expiry > now + 120.0 && expiry <= now + 241.0,
        "expiry {expiry} vs now {now}"
    );
    assert!(
        value(
            &metrics,
            "rds_iam_sidecar_credential_refreshes_total",
            &[("result", "ok")]
        ) >= Some(2.0),
        "a fetch per rotation"
    );

    child.signal("TERM");
    let status = child.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    ecs.task.abort();

    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        log.contains("client connected"),
        "log has the session lines:\n{log}"
    );
    assert!(
        log.contains("no upstream connection for a new client"),
        "log has the failure:\n{log}"
    );
    for line in log.lines() {
        assert!(line.starts_with('{'), "json log lines only: {line}");
    }
    for secret in [
        key_a.1,
        key_a.2,
        key_b.1,
        key_b.2,
        ECS_AUTH,
        "X-Amz-Signature",
        "X-Amz-Credential",
        "Action=connect",
    ] {
        assert!(!log.contains(secret), "the log contains '{secret}':\n{log}");
    }
}

/// The binary behind `sh -c "<ulimit> && exec …"`, in password mode towards a closed port,
/// listening on 127.0.0.1:`port`, its log in `log_file`.
fn with_open_file_limit(
    ulimit: &str,
    home: &Path,
    port: u16,
    extra: &[&str],
    log_file: std::fs::File,
) -> std::process::Child {
    Command::new("sh")
        .args([
            "-c",
            &format!("{ulimit} && exec \"$0\" \"$@\""),
            harness::binary::BIN,
        ])
        .args(["run", "--upstream", "127.0.0.1:1", "--auth", "password"])
        .args([
            "--tls-mode",
            "disable",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RDS_IAM_SIDECAR_PASSWORD", "x")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("spawn")
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log_path = home.path().join("limits.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let hard = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .expect("ulimit -Hn")
            .stdout,
    )
    .expect("utf-8");
    let hard = hard.trim().to_owned();
    if hard == "unlimited" || hard.parse::<u64>().is_ok_and(|h| h <= 256) {
        eprintln!("SKIPPED: hard open-file limit {hard}");
        return;
    }
    let child = with_open_file_limit("ulimit -Sn 256", home.path(), port, &[], log_file);
    let mut child = KillOnDrop(child);
    wait_for_port(port, &mut child.0).await;
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", child.0.id())).expect("/proc limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = open_files.split_whitespace().collect();
    assert_eq!(
        fields[3], hard,
        "soft limit raised to the hard one: {open_files}"
    );
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("raised the open-file limit") && log.contains("256"),
        "{log}"
    );
}

#[tokio::test]
async fn at_the_open_file_limit_new_clients_get_53300_and_the_admin_endpoint_answers() {
    let home = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let log_path = home.path().join("limits.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    // 200 descriptors, soft and hard: (200 - 64 reserved) / 2 = 68 clients fit.
    let admin = format!("127.0.0.1:{admin_port}");
    let child = with_open_file_limit(
        "ulimit -n 200",
        home.path(),
        port,
        &["--admin-listen", &admin],
        log_file,
    );
    let mut child = KillOnDrop(child);
    wait_for_port(port, &mut child.0).await;
    wait_for_port(admin_port, &mut child.0).await;
    // wait_for_port's probe must be gone (the sidecar read its close) before the silent
    // sockets take every place: its read may still be waiting in the ring for the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = scrape(&admin).await;
        let login = value(
            &metrics,
            "rds_iam_sidecar_client_connections",
            &[("state", "login")],
        );
        if login == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the probe's close was seen: {login:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Silent sockets up to the lowered limit.
    let mut silent = Vec::new();
    for _ in 0..68 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let refused = "refused at once, not left waiting";
    let fields = wire::error_within(&mut next, Duration::from_secs(2), refused).await;
    assert_eq!(fields.get(&'C').map(String::as_str), Some("53300"));
    let livez = request(
        &format!("127.0.0.1:{admin_port}"),
        "GET",
        "/livez",
        Duration::from_secs(2),
    )
    .await
    .expect("the admin endpoint answers at the limit");
    assert_eq!(livez.status, 200);
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("client limits lowered to fit"), "{log}");
    drop(silent);
}
