//! `rds-iam-sidecar doctor`: walks the chain a login goes through (configuration, AWS
//! credentials, DNS, TCP, TLS, IAM login, a query), one check at a time, and says which step
//! failed, what it saw and how to fix it. The checks stop at the first failure; later ones are
//! reported as skipped.

mod causes;
mod configuration;
mod credentials;
mod login;
mod network;
mod report;
mod tls;

use std::sync::Arc;

use crate::iam::credentials::CredentialCache;
use crate::upstream::{Authenticator, Connector, UpstreamSettings};

use configuration::configuration;
use credentials::credentials;
use login::{login, query};
use network::{dns, tcp};
use report::Checks;
pub use report::{Check, Report, Status};
use tls::tls;

use crate::settings::EndpointSettings;
use configuration::listener;

/// Runs every check for `user@database` with `config` (or the configuration error).
pub async fn run(config: Result<EndpointSettings, String>, user: &str, database: &str) -> Report {
    let mut checks = Checks::new(
        config
            .as_ref()
            .ok()
            .map(|c| c.upstream.endpoint.to_string()),
    );
    match config {
        Ok(config) => {
            configuration(&mut checks, &config.upstream);
            listener(&mut checks, &config);
            walk(&mut checks, &config.upstream, user, database).await
        }
        Err(error) => {
            checks.fail(
                error,
                vec!["a flag, RDS_IAM_SIDECAR_* variable or --config key has a bad value".into()],
                "fix the setting named above (rds-iam-sidecar --help lists them all)",
            );
        }
    }
    checks.finish(user.to_owned(), database.to_owned())
}

/// The checks in order, up to the first that fails.
async fn walk(checks: &mut Checks, config: &UpstreamSettings, user: &str, database: &str) {
    let credentials = credentials(checks, config).await;
    if checks.failed() {
        return;
    }
    let Some(addresses) = dns(checks, config).await else {
        return;
    };
    if !tcp(checks, config, &addresses).await {
        return;
    }
    let Some(connector) = connector(checks, config, &credentials) else {
        return;
    };
    if !tls(checks, config, &connector).await {
        return;
    }
    let login = login(checks, config, &connector, &credentials, user, database);
    if let Some(mut server) = login.await {
        query(checks, &mut server).await;
    }
}

/// The connector the sidecar itself would use, or a failed check saying why there is none.
fn connector(
    checks: &mut Checks,
    config: &UpstreamSettings,
    credentials: &Option<Arc<CredentialCache>>,
) -> Option<Connector> {
    let authenticator = match Authenticator::new(&config.auth, credentials.clone()) {
        Ok(authenticator) => authenticator,
        Err(error) => {
            checks.fail(error, Vec::new(), "check the TLS and auth settings");
            return None;
        }
    };
    let metrics = crate::ops::metrics::for_upstream(&config.endpoint.host);
    match Connector::new(config, authenticator, metrics) {
        Ok(connector) => Some(connector),
        Err(error) => {
            checks.fail(error, Vec::new(), "check --tls-mode and --ca-file");
            None
        }
    }
}
