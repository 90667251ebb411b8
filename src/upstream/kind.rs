//! What sits at the endpoint: an RDS Proxy, which refuses most startup parameters, sends no
//! BackendKeyData, ignores cancels and pins a session to its database connection after SET,
//! DISCARD and the like; or a PostgreSQL (RDS, Aurora, or plain), which accepts every setting in
//! the startup packet and honours cancels. `--upstream-kind auto` tells them apart by the
//! endpoint's name.

use serde::{Deserialize, Serialize};

/// `--upstream-kind`: what the endpoint is, or `auto` to tell by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKindSetting {
    /// `rds-proxy` for `*.proxy-*.rds.amazonaws.com(.cn)` names (custom proxy endpoints
    /// included), else `postgres`.
    #[default]
    Auto,
    /// An RDS Proxy: startup parameters it refuses are applied after login, no statement of
    /// the sidecar's own may pin.
    RdsProxy,
    /// RDS, Aurora or any PostgreSQL: every startup parameter is forwarded.
    Postgres,
}

/// The kind in effect for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    RdsProxy,
    Postgres,
}

/// The startup parameters RDS Proxy accepts in the startup packet (besides user and
/// database); any other makes it refuse the connection.
pub const RDS_PROXY_STARTUP_PARAMETERS: [&str; 5] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
];

impl UpstreamKind {
    /// The kind `setting` asks for at `host`, and why (for the start-up log and `doctor`).
    pub fn resolve(setting: UpstreamKindSetting, host: &str) -> (Self, &'static str) {
        match setting {
            UpstreamKindSetting::RdsProxy => (Self::RdsProxy, "--upstream-kind rds-proxy"),
            UpstreamKindSetting::Postgres => (Self::Postgres, "--upstream-kind postgres"),
            UpstreamKindSetting::Auto if is_proxy_host(host) => (
                Self::RdsProxy,
                "the endpoint's name is an RDS Proxy endpoint",
            ),
            UpstreamKindSetting::Auto => (
                Self::Postgres,
                "the endpoint's name is not an RDS Proxy endpoint",
            ),
        }
    }

    /// The name a startup parameter goes under in the startup packet to this kind of
    /// upstream; `None` when it may not go there. RDS Proxy gets the names it documents, in
    /// their spelling: libpq sends `datestyle` and `timezone` when PGDATESTYLE or PGTZ is set,
    /// and whether RDS Proxy reads names case-insensitively, as PostgreSQL does, is not
    /// documented.
    pub fn startup_name(self, name: &str) -> Option<&str> {
        match self {
            Self::Postgres => Some(name),
            Self::RdsProxy => RDS_PROXY_STARTUP_PARAMETERS
                .iter()
                .find(|accepted| accepted.eq_ignore_ascii_case(name))
                .copied(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RdsProxy => "rds-proxy",
            Self::Postgres => "postgres",
        }
    }
}

/// `NAME.proxy-ID.REGION.rds.amazonaws.com` (or `.com.cn`), custom endpoints
/// (`NAME.endpoint.proxy-ID…`) included.
pub fn is_proxy_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    let Some(rest) = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))
    else {
        return false;
    };
    // NAME[.endpoint].proxy-ID.REGION: the label before the region.
    let mut labels = rest.rsplit('.');
    let _region = labels.next();
    labels
        .next()
        .is_some_and(|label| label.starts_with("proxy-"))
        && labels.next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_names_are_told_apart() {
        assert!(is_proxy_host(
            "mydb.proxy-abc123.us-east-1.rds.amazonaws.com"
        ));
        assert!(is_proxy_host(
            "ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com"
        ));
        assert!(is_proxy_host(
            "MyDb.Proxy-Abc.cn-north-1.rds.amazonaws.com.cn."
        ));
        assert!(!is_proxy_host("db.cluster-abc.us-east-1.rds.amazonaws.com"));
        assert!(!is_proxy_host("proxy-abc.example.com"));
        assert!(!is_proxy_host(
            "proxy-db.abc123.us-east-1.rds.amazonaws.com"
        ));
        assert!(!is_proxy_host("127.0.0.1"));
        let (kind, _) = UpstreamKind::resolve(UpstreamKindSetting::Auto, "localhost");
        assert_eq!(kind, UpstreamKind::Postgres);
        let (kind, _) = UpstreamKind::resolve(UpstreamKindSetting::RdsProxy, "localhost");
        assert_eq!(kind, UpstreamKind::RdsProxy);
    }

    #[test]
    fn rds_proxy_takes_only_its_parameters_in_the_startup_packet() {
        let proxy = UpstreamKind::RdsProxy;
        assert_eq!(
            proxy.startup_name("application_name"),
            Some("application_name")
        );
        assert_eq!(proxy.startup_name("datestyle"), Some("DateStyle"));
        assert_eq!(proxy.startup_name("timezone"), Some("TimeZone"));
        assert_eq!(proxy.startup_name("options"), None);
        assert_eq!(proxy.startup_name("search_path"), None);
        let postgres = UpstreamKind::Postgres;
        assert_eq!(postgres.startup_name("search_path"), Some("search_path"));
        assert_eq!(postgres.startup_name("timezone"), Some("timezone"));
    }
}
