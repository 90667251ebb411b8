//! The sidecar as an AWS Lambda external extension: started by Lambda from `/opt/extensions/`
//! (or as `rds-iam-sidecar lambda-extension`), configured by the function's `RDS_IAM_SIDECAR_*`
//! variables and credentialed by its role. It binds its listener *before* it registers with the
//! Extensions API (Lambda may start the runtime once every extension has registered, and the
//! function's init code connects at once), then waits for events: INVOKE changes nothing (the
//! pool lives across invocations; a connection that died while the environment was frozen is
//! caught by the idle probe before a client gets it), SHUTDOWN drains within the deadline Lambda
//! gives and ends the process with 0. A sidecar that cannot start is reported through
//! `init/error`, so the function's init fails with the reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ops::admin_client::exchange;
use crate::ops::logging;
use crate::settings::{RunArgs, Settings};

/// The Extensions API version path.
const API: &str = "/2020-01-01/extension";
/// Left of SHUTDOWN's deadline for the process to exit after the drain.
const EXIT_MARGIN: Duration = Duration::from_millis(200);

/// Whether this process was started by Lambda as an external extension.
pub fn started_as_extension(program: &str, runtime_api: Option<&str>) -> bool {
    runtime_api.is_some() && program.starts_with("/opt/extensions/")
}

/// A registered extension: the API's address and the identifier it gave.
pub struct Extension {
    api: String,
    id: String,
}

/// What the next event asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Invoke,
    /// Shut down within this long.
    Shutdown(Duration),
}

impl Extension {
    /// Registers `name` for INVOKE and SHUTDOWN with the Extensions API at `api` (host:port).
    pub async fn register(api: &str, name: &str) -> Result<Self, String> {
        let body = r#"{"events":["INVOKE","SHUTDOWN"]}"#;
        let headers = [("Lambda-Extension-Name", name)];
        let answer = call(api, "POST", &format!("{API}/register"), &headers, body).await?;
        if answer.status != 200 {
            return Err(format!("register: HTTP {}: {}", answer.status, answer.body));
        }
        let id = answer
            .id
            .ok_or("register: no Lambda-Extension-Identifier in the answer")?;
        Ok(Self {
            api: api.to_owned(),
            id,
        })
    }

    /// Waits for the next event (Lambda freezes the environment in between).
    pub async fn next_event(&self) -> Result<Event, String> {
        let headers = [("Lambda-Extension-Identifier", self.id.as_str())];
        let answer = call(&self.api, "GET", &format!("{API}/event/next"), &headers, "").await?;
        if answer.status != 200 {
            return Err(format!(
                "event/next: HTTP {}: {}",
                answer.status, answer.body
            ));
        }
        parse_event(&answer.body)
    }

    /// Reports why the extension could not start; Lambda fails the function's init with it.
    pub async fn init_error(&self, message: &str) {
        let body = serde_json::json!({
            "errorMessage": message,
            "errorType": "Extension.ConfigError",
        })
        .to_string();
        let headers = [
            ("Lambda-Extension-Identifier", self.id.as_str()),
            (
                "Lambda-Extension-Function-Error-Type",
                "Extension.ConfigError",
            ),
        ];
        if let Err(error) = call(
            &self.api,
            "POST",
            &format!("{API}/init/error"),
            &headers,
            &body,
        )
        .await
        {
            tracing::warn!(%error, "could not report the init error to Lambda");
        }
    }
}

/// `lambda-extension`: listen first, then register (or register to report why the sidecar
/// could not start); serve events until SHUTDOWN. The exit code, or why nothing ran.
pub async fn run(args: RunArgs) -> Result<u8, String> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "lambda-extension: AWS_LAMBDA_RUNTIME_API is not set (not in Lambda?)")?;
    let name = std::env::args()
        .next()
        .and_then(|p| p.rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "rds-iam-sidecar".to_owned());
    let started = match Settings::from_args(args, &|name| std::env::var(name).ok()) {
        Ok(mut config) => {
            logging::init(config.log_format, &config.log_level);
            crate::ops::limits::fit_open_files(&mut config);
            let grace = config.lifecycle.shutdown_grace;
            crate::start(config, None)
                .await
                .map(|sidecar| (sidecar, grace))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let extension = Extension::register(&api, &name)
        .await
        .map_err(|e| format!("lambda-extension: {e}"))?;
    match started {
        Ok((sidecar, grace)) => Ok(serve(sidecar, &extension, grace).await),
        Err(reason) => {
            extension.init_error(&reason).await;
            Err(reason)
        }
    }
}

/// Registers, then serves events until SHUTDOWN; `sidecar` is already listening. Returns the
/// exit code: 0 after SHUTDOWN's drain, 1 when the API failed.
pub async fn serve(
    sidecar: crate::RunningSidecar,
    extension: &Extension,
    shutdown_grace: Duration,
) -> u8 {
    loop {
        match extension.next_event().await {
            Ok(Event::Invoke) => {}
            Ok(Event::Shutdown(left)) => {
                tracing::info!(
                    left_ms = left.as_millis() as u64,
                    "Lambda SHUTDOWN: draining"
                );
                sidecar.shutdown().request();
                let left_behind = sidecar.drain(left.min(shutdown_grace)).await;
                return if left_behind == 0 { 0 } else { 1 };
            }
            Err(error) => {
                tracing::error!(%error, "the Lambda Extensions API failed");
                let _ = sidecar
                    .drain(shutdown_grace.min(Duration::from_secs(1)))
                    .await;
                return 1;
            }
        }
    }
}

/// An event's JSON: `eventType`, and for SHUTDOWN `deadlineMs` (milliseconds since the epoch).
fn parse_event(body: &str) -> Result<Event, String> {
    let event: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("event/next: not JSON: {e}"))?;
    match event["eventType"].as_str() {
        Some("INVOKE") => Ok(Event::Invoke),
        Some("SHUTDOWN") => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let deadline = event["deadlineMs"].as_u64().unwrap_or(now);
            let left = Duration::from_millis(deadline.saturating_sub(now));
            Ok(Event::Shutdown(left.saturating_sub(EXIT_MARGIN)))
        }
        other => Err(format!("event/next: unknown event type {other:?}")),
    }
}

/// An answer: status, the extension identifier header if any, the body.
struct Answer {
    status: u16,
    id: Option<String>,
    body: String,
}

/// One request to the Extensions API (plain HTTP on the sandbox's loopback).
async fn call(
    api: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let what = "the Lambda Extensions API";
    let (response, headers) = exchange(what, api, method, path, headers, body).await?;
    let id = headers
        .get("Lambda-Extension-Identifier")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Answer {
        status: response.status,
        id,
        body: response.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_shutdown_leaves_a_margin() {
        assert_eq!(parse_event(r#"{"eventType":"INVOKE"}"#), Ok(Event::Invoke));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Ok(Event::Shutdown(left)) = parse_event(&format!(
            r#"{{"eventType":"SHUTDOWN","deadlineMs":{}}}"#,
            now + 2000
        )) else {
            panic!("a shutdown");
        };
        assert!(left <= Duration::from_millis(1800) && left >= Duration::from_millis(1500));
        assert!(parse_event("{}").is_err());
    }

    #[test]
    fn lambda_starts_extensions_from_opt_extensions() {
        assert!(started_as_extension(
            "/opt/extensions/rds-iam-sidecar",
            Some("127.0.0.1:9001")
        ));
        assert!(!started_as_extension(
            "/usr/bin/rds-iam-sidecar",
            Some("127.0.0.1:9001")
        ));
        assert!(!started_as_extension(
            "/opt/extensions/rds-iam-sidecar",
            None
        ));
    }
}
