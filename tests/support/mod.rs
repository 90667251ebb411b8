//! Shared test support: a real PostgreSQL, a throw-away PKI, an independent SigV4 verifier,
//! raw wire-protocol helpers and an RDS Proxy emulator relaying to the PostgreSQL.
//!
//! Include it from a test with `mod support;`, or from an example with
//! `#[path = "../tests/support/mod.rs"] mod support;`. This file owns the module list and the
//! defaults most tests want (one access key, an emulator for the shared cluster).
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod emulator;
pub mod fault_relay;
pub mod live_sockets;
pub mod login_throttle;
pub mod pg;
pub mod proxy_session;
pub mod rustls_postgres;
pub mod sigv4;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use certs::TestPki;
pub use emulator::{
    DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, Emulator, EmulatorAuth, EmulatorOptions,
};
pub use fault_relay::FaultRelay;
pub use pg::{PgCluster, shared_cluster};

/// Access key id the default emulator knows.
pub const TEST_AKID: &str = "AKIASIDECARTEST00001";
/// Secret for [`TEST_AKID`] (with '/' and '+' like real secrets).
pub const TEST_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYsidecartest";

/// An emulator with the defaults: TLS certificate for [`DEFAULT_ENDPOINT_HOST`] signed by
/// `pki`'s CA, backend = [`shared_cluster`] (started on first use), endpoint port 5432,
/// region us-east-1, keys = {[`TEST_AKID`]: [`TEST_SECRET`]}, IAM auth.
pub async fn emulator_for_cluster(pki: &TestPki) -> Emulator {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("start the shared PostgreSQL cluster");
    emulator_for_cluster_at(pki, cluster.port).await
}

/// [`emulator_for_cluster`] in front of the PostgreSQL listening on `backend_port`.
pub async fn emulator_for_cluster_at(pki: &TestPki, backend_port: u16) -> Emulator {
    emulator_for_endpoint(pki, DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, backend_port).await
}

/// An emulator for the endpoint `host` in `region` (its certificate names `host`; tokens must
/// be signed for `host:5432` in `region`), in front of the PostgreSQL on `backend_port`.
pub async fn emulator_for_endpoint(
    pki: &TestPki,
    host: &str,
    region: &str,
    backend_port: u16,
) -> Emulator {
    Emulator::start(emulator_options(pki, host, region, backend_port)).await
}

/// The options of [`emulator_for_endpoint`], for a test to adjust.
pub fn emulator_options(
    pki: &TestPki,
    host: &str,
    region: &str,
    backend_port: u16,
) -> EmulatorOptions {
    EmulatorOptions {
        endpoint_host: host.to_owned(),
        region: region.to_owned(),
        tls: Some(pki.server_cert(&[host])),
        backend_port,
        keys: Arc::new(Mutex::new(HashMap::from([(
            TEST_AKID.to_owned(),
            TEST_SECRET.to_owned(),
        )]))),
        ..EmulatorOptions::default()
    }
}

/// [`emulator_for_cluster`] behaving as a plain PostgreSQL behind the proxy's TLS and IAM
/// front: any startup parameter, BackendKeyData passed on, cancels forwarded.
pub async fn plain_emulator_for_cluster(pki: &TestPki) -> Emulator {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("start the shared PostgreSQL cluster");
    let mut options = emulator_options(pki, DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, cluster.port);
    options.plain_postgres = true;
    Emulator::start(options).await
}

/// A token for `user` on the default endpoint, signed now with [`TEST_AKID`].
pub fn test_token(user: &str) -> String {
    sigv4::sign_token_for_tests(
        &format!("{DEFAULT_ENDPOINT_HOST}:5432"),
        DEFAULT_REGION,
        user,
        TEST_AKID,
        TEST_SECRET,
        None,
        unix_now(),
    )
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A name unique within this test run (`prefix_<pid>_<n>`), handy for roles and databases.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}_{}_{n}", std::process::id())
}
