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

use crate::upstream::{Authenticator, Connector, UpstreamSettings};

use configuration::configuration;
use credentials::credentials;
use login::{login, query};
use network::{dns, tcp};
use report::Checks;
pub use report::{Check, Report, Status};
use tls::tls;

/// Runs every check for `user@database` with `config` (or the configuration error).
pub async fn run(config: Result<UpstreamSettings, String>, user: &str, database: &str) -> Report {
    let mut checks = Checks::new(config.as_ref().ok().map(|c| c.endpoint.to_string()));
    let (user, database) = (user.to_owned(), database.to_owned());
    let config = match config {
        Ok(config) => config,
        Err(error) => {
            checks.fail(
                error,
                vec!["a flag, RDS_IAM_SIDECAR_* variable or --config key has a bad value".into()],
                "fix the setting named above (rds-iam-sidecar --help lists them all)",
            );
            return checks.finish(user, database);
        }
    };
    configuration(&mut checks, &config);

    let credentials = credentials(&mut checks, &config).await;
    if checks.failed() {
        return checks.finish(user, database);
    }
    let Some(addresses) = dns(&mut checks, &config).await else {
        return checks.finish(user, database);
    };
    if !tcp(&mut checks, &config, &addresses).await {
        return checks.finish(user, database);
    }
    let authenticator = match Authenticator::new(&config.auth, credentials.clone()) {
        Ok(authenticator) => authenticator,
        Err(error) => {
            checks.fail(error, Vec::new(), "check the TLS and auth settings");
            return checks.finish(user, database);
        }
    };
    let connector = match Connector::new(
        &config,
        authenticator,
        crate::ops::metrics::for_upstream(&config.endpoint.host),
    ) {
        Ok(connector) => connector,
        Err(error) => {
            checks.fail(error, Vec::new(), "check --tls-mode and --ca-file");
            return checks.finish(user, database);
        }
    };
    if !tls(&mut checks, &config, &connector).await {
        return checks.finish(user, database);
    }
    let Some(mut server) = login(
        &mut checks,
        &config,
        &connector,
        &credentials,
        &user,
        &database,
    )
    .await
    else {
        return checks.finish(user, database);
    };
    query(&mut checks, &mut server).await;
    checks.finish(user, database)
}
