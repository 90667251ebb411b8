//! One sidecar, several upstream endpoints: two RDS Proxy emulators with different endpoint
//! names and regions, each in front of its own PostgreSQL, configured the way users write it
//! (`--upstream` repeated, each with its own `?settings`). Each endpoint's clients reach its
//! own database with tokens signed for its own host; metrics carry an `upstream` label;
//! `/readyz` names the endpoint that is down; a bad per-endpoint value is one line, exit 2.

mod harness;
mod support;

use std::time::Duration;

use clap::Parser;
use harness::binary::sidecar_command;
use harness::credentials;
use harness::scrape::{scrape, value};
use rds_iam_sidecar::ops::admin_client::request;
use rds_iam_sidecar::settings::Settings;
use rds_iam_sidecar::settings::cli::Cli;
use support::{PgCluster, TEST_AKID, TEST_SECRET, TestPki};
use tokio_postgres::NoTls;

const WRITER: &str = "orders.proxy-aaa111.us-east-1.rds.amazonaws.com";
const READER: &str = "orders-ro.endpoint.proxy-bbb222.eu-west-1.rds.amazonaws.com";
// Metrics are process-wide: tests that count them use endpoints of their own.
const BILLING: &str = "billing.proxy-ccc333.us-west-2.rds.amazonaws.com";
const BILLING_RO: &str = "billing-ro.endpoint.proxy-ddd444.us-west-2.rds.amazonaws.com";

/// Settings parsed from command-line words, as `run` parses them.
fn settings(words: &[String]) -> Settings {
    let argv = std::iter::once("rds-iam-sidecar".to_owned()).chain(words.iter().cloned());
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    Settings::from_args(cli.run, &|_| None).expect("valid settings")
}

/// The port of the PostgreSQL a client of `addr` ends up on.
async fn backend_port_through(addr: std::net::SocketAddr) -> i32 {
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres connect_timeout=10",
        addr.ip(),
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .expect("connect through the sidecar");
    tokio::spawn(connection);
    let port: String = client
        .query_one("select current_setting('port')", &[])
        .await
        .expect("query")
        .get(0);
    port.parse().expect("a port number")
}

#[tokio::test]
async fn each_endpoint_reaches_its_own_database_with_its_own_tokens() {
    let writer_db = tokio::task::spawn_blocking(support::shared_cluster)
        .await
        .expect("cluster");
    let reader_db = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("second cluster");
    let pki = TestPki::new();
    let writer = support::emulator_for_endpoint(&pki, WRITER, "us-east-1", writer_db.port).await;
    let reader = support::emulator_for_endpoint(&pki, READER, "eu-west-1", reader_db.port).await;
    let ca = pki.ca_file().display().to_string();
    let settings = settings(&[
        "--upstream".into(),
        format!(
            "{WRITER}:5432?upstream-addr=127.0.0.1:{}",
            writer.addr.port()
        ),
        "--upstream".into(),
        format!(
            "{READER}:5432?upstream-addr=127.0.0.1:{}&pool-mode=transaction&pool-size=3",
            reader.addr.port()
        ),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--ca-file".into(),
        ca,
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    assert_eq!(settings.endpoints[1].pool.size, 3);
    assert_eq!(settings.endpoints[0].pool.size, 20);
    let sidecar = rds_iam_sidecar::start(settings, Some(credentials(TEST_AKID, TEST_SECRET)))
        .await
        .expect("sidecar starts");
    assert_eq!(sidecar.endpoints.len(), 2);
    let writer_addr = sidecar.endpoints[0].tcp_addrs[0];
    let reader_addr = sidecar.endpoints[1].tcp_addrs[0];
    assert_ne!(writer_addr, reader_addr);

    assert_eq!(
        backend_port_through(writer_addr).await,
        i32::from(writer_db.port)
    );
    assert_eq!(
        backend_port_through(reader_addr).await,
        i32::from(reader_db.port)
    );
    assert_eq!(
        backend_port_through(reader_addr).await,
        i32::from(reader_db.port)
    );
    // Each emulator verified tokens signed for its own host and region, and nothing else.
    assert_eq!(writer.logins(), 1, "{:?}", writer.rejections());
    assert!(reader.logins() >= 1, "{:?}", reader.rejections());
    assert_eq!(writer.rejected() + reader.rejected(), 0);

    let admin = sidecar.admin_addr.expect("admin on").to_string();
    let metrics = scrape(&admin).await;
    let accepted = |host: &str| {
        value(
            &metrics,
            "rds_iam_sidecar_client_connections_accepted_total",
            &[("upstream", host)],
        )
    };
    assert_eq!(accepted(WRITER), Some(1.0));
    assert_eq!(accepted(READER), Some(2.0));
    let logins = |host: &str| {
        value(
            &metrics,
            "rds_iam_sidecar_upstream_logins_total",
            &[("upstream", host), ("result", "ok")],
        )
    };
    assert_eq!(logins(WRITER), Some(writer.logins() as f64));
    assert_eq!(logins(READER), Some(reader.logins() as f64));
    let ready = request(&admin, "GET", "/readyz", Duration::from_secs(5))
        .await
        .expect("readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn readyz_names_the_endpoint_that_is_down() {
    let cluster = tokio::task::spawn_blocking(support::shared_cluster)
        .await
        .expect("cluster");
    let pki = TestPki::new();
    let writer = support::emulator_for_endpoint(&pki, BILLING, "us-west-2", cluster.port).await;
    // Nothing listens behind the reader endpoint.
    let dead = harness::binary::free_port();
    let settings = settings(&[
        "--upstream".into(),
        format!(
            "{BILLING}:5432?upstream-addr=127.0.0.1:{},{BILLING_RO}:5432?upstream-addr=127.0.0.1:{dead}",
            writer.addr.port()
        ),
        "--listen=127.0.0.1:0".into(),
        format!("--ca-file={}", pki.ca_file().display()),
        "--admin-listen=127.0.0.1:0".into(),
        "--connect-timeout=1s".into(),
    ]);
    let sidecar = rds_iam_sidecar::start(settings, Some(credentials(TEST_AKID, TEST_SECRET)))
        .await
        .expect("sidecar starts");
    let admin = sidecar.admin_addr.expect("admin on").to_string();
    let ready = request(&admin, "GET", "/readyz", Duration::from_secs(10))
        .await
        .expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains(&format!("upstream {BILLING_RO}:5432"))
            && ready.body.contains("not reachable"),
        "{}",
        ready.body
    );
    assert!(!ready.body.contains(BILLING), "{}", ready.body);
    // The endpoint that is up serves its clients all the same.
    assert_eq!(
        backend_port_through(sidecar.endpoints[0].tcp_addrs[0]).await,
        i32::from(cluster.port)
    );
}

#[test]
fn a_bad_value_of_one_endpoint_is_one_line_naming_it_and_the_key() {
    let home = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            format!("{READER}:5432?pool-size=0"),
            format!("--upstream {READER}:5432: pool-size"),
        ),
        (
            format!("{READER}:5432?pool-sise=3"),
            format!("upstream {READER}:5432: 'pool-sise'"),
        ),
        (
            format!("{READER}:5432?listen=nowhere"),
            format!("--upstream {READER}:5432: listen"),
        ),
    ];
    for (upstream, expected) in cases {
        let output = sidecar_command(home.path())
            .args([
                "--upstream",
                &format!("{WRITER}:5432"),
                "--upstream",
                &upstream,
            ])
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{upstream}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&expected), "{upstream}: {stderr}");
    }
}

#[test]
fn two_endpoints_cannot_share_a_listener() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = sidecar_command(home.path())
        .args([
            "--upstream",
            &format!("{WRITER}:5432?listen=127.0.0.1:6500"),
            "--upstream",
            &format!("{READER}:5432?listen=127.0.0.1:6500"),
        ])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--upstream {READER}:5432: listen")) && stderr.contains(WRITER),
        "{stderr}"
    );
}

#[test]
fn the_toml_tables_and_the_repeated_flag_give_the_same_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        format!(
            "pool-size = 7\nlisten = \"127.0.0.1:7432\"\n\
             [[upstream]]\nendpoint = \"{WRITER}:5432\"\n\
             [[upstream]]\nendpoint = \"{READER}:5432\"\npool-mode = \"transaction\"\n\
             listen = \"127.0.0.1:8432\"\nwarm-pools = [\"app@orders\"]\nmin-idle = 1\n"
        ),
    )
    .expect("write");
    let from_file = settings(&[format!("--config={}", path.display())]);
    let from_flags = settings(&[
        "--pool-size=7".into(),
        "--listen=127.0.0.1:7432".into(),
        format!("--upstream={WRITER}:5432"),
        format!(
            "--upstream={READER}:5432?pool-mode=transaction&listen=127.0.0.1:8432&warm-pool=app@orders&min-idle=1"
        ),
    ]);
    assert_eq!(format!("{from_file:?}"), format!("{from_flags:?}"));
    assert_eq!(from_file.endpoints.len(), 2);
    assert_eq!(from_file.endpoints[1].pool.size, 7);
    assert_eq!(
        from_file.endpoints[1].listen,
        ["127.0.0.1:8432".parse().expect("addr")]
    );
    assert_eq!(from_file.endpoints[1].warm_pools.len(), 1);
    // Tokens are signed per endpoint, for the region in its own name.
    assert_eq!(
        from_file.endpoints[1].upstream.auth.region(),
        Some("eu-west-1")
    );
    // Without a listen of its own, the next endpoint takes the next port.
    let next = settings(&[
        "--listen=127.0.0.1:7432".into(),
        format!("--upstream={WRITER}:5432,{READER}:5432"),
    ]);
    assert_eq!(
        next.endpoints[1].listen,
        ["127.0.0.1:7433".parse().expect("addr")]
    );
}
