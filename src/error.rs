//! Errors as the client sees them: a PostgreSQL ErrorResponse with severity, SQLSTATE, message
//! and a hint that says what to fix. Every failure the sidecar produces is turned into a
//! [`PgError`] before it reaches a client.

use std::fmt;

/// SQLSTATE codes the sidecar itself uses.
pub mod sqlstate {
    /// Cannot reach the upstream, TLS failure, no credentials.
    pub const CONNECTION_FAILURE: &str = "08001";
    /// The upstream refused to establish the connection for now (logins throttled): class 08,
    /// which drivers treat as transient (JDBC's SQLTransientConnectionException).
    pub const CONNECTION_REJECTED: &str = "08004";
    /// An established connection was lost.
    pub const CONNECTION_FAILURE_LOST: &str = "08006";
    /// The client broke the protocol.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// Login rejected.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Too many clients / pool exhausted.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A message over one of the sidecar's own limits.
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// The sidecar is shutting down.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// A query was cancelled.
    pub const QUERY_CANCELED: &str = "57014";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// A statement in a transaction that already failed.
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INTERNAL_ERROR: &str = "XX000";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// An error for the client, in PostgreSQL's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        Self {
            severity,
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// 28000 / 28P01: the server did not accept who we are.
    pub fn is_auth_failure(&self) -> bool {
        self.code.starts_with("28")
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}
