//! An endpoint's listener side, validated: what it does with clients (`--db-user`, cancels,
//! the client limit and login timeout) and its TLS (`--client-tls` and the files or names it
//! needs, each combination that cannot work refused with the flag named).

use super::ConfigError;
use super::args::EndpointArgs;
use super::blame::Blame;
use crate::frontend::FrontendSettings;
use crate::frontend::client_tls::{ClientTlsMode, ClientTlsSettings};

pub(super) fn frontend_settings(
    args: &EndpointArgs,
    blame: &Blame<'_>,
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
