//! Every failure reaches the client as a PostgreSQL error with the right SQLSTATE and a hint,
//! and the sidecar keeps serving other clients.

mod harness;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError, future};
use harness::{config_for, connect, credentials, db_error, stack_with, try_connect};
use rds_iam_sidecar::iam::credentials::CredentialCache;
use rds_iam_sidecar::upstream::Endpoint;
use rds_iam_sidecar::upstream::tls::TlsMode;
use support::{
    DEFAULT_ENDPOINT_HOST, Emulator, EmulatorOptions, TEST_AKID, TEST_SECRET, TestPki,
    shared_cluster,
};

async fn cluster_port() -> u16 {
    tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("cluster")
        .port
}

/// An emulator with a chosen certificate (or none: no TLS offered).
async fn emulator_with(pki: &TestPki, cert_names: Option<&[&str]>) -> Emulator {
    let port = cluster_port().await;
    Emulator::start(EmulatorOptions {
        tls: cert_names.map(|names| pki.server_cert(names)),
        backend_port: port,
        keys: Arc::new(std::sync::Mutex::new(
            [(TEST_AKID.to_owned(), TEST_SECRET.to_owned())].into(),
        )),
        ..EmulatorOptions::default()
    })
    .await
}

async fn sidecar_for(
    emulator: &Emulator,
    pki: &TestPki,
    adjust: impl FnOnce(&mut rds_iam_sidecar::settings::EndpointSettings),
) -> rds_iam_sidecar::RunningSidecar {
    let mut config = config_for(emulator, pki);
    adjust(&mut config);
    let settings = rds_iam_sidecar::settings::Settings::new(vec![config]);
    rds_iam_sidecar::start(settings, Some(credentials(TEST_AKID, TEST_SECRET)))
        .await
        .expect("sidecar starts")
}

async fn connect_to(
    sidecar: &rds_iam_sidecar::RunningSidecar,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let addr = sidecar.addr();
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname=postgres",
            addr.ip(),
            addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn wrong_secret_key_is_rejected_with_an_iam_hint() {
    let stack = stack_with(|_| {}, credentials(TEST_AKID, "not-the-secret")).await;
    let error = try_connect(&stack, "postgres", "postgres")
        .await
        .expect_err("login must fail");
    let (code, message, hint) = db_error(&error);
    assert!(code == "28P01" || code == "28000", "{code}");
    assert!(message.contains("IAM authentication failed"), "{message}");
    let hint = hint.expect("a hint");
    assert!(hint.contains("GRANT rds_iam TO \"postgres\""), "{hint}");
    assert!(hint.contains("rds-db:connect"), "{hint}");
    assert!(
        hint.contains("arn:aws:rds-db:us-east-1:ACCOUNT:dbuser:prx-"),
        "{hint}"
    );
    assert_eq!(
        stack.emulator.rejected(),
        1,
        "fetched again, the credentials hold the same key: no second login with it"
    );
    assert!(
        stack
            .emulator
            .last_rejection()
            .is_some_and(|r| r.to_lowercase().contains("signature")),
        "{:?}",
        stack.emulator.last_rejection()
    );
    assert_eq!(stack.emulator.logins(), 0);
}

#[tokio::test]
async fn token_signed_for_another_host_is_rejected() {
    let pki = TestPki::new();
    let other = "other.proxy-abc123.us-east-1.rds.amazonaws.com";
    // The certificate names both hosts so TLS passes and the token check decides.
    let emulator = emulator_with(&pki, Some(&[DEFAULT_ENDPOINT_HOST, other])).await;
    let sidecar = sidecar_for(&emulator, &pki, |config| {
        config.upstream.endpoint = Endpoint {
            host: other.to_owned(),
            port: 5432,
        };
    })
    .await;
    let error = connect_to(&sidecar).await.expect_err("login must fail");
    let (code, _, hint) = db_error(&error);
    assert_eq!(code, "28P01");
    assert!(hint.is_some_and(|h| h.contains("endpoint actually dialled")));
    let rejection = emulator.last_rejection().expect("a rejection");
    assert!(rejection.contains(other), "{rejection}");
    assert_eq!(emulator.logins(), 0);
}

#[tokio::test]
async fn closed_upstream_port_gives_08001_within_the_connect_timeout() {
    let pki = TestPki::new();
    let emulator = emulator_with(&pki, Some(&[DEFAULT_ENDPOINT_HOST])).await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let sidecar = sidecar_for(&emulator, &pki, |config| {
        config.upstream.upstream_addr = Some(Endpoint {
            host: "127.0.0.1".to_owned(),
            port: closed_port,
        });
        config.upstream.connect_timeout = Duration::from_secs(2);
    })
    .await;
    let started = Instant::now();
    let error = connect_to(&sidecar).await.expect_err("must fail");
    let (code, message, hint) = db_error(&error);
    assert_eq!(code, "08001");
    assert!(
        message.contains(&format!("127.0.0.1:{closed_port}")),
        "{message}"
    );
    assert!(hint.is_some_and(|h| h.contains("security group")));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn silent_upstream_times_out_with_08001() {
    let pki = TestPki::new();
    let emulator = emulator_with(&pki, Some(&[DEFAULT_ENDPOINT_HOST])).await;
    // Accepts TCP but never answers the SSLRequest.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let sidecar = sidecar_for(&emulator, &pki, |config| {
        config.upstream.upstream_addr = Some(Endpoint {
            host: "127.0.0.1".to_owned(),
            port: silent_port,
        });
        config.upstream.connect_timeout = Duration::from_millis(700);
    })
    .await;
    let started = Instant::now();
    let error = connect_to(&sidecar).await.expect_err("must time out");
    let (code, message, _) = db_error(&error);
    assert_eq!(code, "08001");
    assert!(message.contains("timed out"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn certificate_for_the_wrong_name_is_refused_under_verify_full() {
    let pki = TestPki::new();
    let emulator = emulator_with(&pki, Some(&["wrong.example.com"])).await;
    let sidecar = sidecar_for(&emulator, &pki, |_| {}).await;
    let error = connect_to(&sidecar).await.expect_err("must fail");
    let (code, message, hint) = db_error(&error);
    assert_eq!(code, "08001");
    assert!(message.contains(DEFAULT_ENDPOINT_HOST), "{message}");
    assert!(message.contains("not valid for name"), "{message}");
    assert!(hint.is_some_and(|h| h.contains("--upstream-addr")));
    assert_eq!(emulator.logins(), 0);

    // verify-ca checks the chain (against --ca-file only), so the same server is accepted.
    let sidecar = sidecar_for(&emulator, &pki, |c| c.upstream.tls_mode = TlsMode::VerifyCa).await;
    let client = connect_to(&sidecar).await.expect("verify-ca accepts");
    client.simple_query("select 1").await.expect("query");
}

#[tokio::test]
async fn unknown_certificate_authority_is_refused_with_a_ca_file_hint() {
    let pki = TestPki::new();
    let emulator = emulator_with(&pki, Some(&[DEFAULT_ENDPOINT_HOST])).await;
    let sidecar = sidecar_for(&emulator, &pki, |c| c.upstream.ca_file = None).await;
    let error = connect_to(&sidecar).await.expect_err("must fail");
    let (code, _, hint) = db_error(&error);
    assert_eq!(code, "08001");
    assert!(hint.is_some_and(|h| h.contains("--ca-file")));

    // require encrypts without checking: the login works.
    let sidecar = sidecar_for(&emulator, &pki, |c| {
        c.upstream.ca_file = None;
        c.upstream.tls_mode = TlsMode::Require;
    })
    .await;
    connect_to(&sidecar).await.expect("require accepts");
}

#[tokio::test]
async fn server_without_tls_is_refused() {
    let pki = TestPki::new();
    let emulator = emulator_with(&pki, None).await;
    let sidecar = sidecar_for(&emulator, &pki, |_| {}).await;
    let error = connect_to(&sidecar).await.expect_err("must fail");
    let (code, message, _) = db_error(&error);
    assert_eq!(code, "08001");
    assert!(message.contains("does not offer TLS"), "{message}");
    assert_eq!(emulator.logins(), 0);
}

#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
            "no providers in chain provided credentials",
        )))
    }
}

#[tokio::test]
async fn missing_credentials_say_which_sources_were_tried() {
    let stack = stack_with(|_| {}, Arc::new(CredentialCache::new(NoCredentials))).await;
    let error = try_connect(&stack, "postgres", "postgres")
        .await
        .expect_err("must fail");
    let (code, message, hint) = db_error(&error);
    assert_eq!(code, "08001");
    assert!(message.contains("no AWS credentials"), "{message}");
    assert!(message.contains("ECS container credentials"), "{message}");
    assert!(message.contains("instance metadata"), "{message}");
    assert!(hint.is_some_and(|h| h.contains("task role")));
    assert_eq!(stack.emulator.connections(), 0, "no credentials, no dial");
}

#[tokio::test]
async fn server_errors_pass_through_and_the_sidecar_keeps_serving() {
    let stack = stack_with(|_| {}, credentials(TEST_AKID, TEST_SECRET)).await;
    let error = try_connect(&stack, "postgres", "no_such_database_here")
        .await
        .expect_err("must fail");
    assert_eq!(db_error(&error).0, "3D000");
    let client = connect(&stack).await;
    let value: i32 = client
        .query_one("select 42", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(value, 42);
}

#[tokio::test]
async fn client_without_user_gets_28000() {
    use tokio::io::AsyncWriteExt;
    let stack = stack_with(|_| {}, credentials(TEST_AKID, TEST_SECRET)).await;
    let mut raw = tokio::net::TcpStream::connect(stack.sidecar.addr())
        .await
        .expect("connect");
    raw.write_all(&support::wire::startup_message(&[("database", "postgres")]))
        .await
        .expect("startup");
    let (tag, body) = support::wire::read_message(&mut raw).await.expect("reply");
    assert_eq!(tag, b'E');
    let fields = support::wire::parse_error_fields(&body);
    assert_eq!(fields.get(&'C').map(String::as_str), Some("28000"));
}

/// Hands out a revoked key first, the valid one on every later call.
#[derive(Debug, Default)]
struct RevokedThenValid {
    calls: std::sync::atomic::AtomicUsize,
}

impl ProvideCredentials for RevokedThenValid {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (akid, secret) = if n == 0 {
            ("AKIAREVOKEDKEY000001", "revoked-secret")
        } else {
            (TEST_AKID, TEST_SECRET)
        };
        future::ProvideCredentials::ready(Ok(aws_credential_types::Credentials::new(
            akid, secret, None, None, "test",
        )))
    }
}

#[tokio::test]
async fn rejected_login_is_retried_once_with_fresh_credentials() {
    let stack = stack_with(
        |_| {},
        Arc::new(CredentialCache::new(RevokedThenValid::default())),
    )
    .await;
    let client = connect(&stack).await;
    client.simple_query("select 1").await.expect("query");
    assert_eq!(
        stack.emulator.rejected(),
        1,
        "the revoked key was tried once"
    );
    assert_eq!(stack.emulator.logins(), 1);
    // The cache now holds the valid key: a login for another pool is not rejected.
    let client = try_connect(&stack, "postgres", "template1")
        .await
        .expect("connect to another database");
    client.simple_query("select 1").await.expect("query");
    assert_eq!(stack.emulator.rejected(), 1);
    assert_eq!(stack.emulator.logins(), 2);
}
