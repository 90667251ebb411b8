//! The sidecar as a Lambda extension, against a local Extensions API: it listens before it
//! registers, serves the function between events, drains and exits 0 on SHUTDOWN within the
//! deadline, and reports a configuration error through `init/error`.

mod harness;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use harness::binary::{KillOnDrop, free_port, sidecar_command};
use support::{DEFAULT_ENDPOINT_HOST, TEST_AKID, TEST_SECRET, TestPki};
use tokio::sync::Notify;

/// INVOKE events handed out before the SHUTDOWN.
const INVOKES: u32 = 3;

/// What the fake Extensions API saw, and the SHUTDOWN it hands out when told.
#[derive(Default)]
struct Api {
    /// (extension name, whether the sidecar's port was open when it registered, the body)
    registered: Mutex<Option<(String, bool, String)>>,
    events_served: Mutex<u32>,
    init_error: Mutex<Option<String>>,
    shut_down: Notify,
    sidecar_port: u16,
}

async fn register(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let name = headers
        .get("Lambda-Extension-Name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let listening = tokio::net::TcpStream::connect(("127.0.0.1", api.sidecar_port))
        .await
        .is_ok();
    *api.registered.lock().expect("lock") = Some((name, listening, body));
    ([("Lambda-Extension-Identifier", "test-extension-id")], "{}")
}

async fn next_event(State(api): State<Arc<Api>>, headers: HeaderMap) -> impl IntoResponse {
    if headers.get("Lambda-Extension-Identifier").is_none() {
        return (StatusCode::FORBIDDEN, String::new());
    }
    let served = {
        let mut served = api.events_served.lock().expect("lock");
        *served += 1;
        *served
    };
    if served <= INVOKES {
        return (StatusCode::OK, r#"{"eventType":"INVOKE"}"#.to_owned());
    }
    api.shut_down.notified().await;
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        + 2000;
    (
        StatusCode::OK,
        format!(r#"{{"eventType":"SHUTDOWN","deadlineMs":{deadline}}}"#),
    )
}

async fn init_error(State(api): State<Arc<Api>>, body: String) -> impl IntoResponse {
    *api.init_error.lock().expect("lock") = Some(body);
    "{}"
}

async fn fake_api(sidecar_port: u16) -> (Arc<Api>, String) {
    let api = Arc::new(Api {
        sidecar_port,
        ..Api::default()
    });
    let app = Router::new()
        .route("/2020-01-01/extension/register", post(register))
        .route("/2020-01-01/extension/event/next", get(next_event))
        .route("/2020-01-01/extension/init/error", post(init_error))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the API");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (api, address)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn it_listens_before_registering_serves_and_drains_on_shutdown() {
    let pki = TestPki::new();
    let emulator = support::emulator_for_cluster(&pki).await;
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (api, address) = fake_api(port).await;
    let child = sidecar_command(home.path())
        .arg("lambda-extension")
        .env("AWS_LAMBDA_RUNTIME_API", &address)
        .env(
            "RDS_IAM_SIDECAR_UPSTREAM",
            format!("{DEFAULT_ENDPOINT_HOST}:5432"),
        )
        .env("RDS_IAM_SIDECAR_UPSTREAM_ADDR", emulator.addr.to_string())
        .env("RDS_IAM_SIDECAR_CA_FILE", pki.ca_file())
        .env("RDS_IAM_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("RDS_IAM_SIDECAR_ADMIN_LISTEN", "off")
        // One connection: an invocation that comes before the last one's connection is back
        // in the pool waits for it rather than logging in again.
        .env("RDS_IAM_SIDECAR_POOL_SIZE", "1")
        .env("AWS_ACCESS_KEY_ID", TEST_AKID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut child = KillOnDrop(child);
    wait_for("it registers", || {
        api.registered.lock().expect("lock").is_some()
    })
    .await;
    let (name, listening, body) = api
        .registered
        .lock()
        .expect("lock")
        .clone()
        .expect("registered");
    assert_eq!(name, "rds-iam-sidecar");
    assert!(
        listening,
        "the listener was open before the extension registered"
    );
    let events: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(events["events"], serde_json::json!(["INVOKE", "SHUTDOWN"]));
    // The function's code: a connection per invocation, as Lambda handlers often make.
    wait_for("the INVOKE events are handed out", || {
        *api.events_served.lock().expect("lock") > INVOKES
    })
    .await;
    for _ in 0..INVOKES {
        let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("the function connects");
        let connection = tokio::spawn(connection);
        let row = client
            .query_one("select 'from lambda'", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, &str>(0), "from lambda");
        // The invocation ends: its connection is closed before the next one comes.
        drop(client);
        let _ = connection.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        emulator.logins(),
        1,
        "one IAM login: the pool is kept across invocations"
    );
    api.shut_down.notify_one();
    let status = child.exit_within(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "exits 0 within SHUTDOWN's deadline");
}

#[tokio::test]
async fn a_configuration_error_is_reported_through_init_error() {
    let home = tempfile::tempdir().expect("tempdir");
    let (api, address) = fake_api(free_port()).await;
    let output = tokio::task::spawn_blocking(move || {
        sidecar_command(home.path())
            .arg("lambda-extension")
            .env("AWS_LAMBDA_RUNTIME_API", &address)
            .env("RDS_IAM_SIDECAR_UPSTREAM", "not-a-host-and-port")
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(2));
    let reported = api
        .init_error
        .lock()
        .expect("lock")
        .clone()
        .unwrap_or_default();
    assert!(
        reported.contains("RDS_IAM_SIDECAR_REGION"),
        "init/error names the setting: {reported}"
    );
    assert!(reported.contains("Extension.ConfigError"), "{reported}");
}
