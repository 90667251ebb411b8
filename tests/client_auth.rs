//! Client authentication (`--client-auth scram-sha-256`): the right password logs in (libpq's
//! psql and tokio-postgres), a wrong password and an unknown user get `28P01` after the fixed
//! delay and a metric, a verifier file holds hashed (as `pg_authid` stores them) and plain
//! entries, channel binding works over the listener's TLS, a listener beyond loopback starts
//! with it, and no password reaches the log.

mod harness;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Stack, conn_string, stack_with};
use rds_iam_sidecar::frontend::client_auth::ClientAuthMode;
use rds_iam_sidecar::frontend::client_tls::ClientTlsMode;
use rds_iam_sidecar::secret::Secret;
use rds_iam_sidecar::settings::EndpointSettings;
use support::{TEST_AKID, TEST_SECRET};
use tokio_postgres::NoTls;

/// A sidecar that wants SCRAM; every client is `postgres` upstream (`--db-user`), so that the
/// test users need no roles in PostgreSQL.
async fn scram_stack(adjust: impl FnOnce(&mut EndpointSettings) + Send + 'static) -> Stack {
    stack_with(
        move |c: &mut EndpointSettings| {
            c.frontend.auth.mode = ClientAuthMode::ScramSha256;
            c.frontend.db_user = Some("postgres".to_owned());
            adjust(c);
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await
}

async fn login(stack: &Stack, user: &str, password: &str) -> Result<i32, tokio_postgres::Error> {
    let conninfo = format!(
        "{} password='{password}'",
        conn_string(stack, user, "postgres")
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(connection);
    let row = client.query_one("select 7", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn the_right_password_logs_in_and_a_wrong_one_or_an_unknown_user_gets_28p01() {
    let stack = scram_stack(|c| c.frontend.auth.password = Some(Secret::new("s3cret pass"))).await;
    assert_eq!(
        login(&stack, "app", "s3cret pass").await.expect("logs in"),
        7
    );
    for (user, password) in [("app", "wrong"), ("nobody", "s3cret-nope")] {
        let started = Instant::now();
        let error = login(&stack, user, password).await.expect_err("refused");
        let db = error.as_db_error().expect("an ErrorResponse");
        assert_eq!((db.code().code(), db.severity()), ("28P01", "FATAL"));
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "answered after the fixed delay: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        stack.emulator.logins(),
        1,
        "refused clients never reached the upstream"
    );
}

#[tokio::test]
async fn a_verifier_file_holds_hashed_and_plain_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("clients");
    let hashed = postgres_protocol::password::scram_sha_256(b"builder");
    std::fs::write(&file, format!("alice:wonderland\nbob:{hashed}\n")).expect("write");
    let path = file.clone();
    let stack = scram_stack(move |c| c.frontend.auth.file = Some(path)).await;
    assert_eq!(
        login(&stack, "alice", "wonderland")
            .await
            .expect("plain entry"),
        7
    );
    assert_eq!(
        login(&stack, "bob", "builder").await.expect("hashed entry"),
        7
    );
    let error = login(&stack, "bob", "wonderland")
        .await
        .expect_err("not bob's");
    assert_eq!(error.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test]
async fn channel_binding_over_the_listeners_tls() {
    if !Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED: psql not installed");
        return;
    }
    let written = tempfile::tempdir().expect("tempdir");
    let cert = written.path().join("sidecar.pem");
    let cert_out = cert.clone();
    let stack = scram_stack(move |c| {
        c.frontend.auth.password = Some(Secret::new("bound"));
        c.frontend.tls.mode = ClientTlsMode::SelfSigned;
        c.frontend.tls.cert_out = Some(cert_out);
    })
    .await;
    let port = stack.sidecar.addr().port();
    let psql = |password: &'static str| {
        let conninfo = format!(
            "host=127.0.0.1 port={port} user=app dbname=postgres sslmode=require \
             channel_binding=require connect_timeout=10"
        );
        tokio::task::spawn_blocking(move || {
            Command::new("psql")
                .args(["-X", "-At", "-d", &conninfo, "-c", "select 'bound'"])
                .env("PGPASSWORD", password)
                .output()
                .expect("run psql")
        })
    };
    let bound = psql("bound").await.expect("join");
    assert_eq!(
        String::from_utf8_lossy(&bound.stdout).trim(),
        "bound",
        "{}",
        String::from_utf8_lossy(&bound.stderr)
    );
    let wrong = psql("unbound").await.expect("join");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));
    // tokio-postgres over rustls binds the channel the same way (SCRAM-SHA-256-PLUS).
    let mut roots = rustls::RootCertStore::empty();
    for der in rds_iam_sidecar::upstream::tls::load_ca_file(&cert).expect("written certificate") {
        roots.add(der).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = support::rustls_postgres::MakeRustls(std::sync::Arc::new(config));
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=app dbname=postgres \
         password=bound sslmode=require channel_binding=require"
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tls)
        .await
        .expect("SCRAM-SHA-256-PLUS through tokio-postgres");
    tokio::spawn(connection);
    assert_eq!(
        client
            .query_one("select 7", &[])
            .await
            .expect("query")
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test]
async fn no_client_password_in_the_log_at_trace() {
    use harness::binary::{KillOnDrop, free_port, sidecar_command, wait_for_port};
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log_path = home.path().join("sidecar.log");
    let password = "pw-3f9c1e-not-in-logs";
    let child = sidecar_command(home.path())
        .args(["run", "--upstream", "127.0.0.1:1", "--auth", "password"])
        .args(["--tls-mode", "disable", "--connect-timeout", "1s"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "off",
        ])
        .args(["--client-auth", "scram-sha-256", "--log-level", "trace"])
        .env("RDS_IAM_SIDECAR_PASSWORD", "upstream-pw")
        .env("RDS_IAM_SIDECAR_CLIENT_PASSWORD", password)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn");
    let mut child = KillOnDrop(child);
    wait_for_port(port, &mut child.0).await;
    let conninfo = |pw: &str| {
        format!("host=127.0.0.1 port={port} user=app dbname=app password={pw} connect_timeout=10")
    };
    let wrong = tokio_postgres::connect(&conninfo("wrong-pw"), NoTls).await;
    let code = wrong
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
    assert_eq!(code.as_deref(), Some("28P01"));
    // The right password passes SCRAM; the upstream is unreachable, so 08001 follows.
    let right = tokio_postgres::connect(&conninfo(password), NoTls).await;
    let code = right
        .err()
        .and_then(|e| e.as_db_error().map(|d| d.code().code().to_owned()));
    assert_eq!(code.as_deref(), Some("08001"));
    child.signal("TERM");
    let _ = child.exit_within(Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("client authentication failed"), "{log}");
    for secret in [password, "wrong-pw", "upstream-pw"] {
        assert!(!log.contains(secret), "the log holds '{secret}'");
    }
}

#[tokio::test]
async fn a_client_that_never_answers_the_sasl_request_is_closed_after_the_login_timeout() {
    let stack = scram_stack(|c| {
        c.frontend.auth.password = Some(Secret::new("pw"));
        c.frontend.login_timeout = Duration::from_millis(500);
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    use tokio::io::AsyncWriteExt;
    raw.write_all(&support::wire::startup_message(&[
        ("user", "app"),
        ("database", "postgres"),
    ]))
    .await
    .expect("startup");
    let (tag, body) = support::wire::read_message(&mut raw)
        .await
        .expect("SASL request");
    assert_eq!((tag, &body[..4]), (b'R', &10u32.to_be_bytes()[..]));
    // Silence: the place under --max-client-connections is given back, with a reason.
    let bound = "bounded by --client-login-timeout";
    let fields = support::wire::error_within(&mut raw, Duration::from_secs(3), bound).await;
    assert_eq!(fields.get(&'C').map(String::as_str), Some("08P01"));
}
