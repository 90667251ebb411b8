//! Self-tests of the shared test support (`tests/support/`): the SigV4 verifier against the AWS
//! known-answer vector and botocore, the ephemeral PostgreSQL cluster, and the RDS Proxy
//! emulator driven by a raw hand-written client (TLS, cleartext token, relay, rejections).

mod support;

use std::time::Duration;

use support::sigv4::{
    self, Expectation, SignRequest, TokenRejection, sign_token, sign_token_for_tests, verify_token,
};
use support::wire::{self, LoginError, LoginInfo};
use support::{
    DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, Emulator, EmulatorAuth, EmulatorOptions, TEST_AKID,
    TestPki, emulator_for_cluster, shared_cluster, test_token, unix_now,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// SigV4 verifier
// ---------------------------------------------------------------------------------------------

const KAT_HOST: &str = "prod-instance.us-east-1.rds.amazonaws.com:3306";
const KAT_TIME: u64 = 1_724_709_600; // 2024-08-26T22:00:00Z
const KAT_SIGNATURE: &str = "dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89";

fn kat_token(signature: &str) -> String {
    format!(
        "{KAT_HOST}/?Action=connect&DBUser=peccy&X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
         &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
         &X-Amz-Signature={signature}"
    )
}

fn kat_expectation() -> Expectation {
    Expectation {
        host_port: KAT_HOST.to_owned(),
        region: "us-east-1".to_owned(),
        db_user: "peccy".to_owned(),
    }
}

fn kat_secret(akid: &str) -> Option<String> {
    (akid == "akid").then(|| "secret".to_owned())
}

#[test]
fn sigv4_known_answer_vector_is_accepted() {
    let verified = verify_token(
        &kat_token(KAT_SIGNATURE),
        &kat_expectation(),
        kat_secret,
        KAT_TIME,
    )
    .unwrap_or_else(|e| panic!("KAT token rejected: {e}"));
    assert_eq!(verified.access_key_id, "akid");
    assert_eq!(verified.db_user, "peccy");
    assert_eq!(verified.session_token, None);

    // The signer reproduces the vector byte for byte.
    let minted = sign_token_for_tests(
        KAT_HOST,
        "us-east-1",
        "peccy",
        "akid",
        "secret",
        None,
        KAT_TIME,
    );
    assert_eq!(minted, kat_token(KAT_SIGNATURE));
}

#[test]
fn sigv4_rejects_tampered_or_mismatched_tokens() {
    let good = kat_token(KAT_SIGNATURE);
    let expect = kat_expectation();

    let mut bad_sig = KAT_SIGNATURE.to_owned();
    bad_sig.replace_range(0..1, "e");
    let err = verify_token(&kat_token(&bad_sig), &expect, kat_secret, KAT_TIME).unwrap_err();
    assert!(
        matches!(err, TokenRejection::SignatureMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("signature mismatch"), "{err}");

    let wrong_user = Expectation {
        db_user: "alice".into(),
        ..expect.clone()
    };
    let err = verify_token(&good, &wrong_user, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::WrongUser { .. }), "{err}");

    let wrong_host = Expectation {
        host_port: "prod-instance.us-east-1.rds.amazonaws.com:5432".into(),
        ..expect.clone()
    };
    let err = verify_token(&good, &wrong_host, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::WrongHost { .. }), "{err}");

    let wrong_region = Expectation {
        region: "eu-west-1".into(),
        ..expect.clone()
    };
    let err = verify_token(&good, &wrong_region, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::WrongRegion { .. }), "{err}");

    // Valid through the 900th second, expired after.
    assert!(verify_token(&good, &expect, kat_secret, KAT_TIME + 900).is_ok());
    let err = verify_token(&good, &expect, kat_secret, KAT_TIME + 901).unwrap_err();
    assert!(matches!(err, TokenRejection::Expired { .. }), "{err}");

    // Up to 5 minutes of clock skew are tolerated, more is not.
    assert!(verify_token(&good, &expect, kat_secret, KAT_TIME - 300).is_ok());
    let err = verify_token(&good, &expect, kat_secret, KAT_TIME - 301).unwrap_err();
    assert!(matches!(err, TokenRejection::NotYetValid { .. }), "{err}");

    let err = verify_token(&good, &expect, |_| None, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::UnknownAccessKey(_)), "{err}");

    // Tampering with a signed parameter breaks the signature.
    let tampered = good.replace("X-Amz-Expires=900", "X-Amz-Expires=899");
    let err = verify_token(&tampered, &expect, kat_secret, KAT_TIME).unwrap_err();
    assert!(
        matches!(err, TokenRejection::SignatureMismatch { .. }),
        "{err}"
    );

    let too_long = good.replace("X-Amz-Expires=900", "X-Amz-Expires=901");
    let err = verify_token(&too_long, &expect, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::BadExpires(_)), "{err}");

    let wrong_action = good.replace("Action=connect", "Action=login");
    let err = verify_token(&wrong_action, &expect, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::WrongAction(_)), "{err}");

    let wrong_service = good.replace("%2Frds-db%2F", "%2Frds%2F");
    let err = verify_token(&wrong_service, &expect, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::WrongService(_)), "{err}");

    let err = verify_token("not a token", &expect, kat_secret, KAT_TIME).unwrap_err();
    assert!(matches!(err, TokenRejection::Malformed(_)), "{err}");
}

#[test]
fn sigv4_encodes_users_and_session_tokens_rfc3986() {
    let host = "h.example:5432";
    let user = "app user+x@y";
    let token = sign_token_for_tests(
        host,
        "eu-west-1",
        user,
        "AKID",
        "s3cret/+=",
        Some("tok+en/x="),
        KAT_TIME,
    );
    assert!(token.contains("&DBUser=app%20user%2Bx%40y&"), "{token}");
    assert!(
        token.contains(
            "&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok%2Ben%2Fx%3D&X-Amz-Signature="
        ),
        "botocore order: {token}"
    );
    let expect = Expectation {
        host_port: host.into(),
        region: "eu-west-1".into(),
        db_user: user.into(),
    };
    let verified = verify_token(
        &token,
        &expect,
        |k| (k == "AKID").then(|| "s3cret/+=".to_owned()),
        KAT_TIME + 10,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verified.session_token.as_deref(), Some("tok+en/x="));

    // A shorter X-Amz-Expires is honoured.
    let short = sign_token(&SignRequest {
        host_port: host,
        region: "eu-west-1",
        db_user: user,
        access_key_id: "AKID",
        secret_access_key: "s3cret/+=",
        session_token: None,
        now_unix: KAT_TIME,
        expires: 60,
    });
    let secret = |k: &str| (k == "AKID").then(|| "s3cret/+=".to_owned());
    assert!(verify_token(&short, &expect, secret, KAT_TIME + 60).is_ok());
    let err = verify_token(&short, &expect, secret, KAT_TIME + 61).unwrap_err();
    assert!(matches!(err, TokenRejection::Expired { .. }), "{err}");

    assert_eq!(sigv4::format_amz_date(KAT_TIME), "20240826T220000Z");
    assert_eq!(sigv4::parse_amz_date("20240826T220000Z"), Some(KAT_TIME));
    assert_eq!(sigv4::parse_amz_date("20000229T235959Z"), Some(951_868_799));
}

/// Cross-check against botocore (`generate_db_auth_token`) when python3 has it.
#[test]
fn sigv4_accepts_botocore_tokens() {
    let script = r#"
import botocore.session
s = botocore.session.get_session()
s.set_credentials('AKIDBOTO', 'boto/secret+key', 'session+token/abc=')
c = s.create_client('rds', region_name='eu-central-1')
print(c.generate_db_auth_token('db.proxy-x.eu-central-1.rds.amazonaws.com', 6432, 'app user+x@y'))
"#;
    let out = match std::process::Command::new("python3")
        .args(["-c", script])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
    {
        Ok(out) if out.status.success() => out,
        _ => {
            eprintln!("python3 with botocore not available: skipping cross-check");
            return;
        }
    };
    let token = String::from_utf8(out.stdout).expect("botocore output is UTF-8");
    let token = token.trim();
    let expect = Expectation {
        host_port: "db.proxy-x.eu-central-1.rds.amazonaws.com:6432".into(),
        region: "eu-central-1".into(),
        db_user: "app user+x@y".into(),
    };
    let verified = verify_token(
        token,
        &expect,
        |k| (k == "AKIDBOTO").then(|| "boto/secret+key".to_owned()),
        unix_now(),
    )
    .unwrap_or_else(|e| panic!("botocore token rejected: {e}\n{token}"));
    assert_eq!(verified.access_key_id, "AKIDBOTO");
    assert_eq!(
        verified.session_token.as_deref(),
        Some("session+token/abc=")
    );
    let err = verify_token(token, &expect, |_| Some("other".into()), unix_now()).unwrap_err();
    assert!(
        matches!(err, TokenRejection::SignatureMismatch { .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL cluster
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cluster_answers_select_1() {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("start cluster");
    assert!(cluster.socket_dir.is_dir());
    assert!(cluster.data_dir.join("PG_VERSION").is_file());
    let client = cluster.admin_client().await;
    let row = client
        .query_one("select 1::int4", &[])
        .await
        .expect("select 1");
    assert_eq!(row.get::<_, i32>(0), 1);
    let max: String = client
        .query_one("show max_connections", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(max, "300");

    cluster
        .ensure_database("selftest_db", "selftest_owner")
        .await;
    cluster
        .ensure_database("selftest_db", "selftest_owner")
        .await; // idempotent
    let owner_client = cluster.client("selftest_owner", "selftest_db").await;
    let row = owner_client
        .query_one("select current_user::text, current_database()::text", &[])
        .await
        .expect("query as owner");
    assert_eq!(row.get::<_, String>(0), "selftest_owner");
    assert_eq!(row.get::<_, String>(1), "selftest_db");
}

#[test]
fn private_cluster_cleans_up_on_drop() {
    let cluster = support::PgCluster::start();
    let root = cluster
        .data_dir
        .parent()
        .expect("data dir has a parent")
        .to_path_buf();
    assert!(std::net::TcpStream::connect(cluster.addr()).is_ok());
    let addr = cluster.addr();
    drop(cluster);
    assert!(!root.exists(), "{} should be removed", root.display());
    assert!(std::net::TcpStream::connect(addr).is_err());
}

// ---------------------------------------------------------------------------------------------
// RDS Proxy emulator, driven by a raw client
// ---------------------------------------------------------------------------------------------

const EMU_USER: &str = "emu_user";
const EMU_DB: &str = "emu_db";

async fn setup() -> (TestPki, Emulator) {
    let pki = TestPki::new();
    let emu = emulator_for_cluster(&pki).await;
    shared_cluster().ensure_database(EMU_DB, EMU_USER).await;
    (pki, emu)
}

async fn tls_login(
    emu: &Emulator,
    pki: &TestPki,
    params: &[(&str, &str)],
    token: &str,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    Result<LoginInfo, LoginError>,
) {
    let mut tls = wire::connect_tls(emu.addr, DEFAULT_ENDPOINT_HOST, pki.client_config())
        .await
        .expect("TLS to the emulator");
    let result = wire::login(&mut tls, params, token).await;
    (tls, result)
}

fn server_error(result: Result<LoginInfo, LoginError>) -> wire::ServerError {
    match result {
        Err(LoginError::Server(e)) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn emulator_accepts_iam_token_and_relays_to_postgres() {
    let (pki, emu) = setup().await;
    let params = [
        ("user", EMU_USER),
        ("database", EMU_DB),
        ("application_name", "selftest"),
    ];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    let info = result.unwrap_or_else(|e| panic!("login failed: {e}"));
    assert_eq!(
        info.auth_codes,
        vec![3, 0],
        "cleartext request, then PG's Ok"
    );
    assert_eq!(info.ready_status, b'I');
    assert_eq!(info.backend_key, None, "RDS Proxy sends no BackendKeyData");
    assert_eq!(
        info.parameters.get("application_name").map(String::as_str),
        Some("selftest")
    );

    let rows = wire::simple_query(
        &mut tls,
        "select current_user, current_database(), current_setting('application_name')",
    )
    .await
    .unwrap_or_else(|e| panic!("query: {e}"));
    assert_eq!(
        rows,
        vec![vec![
            Some(EMU_USER.to_owned()),
            Some(EMU_DB.to_owned()),
            Some("selftest".to_owned())
        ]]
    );
    tls.write_all(&wire::terminate_message())
        .await
        .expect("terminate");

    assert_eq!(emu.logins(), 1);
    assert_eq!(emu.rejected(), 0);
    assert_eq!(emu.connections(), 1);
    assert_eq!(emu.last_rejection(), None);
    let record = &emu.accepted_logins()[0];
    assert!(record.tls);
    assert_eq!(record.access_key_id.as_deref(), Some(TEST_AKID));
    assert_eq!(record.param("application_name"), Some("selftest"));
}

#[tokio::test]
async fn emulator_rejects_wrong_secret_like_rds_proxy() {
    let (pki, emu) = setup().await;
    let token = sign_token_for_tests(
        &emu.endpoint(),
        DEFAULT_REGION,
        EMU_USER,
        TEST_AKID,
        "not-the-secret",
        None,
        unix_now(),
    );
    let params = [("user", EMU_USER), ("database", EMU_DB)];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &token).await;
    let err = server_error(result);
    assert_eq!(err.severity, "FATAL");
    assert_eq!(err.code, "28P01");
    assert_eq!(
        err.message,
        format!(
            "The IAM authentication failed for the role {EMU_USER}. \
             Check the IAM token for this role and try again."
        )
    );
    // The emulator closes the connection after the error.
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(rest.is_empty());

    assert_eq!(emu.logins(), 0);
    assert_eq!(emu.rejected(), 1);
    let reason = emu.last_rejection().expect("a rejection reason");
    assert!(reason.contains("signature mismatch"), "{reason}");

    // A token for another user is refused too (DBUser must equal the startup user).
    let (_tls, result) = tls_login(&emu, &pki, &params, &test_token("someone_else")).await;
    assert_eq!(server_error(result).code, "28P01");
    assert_eq!(emu.rejected(), 2);
    let reason = emu.last_rejection().expect("a rejection reason");
    assert!(reason.contains("DBUser"), "{reason}");
}

#[tokio::test]
async fn emulator_refuses_unsupported_startup_parameters() {
    let (pki, emu) = setup().await;
    let params = [
        ("user", EMU_USER),
        ("database", EMU_DB),
        ("search_path", "public"),
    ];
    let (_tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    let err = server_error(result);
    assert_eq!(err.severity, "FATAL");
    assert_eq!(err.code, "0A000");
    assert_eq!(
        err.message,
        "Feature not supported: RDS Proxy currently doesn’t support the option search_path."
    );
    assert_eq!(emu.logins(), 0);
    assert_eq!(emu.rejected(), 1);
    let params = [
        ("user", EMU_USER),
        ("database", EMU_DB),
        ("options", "-c statement_timeout=5000"),
    ];
    let (_tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    let err = server_error(result);
    assert_eq!(err.code, "0A000");
    assert_eq!(
        err.message,
        "Feature not supported: RDS Proxy currently doesn’t support command-line options."
    );
    assert_eq!(emu.rejected(), 2);

    // Every parameter on the supported list passes.
    let params = [
        ("user", EMU_USER),
        ("database", EMU_DB),
        ("application_name", "x"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
    ];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    result.unwrap_or_else(|e| panic!("login with supported parameters: {e}"));
    let rows = wire::simple_query(&mut tls, "show extra_float_digits")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, vec![vec![Some("3".to_owned())]]);
    assert_eq!(emu.logins(), 1);
    assert_eq!(emu.rejected(), 2);
}

#[tokio::test]
async fn emulator_requires_tls_and_verifies_certificates() {
    let (pki, emu) = setup().await;

    // A plain startup is refused.
    let mut tcp = TcpStream::connect(emu.addr).await.expect("connect");
    let result = wire::login(&mut tcp, &[("user", EMU_USER)], "x").await;
    let err = server_error(result);
    assert_eq!(err.code, "08P01");
    assert_eq!(err.message, "This RDS Proxy requires TLS connections");
    assert_eq!(emu.rejected(), 1);

    // A client trusting another CA fails the handshake; so does a wrong server name.
    let other = TestPki::new();
    let res = wire::connect_tls(emu.addr, DEFAULT_ENDPOINT_HOST, other.client_config()).await;
    assert!(res.is_err(), "untrusted CA must fail");
    let res = wire::connect_tls(emu.addr, "other.example.com", pki.client_config()).await;
    assert!(res.is_err(), "wrong name must fail");
    wait_for(|| emu.tls_failures() == 2).await;

    // The CA file is a usable PEM for the sidecar's --ca-file.
    let pem = std::fs::read_to_string(pki.ca_file()).expect("read CA file");
    assert_eq!(pem, pki.ca_pem);
    assert_eq!(emu.logins(), 0);
}

#[tokio::test]
async fn emulator_without_tls_answers_n_and_checks_passwords() {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("start cluster");
    cluster.ensure_database(EMU_DB, EMU_USER).await;
    let emu = Emulator::start(EmulatorOptions {
        backend_port: cluster.port,
        auth: EmulatorAuth::Password("hunter2".into()),
        ..EmulatorOptions::default()
    })
    .await;

    let mut tcp = TcpStream::connect(emu.addr).await.expect("connect");
    tcp.write_all(&wire::ssl_request()).await.expect("write");
    assert_eq!(tcp.read_u8().await.expect("read"), b'N');
    let params = [("user", EMU_USER), ("database", EMU_DB)];
    let err = server_error(wire::login(&mut tcp, &params, "wrong").await);
    assert_eq!(err.code, "28P01");
    assert_eq!(
        err.message,
        format!("password authentication failed for user \"{EMU_USER}\"")
    );

    let mut tcp = TcpStream::connect(emu.addr).await.expect("connect");
    let info = wire::login(&mut tcp, &params, "hunter2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.auth_codes, vec![3, 0]);
    assert_eq!(emu.logins(), 1);
    assert_eq!(emu.rejected(), 1);
    assert!(!emu.accepted_logins()[0].tls);
}

#[tokio::test]
async fn emulator_rereads_keys_on_every_login() {
    let (pki, emu) = setup().await;
    let params = [("user", EMU_USER), ("database", EMU_DB)];

    emu.remove_key(TEST_AKID);
    let (_tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    assert_eq!(server_error(result).code, "28P01");
    let reason = emu.last_rejection().expect("reason");
    assert!(reason.contains("unknown access key"), "{reason}");

    emu.add_key("AKIAROTATED", "rotated-secret");
    let token = sign_token_for_tests(
        &emu.endpoint(),
        DEFAULT_REGION,
        EMU_USER,
        "AKIAROTATED",
        "rotated-secret",
        Some("sess"),
        unix_now(),
    );
    let (_tls, result) = tls_login(&emu, &pki, &params, &token).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(emu.logins(), 1);
    assert_eq!(emu.rejected(), 1);
    assert_eq!(
        emu.accepted_logins()[0].session_token.as_deref(),
        Some("sess")
    );

    // Throttling refuses otherwise valid logins.
    emu.throttle_next_logins(1);
    let (_tls, result) = tls_login(&emu, &pki, &params, &token).await;
    let err = server_error(result);
    assert!(err.message.contains("too many competing requests"), "{err}");
    let (_tls, result) = tls_login(&emu, &pki, &params, &token).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(emu.logins(), 2);
    assert_eq!(emu.rejected(), 2);
}

#[tokio::test]
async fn emulator_sends_no_keys_and_ignores_cancels_as_rds_proxy_does() {
    let (pki, emu) = setup().await;
    let params = [("user", EMU_USER), ("database", EMU_DB)];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    let info = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.backend_key, None, "RDS Proxy sends no BackendKeyData");
    tls.write_all(&wire::query_message("select pg_sleep(0.5)"))
        .await
        .expect("send query");
    tls.flush().await.expect("flush");
    let mut cancel = wire::connect_tls(emu.addr, DEFAULT_ENDPOINT_HOST, pki.client_config())
        .await
        .expect("TLS for cancel");
    cancel
        .write_all(&wire::cancel_request(1, 2))
        .await
        .expect("send cancel");
    let mut sink = Vec::new();
    let _ = cancel.read_to_end(&mut sink).await;
    let tags = tokio::time::timeout(Duration::from_secs(10), async {
        let mut tags = Vec::new();
        loop {
            let (tag, _) = wire::read_message(&mut tls).await.expect("read");
            tags.push(tag);
            if tag == b'Z' {
                return tags;
            }
        }
    })
    .await
    .expect("the query ends");
    assert!(!tags.contains(&b'E'), "not cancelled: {tags:?}");
    assert_eq!((emu.cancels(), emu.ignored_cancels()), (0, 1));
}

#[tokio::test]
async fn emulator_detects_what_pins_a_session() {
    let (pki, emu) = setup().await;
    let params = [("user", EMU_USER), ("database", EMU_DB)];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    for harmless in [
        "select 1",
        "begin; set local work_mem = '8MB'; commit",
        "select pg_advisory_xact_lock(1)",
    ] {
        wire::simple_query(&mut tls, harmless)
            .await
            .unwrap_or_else(|e| panic!("{harmless}: {e}"));
    }
    assert_eq!(emu.pinned_sessions(), 0);
    wire::simple_query(&mut tls, "SET statement_timeout = 1000")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wire::simple_query(&mut tls, "discard all")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        emu.pinned_sessions(),
        1,
        "one session, pinned once: {:?}",
        emu.pin_log()
    );
    let log = emu.pin_log();
    assert!(
        log[0].contains("pinned") && log[0].contains("session settings"),
        "{log:?}"
    );

    let (mut other, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    wire::simple_query(&mut other, "select pg_try_advisory_lock(42)")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(emu.pinned_sessions(), 2);
}

#[tokio::test]
async fn plain_postgres_emulator_forwards_cancel_requests() {
    let pki = TestPki::new();
    let emu = support::plain_emulator_for_cluster(&pki).await;
    shared_cluster().ensure_database(EMU_DB, EMU_USER).await;
    let params = [("user", EMU_USER), ("database", EMU_DB)];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    let info = result.unwrap_or_else(|e| panic!("{e}"));
    let (pid, key) = info.backend_key.expect("BackendKeyData");

    tls.write_all(&wire::query_message("select pg_sleep(30)"))
        .await
        .expect("send query");
    tls.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Cancel over TLS (as the sidecar's upstream connector would).
    let mut cancel = wire::connect_tls(emu.addr, DEFAULT_ENDPOINT_HOST, pki.client_config())
        .await
        .expect("TLS for cancel");
    cancel
        .write_all(&wire::cancel_request(pid, key))
        .await
        .expect("send cancel");
    cancel.flush().await.expect("flush");
    let mut sink = Vec::new();
    let _ = cancel.read_to_end(&mut sink).await;

    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (tag, body) = wire::read_message(&mut tls).await.expect("read");
            if tag == b'E' {
                return wire::ServerError::from_body(&body);
            }
        }
    })
    .await
    .expect("query was cancelled within 10 s");
    assert_eq!(outcome.code, "57014", "{outcome}");
    assert_eq!(emu.cancels(), 1);
}

#[tokio::test]
async fn emulator_can_kill_live_sessions() {
    let (pki, emu) = setup().await;
    let params = [("user", EMU_USER), ("database", EMU_DB)];
    let (mut tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(emu.active(), 1);

    emu.kill_connections();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("connection closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    wait_for(|| emu.active() == 0).await;

    // New connections are still served.
    let (_tls, result) = tls_login(&emu, &pki, &params, &test_token(EMU_USER)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(emu.logins(), 2);
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within 5 s");
}

#[test]
fn sign_request_is_debug_and_rejections_display() {
    let req = SignRequest {
        host_port: "h:1",
        region: "r",
        db_user: "u",
        access_key_id: "a",
        secret_access_key: "s",
        session_token: None,
        now_unix: 0,
        expires: 900,
    };
    assert!(format!("{req:?}").contains("h:1"));
    let e = TokenRejection::WrongUser {
        expected: "a".into(),
        got: "b".into(),
    };
    assert_eq!(
        e.to_string(),
        "DBUser 'b' does not match the login user 'a'"
    );
}
