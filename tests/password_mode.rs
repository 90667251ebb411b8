//! `--auth password`: the sidecar logs in with a fixed password, speaking SCRAM-SHA-256 and md5
//! to a real PostgreSQL, and cleartext to the emulator over TLS. A wrong password is a 28P01
//! with a password hint (never an IAM one).

mod harness;
mod support;

use std::sync::Arc;

use rds_iam_sidecar::secret::Secret;
use rds_iam_sidecar::settings::{EndpointSettings, Settings};
use rds_iam_sidecar::upstream::tls::TlsMode;
use rds_iam_sidecar::upstream::{Endpoint, UpstreamAuth, UpstreamSettings};
use support::{
    DEFAULT_ENDPOINT_HOST, Emulator, EmulatorAuth, EmulatorOptions, TestPki, shared_cluster,
};

const PASSWORD: &str = "s3cret pass/word+";

/// Makes `scram_user` (SCRAM-SHA-256) and `md5_user` (md5) require passwords over TCP.
async fn password_roles() -> &'static support::PgCluster {
    static READY: tokio::sync::OnceCell<&'static support::PgCluster> =
        tokio::sync::OnceCell::const_new();
    READY.get_or_init(make_password_roles).await
}

async fn make_password_roles() -> &'static support::PgCluster {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("cluster");
    let hba = cluster.data_dir.join("pg_hba.conf");
    let current = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    if !current.contains("scram_user") {
        let rules = "host all scram_user 127.0.0.1/32 scram-sha-256\n\
                     host all md5_user 127.0.0.1/32 md5\n";
        std::fs::write(&hba, format!("{rules}{current}")).expect("write pg_hba.conf");
    }
    let sql_password = PASSWORD.replace('\'', "''");
    cluster
        .exec(&format!(
            "do $$ begin
               if not exists (select from pg_roles where rolname = 'scram_user') then
                 set password_encryption = 'scram-sha-256';
                 create role scram_user login password '{sql_password}';
               end if;
               if not exists (select from pg_roles where rolname = 'md5_user') then
                 set password_encryption = 'md5';
                 create role md5_user login password '{sql_password}';
               end if;
             end $$;
             select pg_reload_conf();"
        ))
        .await;
    cluster
}

fn direct_config(port: u16, password: &str) -> Settings {
    let mut config = UpstreamSettings::new(
        Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
        },
        UpstreamAuth::Password(Secret::new(password)),
    );
    config.tls_mode = TlsMode::Disable;
    Settings::new(vec![EndpointSettings::new(config)])
}

async fn query_as(
    sidecar: &rds_iam_sidecar::RunningSidecar,
    user: &str,
) -> Result<String, tokio_postgres::Error> {
    let addr = sidecar.addr();
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres",
            addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(connection);
    let row = client.query_one("select current_user::text", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn scram_and_md5_against_real_postgres() {
    let cluster = password_roles().await;
    let sidecar = rds_iam_sidecar::start(direct_config(cluster.port, PASSWORD), None)
        .await
        .expect("start");
    assert_eq!(
        query_as(&sidecar, "scram_user").await.expect("scram login"),
        "scram_user"
    );
    assert_eq!(
        query_as(&sidecar, "md5_user").await.expect("md5 login"),
        "md5_user"
    );
}

#[tokio::test]
async fn wrong_password_gets_28p01_with_a_password_hint() {
    let cluster = password_roles().await;
    let sidecar = rds_iam_sidecar::start(direct_config(cluster.port, "wrong"), None)
        .await
        .expect("start");
    let error = query_as(&sidecar, "scram_user")
        .await
        .expect_err("must fail");
    let (code, _, hint) = harness::db_error(&error);
    assert_eq!(code, "28P01");
    let hint = hint.expect("hint");
    assert!(hint.contains("RDS_IAM_SIDECAR_PASSWORD"), "{hint}");
    assert!(!hint.contains("rds_iam"), "{hint}");
}

#[tokio::test]
async fn cleartext_password_over_tls_to_the_emulator() {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("cluster");
    let pki = TestPki::new();
    let emulator = Emulator::start(EmulatorOptions {
        tls: Some(pki.server_cert(&[DEFAULT_ENDPOINT_HOST])),
        backend_port: cluster.port,
        auth: EmulatorAuth::Password(PASSWORD.to_owned()),
        keys: Arc::default(),
        ..EmulatorOptions::default()
    })
    .await;
    let mut config = harness::config_for(&emulator, &pki);
    config.upstream.auth = UpstreamAuth::Password(Secret::new(PASSWORD));
    let sidecar = rds_iam_sidecar::start(Settings::new(vec![config]), None)
        .await
        .expect("start");
    assert_eq!(
        query_as(&sidecar, "postgres").await.expect("login"),
        "postgres"
    );
    assert_eq!(emulator.logins(), 1);
    assert!(emulator.accepted_logins()[0].tls);
}

/// The shared cluster with TLS on (certificate for the RDS-like endpoint name from `pki`).
async fn tls_cluster() -> (&'static support::PgCluster, &'static TestPki) {
    static READY: tokio::sync::OnceCell<(&'static support::PgCluster, &'static TestPki)> =
        tokio::sync::OnceCell::const_new();
    *READY.get_or_init(enable_tls).await
}

async fn enable_tls() -> (&'static support::PgCluster, &'static TestPki) {
    static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
    let cluster = password_roles().await;
    let pki = PKI.get_or_init(TestPki::new);
    let cert = cluster.data_dir.join("sidecar-test.crt");
    {
        let key = cluster.data_dir.join("sidecar-test.key");
        let (cert_pem, key_pem) = pki.server_cert_pem(&[DEFAULT_ENDPOINT_HOST]);
        std::fs::write(&key, key_pem).expect("write key");
        std::fs::write(&cert, cert_pem).expect("write cert");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let reference = format!(
            "--reference={}",
            cluster.data_dir.join("PG_VERSION").display()
        );
        let status = std::process::Command::new("chown")
            .arg(&reference)
            .arg(&key)
            .arg(&cert)
            .status()
            .expect("chown");
        assert!(status.success());
        // ALTER SYSTEM refuses to run inside the implicit transaction of a multi-statement query.
        for setting in [
            format!("ssl_cert_file = '{}'", cert.display()),
            format!("ssl_key_file = '{}'", key.display()),
            "ssl = on".to_owned(),
        ] {
            cluster.exec(&format!("alter system set {setting}")).await;
        }
        cluster.exec("select pg_reload_conf()").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    (cluster, pki)
}

fn iam_config_for_real_postgres(cluster: &support::PgCluster, pki: &TestPki) -> Settings {
    let mut config = UpstreamSettings::new(
        Endpoint {
            host: DEFAULT_ENDPOINT_HOST.to_owned(),
            port: 5432,
        },
        UpstreamAuth::Iam {
            region: "us-east-1".to_owned(),
            region_source: rds_iam_sidecar::iam::region::RegionSource::Flag,
        },
    );
    config.upstream_addr = Some(Endpoint {
        host: "127.0.0.1".to_owned(),
        port: cluster.port,
    });
    config.ca_file = Some(pki.ca_file());
    Settings::new(vec![EndpointSettings::new(config)])
}

#[tokio::test]
async fn iam_mode_against_a_server_asking_for_scram_says_iam_is_not_in_effect() {
    let (cluster, pki) = tls_cluster().await;
    let sidecar = rds_iam_sidecar::start(
        iam_config_for_real_postgres(cluster, pki),
        Some(harness::credentials(
            support::TEST_AKID,
            support::TEST_SECRET,
        )),
    )
    .await
    .expect("start");
    // Real PostgreSQL over verify-full TLS: a trust user logs in (no password asked) ...
    assert_eq!(
        query_as(&sidecar, "postgres").await.expect("trust login"),
        "postgres"
    );
    // ... while a user that must give a SCRAM password is not an IAM user.
    let error = query_as(&sidecar, "scram_user")
        .await
        .expect_err("must fail");
    let (code, message, hint) = harness::db_error(&error);
    assert_eq!(code, "28000");
    assert!(message.contains("SCRAM-SHA-256"), "{message}");
    assert!(hint.is_some_and(|h| h.contains("GRANT rds_iam TO \"scram_user\"")));
}
