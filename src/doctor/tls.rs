//! Check 5: TLS to the endpoint under the configured roots, and the certificate it presents
//! (names and issuer), read over a second handshake that checks nothing when the first fails.

use std::fmt::Write as _;

use tokio::net::TcpStream;

use super::report::Checks;
use crate::upstream::error::{ConnectError, TlsFailure};
use crate::upstream::tls::TlsMode;
use crate::upstream::{Connector, UpstreamSettings};

/// 5. SSLRequest answered 'S', the handshake, the certificate under the configured roots.
pub(super) async fn tls(
    checks: &mut Checks,
    config: &UpstreamSettings,
    connector: &Connector,
) -> bool {
    if config.tls_mode == TlsMode::Disable {
        checks.skip("--tls-mode disable");
        return true;
    }
    let seen = peek_certificate(config).await;
    match connector.probe().await {
        Ok(()) => {
            passed(checks, config.tls_mode, seen.ok());
            true
        }
        Err(ConnectError::TlsRefused { target }) => {
            checks.fail(
                format!("{target} answered the SSLRequest with 'N': it does not offer TLS"),
                vec![
                    "--upstream is not an RDS endpoint (RDS and RDS Proxy always offer TLS)"
                        .to_owned(),
                    "a plain PostgreSQL or a TCP forwarder that strips TLS is in the way"
                        .to_owned(),
                ],
                "point --upstream (or --upstream-addr) at the RDS endpoint; a local PostgreSQL \
                 without TLS needs --auth password --tls-mode disable",
            );
            false
        }
        Err(ConnectError::Tls { kind, reason, .. }) => {
            let cert = seen.unwrap_or_else(|_| "certificate not readable".to_owned());
            let (causes, fix) = handshake_causes(kind, &reason, &cert, &config.endpoint.host);
            checks.fail(format!("the handshake failed: {reason}"), causes, fix);
            false
        }
        Err(error) => {
            checks.fail(
                error.to_string(),
                vec!["the endpoint stopped answering during the handshake".to_owned()],
                "retry; check the endpoint's health",
            );
            false
        }
    }
}

/// The handshake succeeded: say how far the certificate was checked.
fn passed(checks: &mut Checks, mode: TlsMode, cert: Option<String>) {
    let detail = match cert {
        Some(cert) if mode == TlsMode::Require => {
            format!("TLS, certificate not checked (--tls-mode require): {cert}")
        }
        Some(cert) => format!("TLS with the certificate checked ({mode:?}): {cert}"),
        None => format!("TLS ({mode:?})"),
    };
    let check = checks.ok(detail);
    if mode == TlsMode::Require {
        check.warnings.push(
            "--tls-mode require does not check the certificate: prefer verify-full".to_owned(),
        );
    }
}

/// Why a handshake failed, from the kind of failure and the certificate seen (`cert`).
fn handshake_causes(
    kind: TlsFailure,
    reason: &str,
    cert: &str,
    host: &str,
) -> (Vec<String>, &'static str) {
    match kind {
        TlsFailure::UnknownIssuer => (
            vec![format!(
                "the certificate's issuer is not trusted here ({cert}): direct RDS instance and \
                 cluster endpoints use the RDS CA, which is not among the default roots"
            )],
            "download https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem and \
             pass --ca-file global-bundle.pem",
        ),
        TlsFailure::NameMismatch => (
            vec![format!(
                "the certificate does not name {host} ({cert}): --upstream is a CNAME, an IP \
                 address or a tunnel address"
            )],
            "put the real RDS endpoint name in --upstream and the address to dial in \
             --upstream-addr",
        ),
        TlsFailure::Expired => (
            vec![format!(
                "the certificate is outside its validity period ({cert}), or this machine's \
                 clock is wrong"
            )],
            "check the clock (timedatectl) and the endpoint's certificate",
        ),
        TlsFailure::Cut => (
            vec![format!("{reason} ({cert})")],
            crate::upstream::error::CUT_HINT,
        ),
        TlsFailure::Other => (
            vec![format!("{reason} ({cert})")],
            "check --tls-mode and --ca-file",
        ),
    }
}

/// The server certificate's names and issuer, read over a handshake that checks nothing (no
/// token or password is ever sent over it).
async fn peek_certificate(config: &UpstreamSettings) -> Result<String, String> {
    let tls = crate::upstream::tls::client_config(TlsMode::Require, None)?
        .ok_or_else(|| "no TLS configuration".to_owned())?;
    let target = config.dial_endpoint().dial_target();
    let handshake = async {
        let tcp = TcpStream::connect(&target)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(config.endpoint.host.clone())
            .map_err(|e| e.to_string())?;
        let stream = crate::upstream::tls::start_tls(tcp, tls, name)
            .await
            .map_err(|e| match e {
                crate::upstream::tls::StartTlsError::Refused => "no TLS".to_owned(),
                crate::upstream::tls::StartTlsError::Io(e)
                | crate::upstream::tls::StartTlsError::Handshake(e) => e.to_string(),
            })?;
        let (_, connection) = stream.get_ref();
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| "no certificate".to_owned())?;
        describe_certificate(leaf.as_ref())
    };
    tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// "certificate for a, b; issued by X".
fn describe_certificate(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => Some(format!("{ip:?}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
    }
    let issuer = cert
        .issuer()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| cert.issuer().to_string());
    let mut out = String::new();
    let _ = write!(
        out,
        "certificate for {}; issued by {issuer}",
        names.join(", ")
    );
    Ok(out)
}
