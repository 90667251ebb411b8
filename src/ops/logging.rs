//! Log output: text for humans or one JSON object per line, filtered by `--log-level`. The AWS
//! SDK's and the HTTP stack's own targets stay at `warn` unless the filter names them, and never
//! go below `info` whatever it names: at debug and trace they log what the sidecar must never
//! show (aws-sigv4 its canonical request with the session token and the access key id; the
//! HTTP client the credential endpoints' answers). Secrets of our own are kept out of logs by
//! type: see [`crate::secret`].

use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Targets that stay at `warn` whatever the level, unless the filter names them.
const QUIET_TARGETS: &str = "aws_config=warn,aws_runtime=warn,aws_credential_types=warn,aws_smithy_runtime=warn,aws_smithy_http_client=warn,aws_sigv4=warn,hyper=warn,hyper_util=warn,rustls=warn";

/// Targets that never log below `info`, whatever the filter says: their debug and trace
/// output can hold credentials.
const CAPPED_TARGETS: [&str; 9] = [
    "aws_config",
    "aws_runtime",
    "aws_credential_types",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sigv4",
    "hyper",
    "hyper_util",
];

/// The hard cap: everything else passes to the `--log-level` filter.
fn cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED_TARGETS.map(|target| (target, LevelFilter::INFO)))
}

fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(format!("{QUIET_TARGETS},{level}"))
        .map_err(|e| format!("'{level}' is not a log level or filter: {e}"))
}

/// Checks a `--log-level` value.
pub fn validate_filter(level: &str) -> Result<(), String> {
    filter(level).map(|_| ())
}

/// Installs the global subscriber (stderr). Later calls are ignored.
pub fn init(format: LogFormat, level: &str) {
    let Ok(filter) = filter(level) else { return };
    use std::io::IsTerminal;
    let filter = filter.and(cap());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
        LogFormat::Text => registry.with(layer.with_filter(filter)).try_init(),
    };
}
