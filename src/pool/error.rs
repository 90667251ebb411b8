//! Why a client got no upstream connection, and how that is told to it: the pool stayed busy
//! (53300), the login rate could not start a login within the client's wait (08004 while
//! logins are throttled, else 53300), or the login itself failed ([`ConnectError`]'s own
//! ErrorResponse and hint).

use std::time::Duration;

use crate::error::{PgError, sqlstate};
use crate::upstream::error::{ConnectError, HintContext, ThrottledBy, throttled_hint};

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(
        "no upstream connection of pool {pool} became free within {waited:?} (--pool-size {size} \
         reached)"
    )]
    Timeout {
        pool: String,
        waited: Duration,
        size: usize,
    },
    /// The next login the rate allows would start after the client's wait ends.
    #[error(
        "no upstream login for pool {pool} could start within the client's wait: new logins are \
         paced at {rate:.1}/s ({})",
        if *reduced { format!("--max-connect-rate {max}, lowered while the upstream throttles logins") }
        else { format!("--max-connect-rate {max}") }
    )]
    LoginRate {
        pool: String,
        rate: f64,
        max: f64,
        reduced: bool,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl CheckoutError {
    /// The login was throttled, or could not start because throttling lowered the rate.
    pub fn is_throttled(&self) -> bool {
        match self {
            Self::LoginRate { reduced, .. } => *reduced,
            Self::Connect(error) => error.throttled_by().is_some(),
            Self::Timeout { .. } => false,
        }
    }

    /// The ErrorResponse a client gets for this failure.
    pub fn to_pg_error(&self, ctx: &HintContext<'_>) -> PgError {
        let message = format!("rds-iam-sidecar: {self}");
        match self {
            Self::Timeout { .. } => PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, message)
                .with_hint(
                    "raise --pool-size or --pool-timeout, or make clients hold connections for less time",
                ),
            Self::LoginRate { reduced: true, .. } => {
                PgError::fatal(sqlstate::CONNECTION_REJECTED, message)
                    .with_hint(throttled_hint(ThrottledBy::Upstream))
            }
            Self::LoginRate { .. } => PgError::fatal(sqlstate::TOO_MANY_CONNECTIONS, message)
                .with_hint(
                    "raise --max-connect-rate or --pool-timeout, or keep more connections pooled (--min-idle)",
                ),
            Self::Connect(error) => error.to_pg_error(ctx),
        }
    }
}
