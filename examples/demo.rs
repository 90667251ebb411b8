//! The local demo: an ephemeral PostgreSQL, the RDS Proxy emulator in front of it (TLS with a
//! certificate for an RDS Proxy host name, real SigV4 token checks), and the sidecar logging in
//! through it with IAM. Prints the `psql` line to type; Ctrl-C stops everything.
//!
//! `cargo run --example demo` (needs the PostgreSQL server binaries `initdb` and `postgres`).
//! `cargo run --example demo -- --check` runs one query through the chain and exits.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use rds_iam_sidecar::iam::credentials::CredentialCache;
use rds_iam_sidecar::iam::region::RegionSource;
use rds_iam_sidecar::ops::logging::LogFormat;
use rds_iam_sidecar::settings::{EndpointSettings, Settings};
use rds_iam_sidecar::upstream::{Endpoint, UpstreamAuth, UpstreamSettings};
use support::{DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, PgCluster, TEST_AKID, TEST_SECRET, TestPki};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let check_only = std::env::args().any(|a| a == "--check");
    let port: u16 = std::env::var("DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(15432);
    rds_iam_sidecar::ops::logging::init(LogFormat::Text, "info");

    eprintln!("starting an ephemeral PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await?;
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster_at(&pki, cluster.port).await;

    let mut upstream = UpstreamSettings::new(
        Endpoint {
            host: DEFAULT_ENDPOINT_HOST.to_owned(),
            port: 5432,
        },
        UpstreamAuth::Iam {
            region: DEFAULT_REGION.to_owned(),
            region_source: RegionSource::EndpointName,
        },
    );
    upstream.upstream_addr = Some(Endpoint {
        host: "127.0.0.1".to_owned(),
        port: emulator.addr.port(),
    });
    upstream.ca_file = Some(pki.ca_file());
    let mut endpoint = EndpointSettings::new(upstream);
    endpoint.listen = vec![([127, 0, 0, 1], port).into()];
    let credentials = Arc::new(CredentialCache::new(Credentials::new(
        TEST_AKID,
        TEST_SECRET,
        None,
        None,
        "demo",
    )));
    let settings = Settings::new(vec![endpoint]);
    let sidecar = rds_iam_sidecar::start(settings, Some(credentials)).await?;

    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    if check_only {
        let (client, connection) =
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let row = client
            .query_one("select current_user::text, version()", &[])
            .await?;
        let user: String = row.get(0);
        println!(
            "demo check ok: logged in as {user} through the emulator ({} IAM logins verified)",
            emulator.logins()
        );
        drop(client);
        sidecar.stop().await;
        return Ok(());
    }

    println!();
    println!(
        "  RDS Proxy emulator : {} (pretends to be {DEFAULT_ENDPOINT_HOST}:5432)",
        emulator.addr
    );
    println!(
        "  rds-iam-sidecar    : 127.0.0.1:{port}, IAM tokens signed with the demo key {TEST_AKID}"
    );
    println!();
    println!("  Connect with:  psql \"{conninfo}\"");
    println!();
    println!("  The same sidecar from the command line would be:");
    println!(
        "    AWS_ACCESS_KEY_ID={TEST_AKID} AWS_SECRET_ACCESS_KEY=… rds-iam-sidecar \\\n      --upstream {DEFAULT_ENDPOINT_HOST}:5432 --upstream-addr {} \\\n      --ca-file {} --listen 127.0.0.1:{port}",
        emulator.addr,
        pki.ca_file().display()
    );
    println!();
    println!("  Ctrl-C to stop.");
    let mut report = tokio::time::interval(Duration::from_secs(60));
    report.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => eprintln!("emulator: {} IAM logins accepted, {} rejected", emulator.logins(), emulator.rejected()),
        }
    }
    eprintln!("stopping (emulator saw {} IAM logins)", emulator.logins());
    sidecar.stop().await;
    Ok(())
}
