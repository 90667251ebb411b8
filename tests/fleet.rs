//! The fleet simulation in small (`benches/fleet.sh` is the full one): several sidecars start
//! at once against one emulator that throttles IAM logins above a rate, each with a warm pool
//! and a client querying every 100 ms; then the proxy drops every connection at once (a
//! restart) and they all refill. No client may see an error, and the login attempts the proxy
//! sees stay near its limit instead of arriving together.

mod harness;
mod support;

use std::sync::Arc;
use std::time::Duration;

use harness::{config_for, credentials};
use rds_iam_sidecar::RunningSidecar;
use rds_iam_sidecar::pool::{PoolKey, PoolMode};
use rds_iam_sidecar::settings::Settings;
use support::login_throttle::LoginSecond;
use support::{DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, Emulator, TEST_AKID, TEST_SECRET, TestPki};
use tokio::sync::RwLock;

const SIDECARS: usize = 8;
const WARM: usize = 2;
/// Logins per second the emulated proxy lets through.
const LIMIT: u32 = 10;

/// The warm-up window: the fleet's warm pools (16 logins) come at 4/s, under the limit; each
/// client's first login (8) comes at once on top.
const SPREAD: Duration = Duration::from_secs(4);

/// Starts one sidecar in front of `emulator`: transaction mode, a warm pool of [`WARM`] spread
/// over [`SPREAD`].
async fn sidecar(emulator: &Emulator, pki: &TestPki) -> RunningSidecar {
    let mut endpoint = config_for(emulator, pki);
    endpoint.pool.mode = PoolMode::Transaction;
    endpoint.pool.min_idle = WARM;
    endpoint.pool.warm_up_spread = SPREAD;
    endpoint.warm_pools = vec![PoolKey::parse_spec("postgres@postgres", None).expect("spec")];
    let credentials = credentials(TEST_AKID, TEST_SECRET);
    rds_iam_sidecar::start(Settings::new(vec![endpoint]), Some(credentials))
        .await
        .expect("sidecar starts")
}

/// A client of `sidecar` running `select 1` every 100 ms until `stop`, pausing while `gate`
/// is held for writing; the errors it saw, as SQLSTATEs (or the error text).
async fn client(
    sidecar: std::net::SocketAddr,
    gate: Arc<RwLock<()>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=30",
        sidecar.port()
    );
    let describe = |e: tokio_postgres::Error| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |db| db.code().code().to_owned())
    };
    let client = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => return vec![describe(e)],
    };
    let mut errors = Vec::new();
    while !*stop.borrow() {
        {
            let _running = gate.read().await;
            if let Err(e) = client.simple_query("select 1").await {
                errors.push(describe(e));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    errors
}

/// Waits (up to 40 s) until the emulator relays every sidecar's warm pool, and every pool is
/// whole with nothing opening or in use; whether it did. (A client's own connection can make
/// the emulator's count whole while a spare is still to come, which would then log in during
/// the restart measured next; a pool's count alone still holds dead connections until its
/// upkeep retires them.)
async fn all_warm(sidecars: &[RunningSidecar], emulator: &Emulator) -> bool {
    let settled = |sidecar: &RunningSidecar| {
        sidecar
            .pool_counts("postgres", "postgres")
            .is_some_and(|(idle, open)| idle >= WARM && open == idle)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while tokio::time::Instant::now() < deadline {
        if emulator.active() >= (SIDECARS * WARM) as u64 && sidecars.iter().all(settled) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Login attempts (let through + throttled) in the busiest second.
fn peak_attempts(seconds: &[LoginSecond]) -> u64 {
    seconds
        .iter()
        .map(|s| s.accepted + s.throttled)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_starting_and_reconnecting_together_stays_near_the_proxys_login_limit() {
    let pki = TestPki::new();
    let cluster = tokio::task::spawn_blocking(support::shared_cluster)
        .await
        .expect("shared cluster");
    let mut options =
        support::emulator_options(&pki, DEFAULT_ENDPOINT_HOST, DEFAULT_REGION, cluster.port);
    options.login_rate_limit = Some(LIMIT);
    let emulator = Emulator::start(options).await;

    // All at once, as a deploy starts every task.
    let sidecars =
        futures_util::future::join_all((0..SIDECARS).map(|_| sidecar(&emulator, &pki))).await;
    let gate = Arc::new(RwLock::new(()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = sidecars
        .iter()
        .map(|s| tokio::spawn(client(s.addr(), gate.clone(), stopped.clone())))
        .collect();
    // Spread over 4 s, later if throttling lowered the rate (spares wait for it to recover).
    let warmed = all_warm(&sidecars, &emulator).await;
    let warm_up = emulator.login_seconds();
    assert!(
        warmed,
        "every warm pool opened: {} sessions",
        emulator.active()
    );

    // A proxy restart: every session dropped at once, between the clients' queries (a query
    // running at that moment would rightly fail; that is not what this measures).
    let killed_at = emulator.second_now();
    {
        let _paused = gate.write().await;
        emulator.kill_connections();
        // Until every relayed session is gone: a query sent on one still closing would fail.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while emulator.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The clients run on while the pools refill: after the next upkeep (every 5 s) has
    // retired the dead connections, spread over 4 s, later if throttling lowered the rate.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let refilled = all_warm(&sidecars, &emulator).await;
    let refilled_sessions = emulator.active();
    let _ = stop.send(true);
    let mut errors = Vec::new();
    for client in clients {
        errors.extend(client.await.expect("client task"));
    }
    let all = emulator.login_seconds();
    let refill = &all[killed_at.min(all.len())..];
    for sidecar in sidecars {
        sidecar.stop().await;
    }

    eprintln!("logins per second, warm-up: {warm_up:?}\nafter the restart: {refill:?}");
    assert!(errors.is_empty(), "client errors: {errors:?}");
    // Every sidecar may send one login for its client's query at once (the small burst); the
    // rest is spread, paced and backed off.
    let most = u64::from(LIMIT) + SIDECARS as u64;
    assert!(
        peak_attempts(&warm_up) <= most,
        "warm-up attempts per second: {warm_up:?}"
    );
    assert!(
        peak_attempts(refill) <= most,
        "refill attempts per second: {refill:?}"
    );
    assert!(
        refilled,
        "the pools refilled: {refilled_sessions} sessions; logins {refill:?}"
    );
}
