//! Log output: text for humans or one JSON object per line, filtered by `--log-level`. The AWS
//! SDK's own chatty targets are capped at `warn` (their debug output is not ours to promise
//! clean). Secrets are kept out of logs by type: see [`crate::secret`].

use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
