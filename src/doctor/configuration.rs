//! Check 1: what the configuration says about the endpoint: its kind (proxy, cluster,
//! instance, an IP or another name), where it is dialled, the signing region, and warnings for
//! settings that will fail at RDS.

use super::report::Checks;
use clap::ValueEnum;

use crate::frontend::client_auth::ClientAuthMode;
use crate::iam::region::RegionSource;
use crate::settings::EndpointSettings;
use crate::upstream::tls::TlsMode;
use crate::upstream::{UpstreamAuth, UpstreamSettings};

/// 1. The endpoint name and the region.
pub(super) fn configuration(checks: &mut Checks, config: &UpstreamSettings) {
    let kind = endpoint_kind(&config.endpoint.host);
    let dial = config
        .upstream_addr
        .as_ref()
        .map(|addr| format!(", dialled at {}", addr.dial_target()))
        .unwrap_or_default();
    let check = checks.ok(format!(
        "{} is {}{dial}{}; treated as {} ({})",
        config.endpoint.dial_target(),
        kind.describe(),
        signing(&config.auth),
        config.kind.name(),
        config.kind_reason
    ));
    check.warnings.extend(warnings(config, kind));
}

/// Adds the listener's side to check 1: where clients connect, its TLS and authentication, and
/// a warning for a listener beyond loopback that lets anyone in.
pub(super) fn listener(checks: &mut Checks, endpoint: &EndpointSettings) {
    let Some(check) = checks.last_mut() else {
        return;
    };
    let addresses: Vec<String> = endpoint.listen.iter().map(ToString::to_string).collect();
    let name = |value: Option<clap::builder::PossibleValue>| {
        value.map_or_else(String::new, |v| v.get_name().to_owned())
    };
    let tls = name(endpoint.frontend.tls.mode.to_possible_value());
    let auth = name(endpoint.frontend.auth.mode.to_possible_value());
    check.detail.push_str(&format!(
        "; clients connect to {} (client TLS {tls}, client auth {auth})",
        addresses.join(", ")
    ));
    let beyond_loopback = endpoint
        .listen
        .iter()
        .any(|a| !a.ip().to_canonical().is_loopback());
    if beyond_loopback && endpoint.frontend.auth.mode == ClientAuthMode::Trust {
        check.warnings.push(
            "the listener is beyond loopback without client authentication \
             (--allow-unauthenticated-clients): anyone who reaches it logs in as the IAM \
             role's database users; set --client-auth scram-sha-256"
                .to_owned(),
        );
    }
}

/// How logins are signed: the region and where it came from, or no IAM.
fn signing(auth: &UpstreamAuth) -> String {
    match auth {
        UpstreamAuth::Iam {
            region,
            region_source,
        } => format!(
            "; region {region} ({})",
            match region_source {
                RegionSource::Flag => "from --region",
                RegionSource::EndpointName => "from the endpoint name",
                RegionSource::Environment => "from AWS_REGION / AWS_DEFAULT_REGION",
            }
        ),
        UpstreamAuth::Password(_) => "; --auth password (no IAM)".to_owned(),
    }
}

/// Settings that will fail at RDS: a name that is not the endpoint's own, a region that is not
/// the endpoint's, a direct endpoint without the RDS CA.
fn warnings(config: &UpstreamSettings, kind: EndpointKind) -> Vec<String> {
    let mut warnings = Vec::new();
    match kind {
        EndpointKind::Ip => warnings.push(
            "tokens are signed for the host name in --upstream, and RDS checks them against its \
             own endpoint name: put the RDS endpoint name in --upstream and this address in \
             --upstream-addr"
                .to_owned(),
        ),
        EndpointKind::Other => warnings.push(
            "not an RDS host name: if it is a CNAME or alias, tokens signed for it are rejected \
             and the certificate will not match; put the real RDS endpoint name in --upstream and \
             this name in --upstream-addr"
                .to_owned(),
        ),
        _ => {}
    }
    if let UpstreamAuth::Iam { region, .. } = &config.auth
        && let Some(named) = crate::iam::region::region_from_host(&config.endpoint.host)
        && named != *region
    {
        warnings.push(format!(
            "the endpoint is in {named} but tokens are signed for {region}: RDS rejects them; \
             drop --region / AWS_REGION or set it to {named}"
        ));
    }
    if matches!(kind, EndpointKind::Instance | EndpointKind::Cluster)
        && config.ca_file.is_none()
        && config.tls_mode != TlsMode::Disable
    {
        warnings.push(
            "direct instance and cluster endpoints present certificates of the RDS CA, which is \
             not among the default roots: pass --ca-file global-bundle.pem (RDS Proxy needs none)"
                .to_owned(),
        );
    }
    warnings
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndpointKind {
    Proxy,
    Cluster,
    Instance,
    Ip,
    Other,
}

impl EndpointKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Proxy => "an RDS Proxy endpoint",
            Self::Cluster => "an Aurora cluster endpoint",
            Self::Instance => "an RDS instance endpoint",
            Self::Ip => "an IP address",
            Self::Other => "not an RDS endpoint name",
        }
    }
}

pub(super) fn endpoint_kind(host: &str) -> EndpointKind {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return EndpointKind::Ip;
    }
    if crate::iam::region::region_from_host(&host).is_none() {
        return EndpointKind::Other;
    }
    // name.proxy-xyz.REGION..., custom proxy endpoints name.endpoint.proxy-xyz.REGION...,
    // name.cluster-[ro-|custom-]xyz.REGION...
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().skip(1).any(|l| l.starts_with("proxy-")) {
        EndpointKind::Proxy
    } else if labels.iter().skip(1).any(|l| l.starts_with("cluster-")) {
        EndpointKind::Cluster
    } else {
        EndpointKind::Instance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_kinds() {
        assert_eq!(
            endpoint_kind("app.proxy-abc123.us-east-1.rds.amazonaws.com"),
            EndpointKind::Proxy
        );
        assert_eq!(
            endpoint_kind("app.cluster-ro-abc123.eu-west-1.rds.amazonaws.com"),
            EndpointKind::Cluster
        );
        assert_eq!(
            endpoint_kind("app.abc123.eu-west-1.rds.amazonaws.com"),
            EndpointKind::Instance
        );
        assert_eq!(
            endpoint_kind("reader.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com"),
            EndpointKind::Proxy
        );
        assert_eq!(endpoint_kind("10.0.0.5"), EndpointKind::Ip);
        assert_eq!(endpoint_kind("db.example.com"), EndpointKind::Other);
    }
}
