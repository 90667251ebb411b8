//! What a pool takes: its mode, size, waits and lifetimes (one endpoint's pools share them).

use std::time::Duration;

/// How upstream connections are shared.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// A client holds one upstream connection for its whole life (default).
    Session,
    /// A client holds an upstream connection for one transaction at a time.
    Transaction,
}

/// The default of `--warm-up-spread`: at the default `--max-connect-rate` (20/s), the 100
/// logins of a fleet of 25 tasks with `--min-idle 4`.
pub const DEFAULT_WARM_UP_SPREAD: Duration = Duration::from_secs(5);

/// Pool limits and lifetimes.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    /// Most upstream connections per pool.
    pub size: usize,
    /// Idle connections kept open per pool once it exists.
    pub min_idle: usize,
    /// How long a client waits for a free connection.
    pub timeout: Duration,
    /// Idle connections older than this (idle) are closed.
    pub idle_timeout: Duration,
    /// Connections are closed after about this long (±10 %).
    pub max_lifetime: Duration,
    /// Run on a session-mode connection its client left with session state, before another
    /// client gets it; None to close such connections instead. Clean ones need nothing.
    pub reset_query: Option<String>,
    /// A connection idle longer than this is proven alive with an empty query before a client
    /// gets it (a hung proxy still accepts bytes and answers TCP keepalives).
    pub probe_after: Duration,
    /// `--min-idle` connections (at start, and after the upstream dropped them) are opened at
    /// random moments over this window, so that a fleet does not log in all at once.
    pub warm_up_spread: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            mode: PoolMode::Session,
            size: 20,
            min_idle: 0,
            timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            reset_query: Some("DISCARD ALL".to_owned()),
            probe_after: Duration::from_secs(5),
            warm_up_spread: DEFAULT_WARM_UP_SPREAD,
        }
    }
}
