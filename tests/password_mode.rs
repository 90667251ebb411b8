//! `--auth password`: the sidecar logs in with a fixed password, speaking SCRAM-SHA-256 and md5
//! to a real PostgreSQL, and cleartext to the emulator over TLS. A wrong password is a 28P01
//! with a password hint (never an IAM one).

mod harness;
mod support;

use std::sync::Arc;

use rds_iam_sidecar::cli::TlsMode;
use rds_iam_sidecar::config::{Config, Endpoint, UpstreamAuth};
use rds_iam_sidecar::secret::Secret;
use support::{
    DEFAULT_ENDPOINT_HOST, Emulator, EmulatorAuth, EmulatorOptions, TestPki, shared_cluster,
};

const PASSWORD: &str = "s3cret pass/word+";

/// Makes `scram_user` (SCRAM-SHA-256) and `md5_user` (md5) require passwords over TCP.
async fn password_roles() -> &'static support::PgCluster {
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

fn direct_config(port: u16, password: &str) -> Config {
    let mut config = Config::new(
        Endpoint {
            host: "127.0.0.1".to_owned(),
            port,
        },
        UpstreamAuth::Password(Secret::new(password)),
    );
    config.tls_mode = TlsMode::Disable;
    config
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
    config.auth = UpstreamAuth::Password(Secret::new(PASSWORD));
    let sidecar = rds_iam_sidecar::start(config, None).await.expect("start");
    assert_eq!(
        query_as(&sidecar, "postgres").await.expect("login"),
        "postgres"
    );
    assert_eq!(emulator.logins(), 1);
    assert!(emulator.accepted_logins()[0].tls);
}
