//! TLS on the local hop (`--client-tls`): libpq's `sslmode=require` and `verify-full` against
//! the self-signed certificate the sidecar wrote out, PostgreSQL 17's direct TLS (a rustls
//! client, ALPN `postgresql`; without it the connection is refused), JDBC-style `ssl=true`
//! through tokio-postgres over rustls, certificate files
//! re-read when they change, and `off` still answering `N` (libpq's `prefer` goes on in
//! plaintext, `require` fails).

mod harness;
mod support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use harness::{Stack, stack_with};
use rds_iam_sidecar::frontend::client_tls::ClientTlsMode;
use rds_iam_sidecar::settings::EndpointSettings;
use support::{TEST_AKID, TEST_SECRET, TestPki, wire};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn psql_available() -> bool {
    Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `psql -c sql` against the sidecar, with a libpq connection string's extra `options`.
async fn psql(stack: &Stack, host: &str, options: &str, sql: &str) -> Output {
    let port = stack.sidecar.addr().port();
    let conninfo = format!(
        "host={host} port={port} user=postgres dbname=postgres connect_timeout=10 {options}"
    );
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args(["-X", "-At", "-d", &conninfo, "-c", &sql])
            .env_remove("PGSSLMODE")
            .output()
            .expect("run psql")
    })
    .await
    .expect("join psql")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

async fn self_signed_stack(cert_out: &std::path::Path) -> Stack {
    let cert_out = cert_out.to_owned();
    stack_with(
        move |c: &mut EndpointSettings| {
            c.frontend.tls.mode = ClientTlsMode::SelfSigned;
            c.frontend.tls.cert_out = Some(cert_out);
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await
}

#[tokio::test]
async fn libpq_require_and_verify_full_against_the_written_certificate() {
    if !psql_available() {
        eprintln!("SKIPPED: psql not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("sidecar.pem");
    let stack = self_signed_stack(&cert).await;
    let required = psql(&stack, "127.0.0.1", "sslmode=require", "select 'tls ok'").await;
    assert_eq!(stdout(&required), "tls ok", "{}", stderr(&required));
    let verified = psql(
        &stack,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", cert.display()),
        "select 'verified'",
    )
    .await;
    assert_eq!(stdout(&verified), "verified", "{}", stderr(&verified));
    // A name the certificate does not hold fails verification.
    let wrong = psql(
        &stack,
        "not-the-sidecar.example",
        &format!(
            "hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
            cert.display()
        ),
        "select 1",
    )
    .await;
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("not-the-sidecar.example"),
        "{}",
        stderr(&wrong)
    );
}

#[tokio::test]
async fn with_tls_off_prefer_goes_on_in_plaintext_and_require_fails() {
    if !psql_available() {
        eprintln!("SKIPPED: psql not installed");
        return;
    }
    let stack = stack_with(|_| {}, harness::credentials(TEST_AKID, TEST_SECRET)).await;
    let preferred = psql(&stack, "127.0.0.1", "sslmode=prefer", "select 'plain'").await;
    assert_eq!(stdout(&preferred), "plain", "{}", stderr(&preferred));
    let required = psql(&stack, "127.0.0.1", "sslmode=require", "select 1").await;
    assert!(!required.status.success());
    assert!(
        stderr(&required).contains("server does not support SSL"),
        "{}",
        stderr(&required)
    );
}

/// A rustls client trusting `cert` (PEM), offering `alpn`.
fn client_config(cert: &std::path::Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rds_iam_sidecar::upstream::tls::load_ca_file(cert).expect("the written certificate")
    {
        roots.add(cert).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql_logs_in_and_without_it_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("sidecar.pem");
    let stack = self_signed_stack(&cert).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    // PostgreSQL 17's sslnegotiation=direct: the ClientHello is the first thing sent.
    let tcp = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    let connector = TlsConnector::from(client_config(&cert, &[b"postgresql"]));
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("direct TLS");
    let login = [("user", "postgres"), ("database", "postgres")];
    wire::login(&mut tls, &login, "x")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = wire::simple_query(&mut tls, "select 'direct'")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("direct".to_owned())]]);
    // Without ALPN the handshake completes but the sidecar, as PostgreSQL 17, closes.
    let tcp = TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    let connector = TlsConnector::from(client_config(&cert, &[]));
    let refused = async {
        let mut tls = connector.connect(name, tcp).await?;
        wire::login(&mut tls, &login, "x")
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let refused = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("refused at once");
    assert!(refused.is_err(), "direct TLS without ALPN must not log in");
}

/// A certificate for `localhost` from `pki`, and its key, written to `cert` and `key`.
fn write_pair(pki: &TestPki, cert: &std::path::Path, key: &std::path::Path) {
    let (cert_pem, key_pem) = pki.server_cert_pem(&["localhost"]);
    std::fs::write(key, key_pem).expect("write the key");
    std::fs::write(cert, cert_pem).expect("write the certificate");
}

#[tokio::test]
async fn certificate_files_are_read_again_when_they_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = TestPki::new();
    write_pair(&first, &cert, &key);
    let (cert_file, key_file) = (cert.clone(), key.clone());
    let stack = stack_with(
        move |c: &mut EndpointSettings| {
            c.frontend.tls.mode = ClientTlsMode::Files;
            c.frontend.tls.cert_file = Some(cert_file);
            c.frontend.tls.key_file = Some(key_file);
        },
        harness::credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let login = [("user", "postgres"), ("database", "postgres")];
    let mut tls = wire::connect_tls(stack.sidecar.addr(), "localhost", first.client_config())
        .await
        .expect("TLS with the first certificate");
    wire::login(&mut tls, &login, "x")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Rotated: a certificate from another CA.
    let second = TestPki::new();
    write_pair(&second, &cert, &key);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let attempt =
            wire::connect_tls(stack.sidecar.addr(), "localhost", second.client_config()).await;
        if attempt.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is served within the check interval"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The connection made before the rotation still works.
    let rows = wire::simple_query(&mut tls, "select 'still here'")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("still here".to_owned())]]);
}

#[tokio::test]
async fn jdbc_style_ssl_true_through_tokio_postgres_with_rustls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("sidecar.pem");
    let stack = self_signed_stack(&cert).await;
    // JDBC's ssl=true: SSLRequest, no ALPN, the certificate verified against a trust store.
    let tls = support::rustls_postgres::MakeRustls(client_config(&cert, &[]));
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        stack.sidecar.addr().port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tls)
        .await
        .expect("TLS through tokio-postgres");
    tokio::spawn(connection);
    let row = client.query_one("select 'jdbc'", &[]).await.expect("query");
    assert_eq!(row.get::<_, &str>(0), "jdbc");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_files() {
    use harness::binary::{KillOnDrop, free_port, sidecar_command, wait_for_port};
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = TestPki::new();
    write_pair(&first, &cert, &key);
    let port = free_port();
    let child = sidecar_command(dir.path())
        .args(["run", "--upstream", "127.0.0.1:1", "--auth", "password"])
        .args(["--tls-mode", "disable", "--admin-listen", "off"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--client-tls",
            "files",
        ])
        .args(["--client-tls-cert", cert.to_str().expect("utf-8")])
        .args(["--client-tls-key", key.to_str().expect("utf-8")])
        .env("RDS_IAM_SIDECAR_PASSWORD", "x")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut child = KillOnDrop(child);
    wait_for_port(port, &mut child.0).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wire::connect_tls(addr, "localhost", first.client_config())
        .await
        .expect("the first certificate");
    // New files with the old modification times: only SIGHUP can tell the sidecar.
    let times: Vec<std::time::SystemTime> = [&cert, &key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("mtime")
        })
        .collect();
    let second = TestPki::new();
    write_pair(&second, &cert, &key);
    for (path, time) in [&cert, &key].iter().zip(times) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(time))
            .expect("set mtime back");
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        wire::connect_tls(addr, "localhost", first.client_config())
            .await
            .is_ok(),
        "unchanged times: still the first certificate"
    );
    child.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while wire::connect_tls(addr, "localhost", second.client_config())
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP loads the new pair"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
