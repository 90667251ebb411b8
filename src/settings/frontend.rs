//! An endpoint's listener side, validated: what it does with clients (`--db-user`, cancels,
//! the client limit and login timeout) and its TLS (`--client-tls` and the files or names it
//! needs, each combination that cannot work refused with the flag named).

use std::net::SocketAddr;

use super::args::EndpointArgs;
use super::blame::Blame;
use super::{ConfigError, EnvLookup};
use crate::frontend::FrontendSettings;
use crate::frontend::client_auth::{ClientAuthMode, ClientAuthSettings};
use crate::frontend::client_tls::{ClientTlsMode, ClientTlsSettings};
use crate::secret::Secret;

pub(super) fn frontend_settings(
    args: &EndpointArgs,
    blame: &Blame<'_>,
    listen: &[SocketAddr],
    env: EnvLookup<'_>,
) -> Result<FrontendSettings, ConfigError> {
    let defaults = FrontendSettings::default();
    if args.db_user.as_deref().is_some_and(str::is_empty) {
        return Err(blame.error("--db-user", "must not be empty"));
    }
    let max_client_connections = args
        .max_client_connections
        .unwrap_or(defaults.max_client_connections);
    if max_client_connections == 0 {
        return Err(blame.error("--max-client-connections", "must be at least 1"));
    }
    Ok(FrontendSettings {
        db_user: args.db_user.clone(),
        cancel_mode: args.cancel_mode.unwrap_or(defaults.cancel_mode),
        cancel_grace: blame.positive_duration(
            "--cancel-grace",
            args.cancel_grace.as_deref(),
            defaults.cancel_grace,
        )?,
        max_client_connections,
        tls: client_tls_settings(args, blame)?,
        auth: client_auth_settings(args, blame, listen, env)?,
        login_timeout: blame.positive_duration(
            "--client-login-timeout",
            args.client_login_timeout.as_deref(),
            defaults.login_timeout,
        )?,
    })
}

fn client_tls_settings(
    args: &EndpointArgs,
    blame: &Blame<'_>,
) -> Result<ClientTlsSettings, ConfigError> {
    let mode = args.client_tls.unwrap_or_default();
    let files = args.client_tls_cert.is_some() || args.client_tls_key.is_some();
    if mode == ClientTlsMode::Files
        && !(args.client_tls_cert.is_some() && args.client_tls_key.is_some())
    {
        return Err(blame.error(
            "--client-tls",
            "'files' needs --client-tls-cert and --client-tls-key",
        ));
    }
    if files && mode != ClientTlsMode::Files {
        return Err(blame.error("--client-tls-cert", "is only read with --client-tls files"));
    }
    if args.client_tls_cert_out.is_some() && mode != ClientTlsMode::SelfSigned {
        return Err(blame.error(
            "--client-tls-cert-out",
            "writes the certificate --client-tls self-signed makes; set that too",
        ));
    }
    Ok(ClientTlsSettings {
        mode,
        names: args.client_tls_names.clone(),
        cert_out: args.client_tls_cert_out.clone(),
        cert_file: args.client_tls_cert.clone(),
        key_file: args.client_tls_key.clone(),
    })
}

/// The variable holding one client password for every user.
pub const CLIENT_PASSWORD_ENV: &str = "RDS_IAM_SIDECAR_CLIENT_PASSWORD";

/// `--client-auth` and what it needs; a listener beyond loopback with `trust` is refused unless
/// `--allow-unauthenticated-clients` says so.
fn client_auth_settings(
    args: &EndpointArgs,
    blame: &Blame<'_>,
    listen: &[SocketAddr],
    env: EnvLookup<'_>,
) -> Result<ClientAuthSettings, ConfigError> {
    let mode = args.client_auth.unwrap_or_default();
    let password = env(CLIENT_PASSWORD_ENV)
        .filter(|p| !p.is_empty())
        .map(Secret::new);
    if mode == ClientAuthMode::ScramSha256 && args.client_auth_file.is_none() && password.is_none()
    {
        return Err(blame.error(
            "--client-auth",
            format!("scram-sha-256 needs --client-auth-file or the {CLIENT_PASSWORD_ENV} variable"),
        ));
    }
    if mode == ClientAuthMode::Trust && args.client_auth_file.is_some() {
        return Err(blame.error(
            "--client-auth-file",
            "is only read with --client-auth scram-sha-256; set that too",
        ));
    }
    let beyond_loopback: Vec<String> = listen
        .iter()
        .filter(|a| !a.ip().to_canonical().is_loopback())
        .map(ToString::to_string)
        .collect();
    if mode == ClientAuthMode::Trust
        && !beyond_loopback.is_empty()
        && !args.allow_unauthenticated_clients.unwrap_or(false)
    {
        return Err(blame.error(
            "--client-auth",
            format!(
                "--listen {} accepts clients from other hosts, and with --client-auth trust \
                 anyone who reaches it logs in as the IAM role's database users: set \
                 --client-auth scram-sha-256, or --allow-unauthenticated-clients if the network \
                 is private to the app",
                beyond_loopback.join(",")
            ),
        ));
    }
    Ok(ClientAuthSettings {
        mode,
        file: args.client_auth_file.clone(),
        password: (mode == ClientAuthMode::ScramSha256)
            .then_some(password)
            .flatten(),
    })
}
