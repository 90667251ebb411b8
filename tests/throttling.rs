//! Throttled IAM logins (RDS Proxy's "too many competing requests") are their own outcome:
//! retried after a backoff without refetching credentials while the client waits, an 08004
//! saying so when the wait runs out, counted in the metrics; and what a pool does together
//! (warm-up, refill after the proxy dropped every connection) is spread over a window.

mod harness;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_credential_types::provider::{ProvideCredentials, future};
use harness::{Stack, conn_string, credentials, db_error, stack_behind, try_connect};
use rds_iam_sidecar::iam::credentials::CredentialCache;
use rds_iam_sidecar::pool::PoolKey;
use rds_iam_sidecar::settings::Settings;
use support::{DEFAULT_REGION, Emulator, TEST_AKID, TEST_SECRET, TestPki, emulator_options};

/// The emulator for `host` (a name of its own per test: metrics are labelled by it), with at
/// most `limit` logins per second, and the sidecar in front of it.
async fn stack_for(
    host: &str,
    limit: Option<u32>,
    adjust: impl FnOnce(&mut Settings),
    credentials: Arc<CredentialCache>,
) -> Stack {
    let (pki, emulator) = emulator_for(host, limit).await;
    sidecar_in_front(pki, emulator, host, adjust, credentials).await
}

/// The emulator for `host`, with at most `limit` logins per second, not yet dialled.
async fn emulator_for(host: &str, limit: Option<u32>) -> (TestPki, Emulator) {
    let pki = TestPki::new();
    let cluster = tokio::task::spawn_blocking(support::shared_cluster)
        .await
        .expect("shared cluster");
    let mut options = emulator_options(&pki, host, DEFAULT_REGION, cluster.port);
    options.login_rate_limit = limit;
    let emulator = Emulator::start(options).await;
    (pki, emulator)
}

/// The sidecar in front of `emulator`, which answers for `host`.
async fn sidecar_in_front(
    pki: TestPki,
    emulator: Emulator,
    host: &str,
    adjust: impl FnOnce(&mut Settings),
    credentials: Arc<CredentialCache>,
) -> Stack {
    let config = harness::config_for_host(&emulator, &pki, host);
    let with_host = |settings: &mut Settings| {
        settings.endpoints[0] = config;
        adjust(settings);
    };
    stack_behind(pki, emulator, with_host, credentials).await
}

/// The value of the metric sample `name` with `labels`, from this process's recorder.
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = rds_iam_sidecar::ops::metrics::render().unwrap_or_default();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition");
    harness::scrape::value(&scrape, name, labels).unwrap_or(0.0)
}

const LOGINS: &str = "rds_iam_sidecar_upstream_logins_total";
const BACKOFF: &str = "rds_iam_sidecar_upstream_login_backoff_seconds";

/// The test key, counting how often it is fetched; the first `throttled` requests are
/// answered as STS answers when it throttles.
#[derive(Debug, Default)]
struct CountingCredentials {
    fetches: Arc<AtomicUsize>,
    throttled: usize,
}

impl ProvideCredentials for CountingCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        if self.fetches.fetch_add(1, Ordering::SeqCst) < self.throttled {
            let error = aws_credential_types::provider::error::CredentialsError::provider_error(
                "Throttling: Rate exceeded",
            );
            return future::ProvideCredentials::ready(Err(error));
        }
        future::ProvideCredentials::ready(Ok(aws_credential_types::Credentials::new(
            TEST_AKID,
            TEST_SECRET,
            None,
            None,
            "test",
        )))
    }
}

/// [`stack_for`] with credentials that count their fetches (the first `throttled` answered
/// as throttled), and the count.
async fn stack_counting_fetches(host: &str, throttled: usize) -> (Stack, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let provider = CountingCredentials {
        fetches: fetches.clone(),
        throttled,
    };
    let credentials = Arc::new(CredentialCache::new(provider));
    (stack_for(host, None, |_| {}, credentials).await, fetches)
}

#[tokio::test]
async fn a_login_throttled_twice_waits_and_gets_its_answer_without_refetching_credentials() {
    let host = "throttled-twice.proxy-abc123.us-east-1.rds.amazonaws.com";
    let (stack, fetches) = stack_counting_fetches(host, 0).await;
    stack.emulator.throttle_next_logins(2);
    let client = try_connect(&stack, "postgres", "postgres")
        .await
        .expect("a throttled login is retried, not failed");
    let answer = first_value(&client, "select 41 + 1").await;
    assert_eq!(answer.as_deref(), Some("42"));
    assert_eq!(stack.emulator.rejected(), 2, "two throttled attempts");
    assert_eq!(stack.emulator.logins(), 1, "then one login");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "throttling is not a credentials problem: nothing refetched"
    );
    let labels = |result| [("upstream", host), ("result", result)];
    assert_eq!(metric(LOGINS, &labels("throttled")), 2.0);
    assert_eq!(metric(LOGINS, &labels("ok")), 1.0);
    assert_eq!(metric(LOGINS, &labels("auth_rejected")), 0.0);
    assert_eq!(
        metric(BACKOFF, &[("upstream", host)]),
        0.0,
        "no backoff once a login got through"
    );
}

#[tokio::test]
async fn a_login_throttled_past_the_clients_wait_gets_08004_saying_so() {
    let host = "throttled-long.proxy-abc123.us-east-1.rds.amazonaws.com";
    let wait = Duration::from_secs(3);
    let stack = stack_for(
        host,
        None,
        |settings| settings.endpoints[0].pool.timeout = wait,
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    stack.emulator.throttle_next_logins(u64::MAX);
    let started = Instant::now();
    let (code, message, hint) = try_connect(&stack, "postgres", "postgres")
        .await
        .err()
        .map(|e| db_error(&e))
        .expect("the login stays throttled");
    let took = started.elapsed();
    assert!(
        took <= wait + Duration::from_secs(2),
        "within the wait: {took:?}"
    );
    assert_eq!(code, "08004", "{message}");
    assert!(
        message.contains("throttled the login") && message.contains("too many competing requests"),
        "{message}"
    );
    let hint = hint.unwrap_or_default();
    assert!(
        hint.contains("not a credentials or permissions problem")
            && hint.contains("--warm-up-spread")
            && hint.contains("--max-connect-rate"),
        "{hint}"
    );
    assert!(
        !hint.contains("rds_iam"),
        "not the rejected-login hint: {hint}"
    );
    let throttled = metric(LOGINS, &[("upstream", host), ("result", "throttled")]);
    // Backoffs of up to 0.5, 1, 2 s ... within 3 s: a few attempts, not hundreds.
    assert!((2.0..=20.0).contains(&throttled), "{throttled} attempts");
    assert_eq!(throttled as u64, stack.emulator.rejected());
    assert!(metric(BACKOFF, &[("upstream", host)]) > 0.0);
    let rate = metric("rds_iam_sidecar_upstream_login_rate_limit", &[]);
    assert!(
        rate > 0.0 && rate < 20.0,
        "the process's login rate went down from --max-connect-rate 20: {rate}"
    );
}

#[tokio::test]
async fn a_throttled_credentials_request_is_waited_out_not_told_to_the_client() {
    let host = "sts-throttled.proxy-abc123.us-east-1.rds.amazonaws.com";
    let (stack, calls) = stack_counting_fetches(host, 1).await;
    let client = try_connect(&stack, "postgres", "postgres")
        .await
        .expect("the login waits out the throttled credentials request");
    client.simple_query("select 1").await.expect("query");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "asked again once, not hammered"
    );
    assert_eq!(
        stack.emulator.connections(),
        1,
        "nothing dialled without credentials"
    );
    let labels = |result| [("upstream", host), ("result", result)];
    assert!(metric(LOGINS, &labels("throttled")) >= 1.0);
    assert_eq!(metric(LOGINS, &labels("credentials")), 0.0);
}

#[tokio::test]
async fn a_warm_pool_opens_over_the_spread_window() {
    let host = "warm-spread.proxy-abc123.us-east-1.rds.amazonaws.com";
    let window = Duration::from_secs(2);
    let stack = stack_for(
        host,
        None,
        |settings| {
            let endpoint = &mut settings.endpoints[0];
            endpoint.pool.min_idle = 8;
            endpoint.pool.warm_up_spread = window;
            endpoint.warm_pools =
                vec![PoolKey::parse_spec("postgres@postgres", None).expect("spec")];
        },
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let deadline = Instant::now() + window + Duration::from_secs(5);
    while stack.emulator.logins() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times: Vec<Instant> = stack
        .emulator
        .accepted_logins()
        .iter()
        .map(|l| l.at)
        .collect();
    assert_eq!(times.len(), 8, "the warm pool opened");
    let (first, last) = (
        times.iter().min().copied().expect("a login"),
        times.iter().max().copied().expect("a login"),
    );
    // Eight uniform points in 2 s all within 0.5 s of each other: p < 0.001.
    assert!(
        last - first >= Duration::from_millis(500),
        "spread over the window: {:?}",
        last - first
    );
    assert!(
        last - first <= window + Duration::from_secs(1),
        "{:?}",
        last - first
    );
}

#[tokio::test]
async fn while_throttled_spare_connections_wait_and_a_clients_login_goes_first() {
    let host = "spares-wait.proxy-abc123.us-east-1.rds.amazonaws.com";
    let (pki, emulator) = emulator_for(host, None).await;
    // Every login throttled until the client's, armed before the sidecar starts (its warm-up's
    // first login may come at once): a spare that woke within one login's round trip of the
    // first, before that one's throttle lowered the rate, is throttled too, not let through.
    emulator.throttle_next_logins(u64::MAX);
    let spread = Duration::from_secs(2);
    let stack = sidecar_in_front(
        pki,
        emulator,
        host,
        |settings| {
            let endpoint = &mut settings.endpoints[0];
            endpoint.pool.min_idle = 4;
            endpoint.pool.warm_up_spread = spread;
            // Upkeep every 250 ms, so that it would start spares again within the test.
            endpoint.pool.idle_timeout = Duration::from_secs(1);
            endpoint.warm_pools =
                vec![PoolKey::parse_spec("postgres@postgres", None).expect("spec")];
        },
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    tokio::time::sleep(spread + Duration::from_millis(500)).await;
    let held_back = stack.emulator.rejected();
    assert!(
        (1..4).contains(&held_back),
        "the first spare was throttled, and the others (but any already under way) did not \
         try: {held_back} of 4 throttled"
    );
    // Four upkeeps more.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        (stack.emulator.logins(), stack.emulator.rejected()),
        (0, held_back),
        "nor did upkeep start spares again while the rate is lowered"
    );
    stack.emulator.throttle_next_logins(0);
    let client = try_connect(&stack, "postgres", "postgres")
        .await
        .expect("a client's login is not held back");
    client.simple_query("select 1").await.expect("query");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        (stack.emulator.logins(), stack.emulator.rejected()),
        (1, held_back),
        "only the client's login: the spares wait for the rate to recover"
    );
}

#[tokio::test]
async fn a_login_the_rate_cannot_start_within_the_wait_names_the_rate() {
    let host = "rate-bound.proxy-abc123.us-east-1.rds.amazonaws.com";
    let stack = stack_for(
        host,
        None,
        |settings| {
            settings.max_connect_rate = 1;
            settings.endpoints[0].pool.timeout = Duration::from_millis(300);
        },
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    // Two pools' first logins at once: one takes the burst of one, the other's slot is a
    // second away, past its client's wait.
    // Each timed on its own: the bound is on the refusal, not on the other's whole login.
    let timed = |database: &'static str| {
        let stack = &stack;
        async move {
            let started = Instant::now();
            let connected = try_connect(stack, "postgres", database).await;
            (connected, started.elapsed())
        }
    };
    let (a, b) = tokio::join!(timed("postgres"), timed("template1"));
    let (served, refused, took) = match (a, b) {
        ((Ok(client), _), (Err(e), took)) | ((Err(e), took), (Ok(client), _)) => {
            (client, db_error(&e), took)
        }
        ((a, _), (b, _)) => panic!("one login and one refusal: {:?} / {:?}", a.err(), b.err()),
    };
    let (code, message, hint) = refused;
    assert!(
        took < Duration::from_secs(1),
        "at once, not after a second: {took:?}"
    );
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("--max-connect-rate 1"), "{message}");
    assert!(hint.unwrap_or_default().contains("--max-connect-rate"));
    served
        .simple_query("select 1")
        .await
        .expect("the other client is served");
    assert_eq!(stack.emulator.logins(), 1);
}

/// The first column of the first row of `sql`'s answer.
async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let rows = client.simple_query(sql).await.ok()?;
    rows.iter().find_map(|message| match message {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

#[tokio::test]
async fn a_client_in_a_login_backoff_takes_a_connection_given_back_meanwhile() {
    let host = "backoff-freed.proxy-abc123.us-east-1.rds.amazonaws.com";
    let stack = stack_for(
        host,
        None,
        |settings| {
            let pool = &mut settings.endpoints[0].pool;
            pool.mode = rds_iam_sidecar::pool::PoolMode::Session;
            pool.size = 2;
            pool.timeout = Duration::from_secs(20);
        },
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let first = try_connect(&stack, "postgres", "postgres")
        .await
        .expect("first client");
    let first_backend = first_value(&first, "select pg_backend_pid()").await;
    assert!(first_backend.is_some());
    // From now on every login is throttled: the second client can only be served by the
    // first one's connection.
    stack.emulator.throttle_next_logins(u64::MAX);
    let second = {
        let stack_conn = harness::conn_string(&stack, "postgres", "postgres");
        tokio::spawn(async move {
            let (client, connection) =
                tokio_postgres::connect(&stack_conn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let backend = first_value(&client, "select pg_backend_pid()").await;
            Ok::<_, tokio_postgres::Error>((client, backend))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.emulator.rejected() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stack.emulator.rejected() >= 2,
        "the second client's login was throttled and is in a backoff"
    );
    let left = Instant::now();
    drop(first);
    let (_second, backend) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served within the wait, not at its end")
        .expect("task")
        .expect("the second client is served");
    let took = left.elapsed();
    assert_eq!(
        backend, first_backend,
        "the connection the first client gave back"
    );
    // Its backoff was at most 0.5, 1 or 2 s; without taking the freed connection it kept
    // trying to log in for the whole 20 s wait.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!(stack.emulator.logins(), 1, "no second login");
}

/// Many pools (a database or `application_name` per tenant) logging in at once behind a proxy
/// that admits 4 logins a second: the throttling lowers the process's login rate, and each
/// client waits for the rate to climb back as long as its wait allows, instead of being told
/// 08004 at once because its slot at the lowered rate fell after its wait (found from outside:
/// 15 of 40 clients refused within 4 s, though all fitted in 8 s).
#[tokio::test]
async fn many_pools_logging_in_together_behind_a_throttling_proxy_are_all_served() {
    const POOLS: usize = 24;
    let host = "many-pools.proxy-abc123.us-east-1.rds.amazonaws.com";
    let stack = stack_for(
        host,
        Some(4),
        |settings| settings.endpoints[0].pool.timeout = Duration::from_secs(25),
        credentials(TEST_AKID, TEST_SECRET),
    )
    .await;
    let started = Instant::now();
    let clients = (0..POOLS).map(|n| {
        let conn = format!(
            "{} application_name=tenant{n}",
            conn_string(&stack, "postgres", "postgres")
        );
        async move {
            let (client, connection) =
                tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .simple_query("select 1")
                .await
                .map(|_| started.elapsed())
        }
    });
    let results = futures_util::future::join_all(clients).await;
    let refused: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| db_error(e).1))
        .collect();
    assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
    assert!(stack.emulator.rejected() > 0, "the proxy throttled");
    assert_eq!(stack.emulator.logins(), POOLS as u64, "one login per pool");
}
