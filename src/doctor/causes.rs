//! Why an IAM login fails, in the order of likelihood, and what to do: the text behind check 6.

use std::time::SystemTime;

use super::configuration::{EndpointKind, endpoint_kind};
use crate::upstream::error::{ConnectError, says_throttled};
use crate::upstream::{UpstreamAuth, UpstreamSettings};

/// The likely causes, most likely first, and what to do about them.
type Causes = (Vec<String>, String);

/// What the cause texts name: the endpoint, its region and kind, the user.
struct Target<'a> {
    host: &'a str,
    region: &'a str,
    kind: EndpointKind,
    user: &'a str,
}

impl<'a> Target<'a> {
    fn of(config: &'a UpstreamSettings, user: &'a str) -> Self {
        let region = match &config.auth {
            UpstreamAuth::Iam { region, .. } => region.as_str(),
            UpstreamAuth::Password(_) => "REGION",
        };
        let host = config.endpoint.host.as_str();
        Target {
            host,
            region,
            kind: endpoint_kind(host),
            user,
        }
    }

    /// The resource part of the rds-db:connect ARN this kind of endpoint needs.
    fn resource(&self) -> &'static str {
        match self.kind {
            EndpointKind::Proxy => "prx-RESOURCEID",
            EndpointKind::Cluster => "cluster-RESOURCEID",
            _ => "db-RESOURCEID / cluster-RESOURCEID / prx-RESOURCEID",
        }
    }

    fn partition(&self) -> &'static str {
        if self.host.ends_with(".cn") {
            "aws-cn"
        } else {
            "aws"
        }
    }
}

/// The likely causes of a failed login, most likely first.
pub(super) fn login_causes(error: &ConnectError, config: &UpstreamSettings, user: &str) -> Causes {
    let target = Target::of(config, user);
    match error {
        ConnectError::AuthRejected(server) => {
            rejected_causes(&server.message.to_ascii_lowercase(), &config.auth, &target)
        }
        ConnectError::Throttled { message, .. } => {
            rejected_causes(&message.to_ascii_lowercase(), &config.auth, &target)
        }
        ConnectError::IamNotEnabled { .. } if target.kind == EndpointKind::Proxy => (
            vec![
                "the proxy does not require IAM authentication, so it asked for the user's \
                 password"
                    .to_owned(),
            ],
            "set the proxy's authentication to IAMAuth REQUIRED (for this user's secret)"
                .to_owned(),
        ),
        ConnectError::IamNotEnabled { .. } => (
            vec![
                format!("the database user lacks the rds_iam role: GRANT rds_iam TO \"{user}\""),
                "IAM database authentication is not enabled on the instance / cluster".to_owned(),
            ],
            "grant rds_iam and enable IAM database authentication; a plain PostgreSQL needs \
             --auth password"
                .to_owned(),
        ),
        ConnectError::Timeout { .. } => timeout_causes(),
        ConnectError::Server(server) if server.code == "3D000" => (
            vec![format!("the database does not exist: {}", server.message)],
            "pass the right --database (clients choose theirs with dbname)".to_owned(),
        ),
        other => (
            vec![other.to_string()],
            "see the message above; `rds-iam-sidecar run --log-level debug` shows each step"
                .to_owned(),
        ),
    }
}

/// The server refused the login (`message` in lower case).
fn rejected_causes(message: &str, auth: &UpstreamAuth, target: &Target) -> Causes {
    if says_throttled(message) {
        return (
            vec![
                "IAM authentication is being throttled (too many new connections per second \
                 for this account and region)"
                    .to_owned(),
            ],
            "lower --max-connect-rate, keep connections pooled (--min-idle, longer \
             --idle-timeout), or request a quota increase"
                .to_owned(),
        );
    }
    if matches!(auth, UpstreamAuth::Password(_)) {
        return (
            vec!["the password is wrong".to_owned()],
            "check --password-file / RDS_IAM_SIDECAR_PASSWORD".to_owned(),
        );
    }
    if message.contains("no credentials for the role") {
        return (
            vec![format!(
                "the proxy has no Secrets Manager secret for the user {} (and end-to-end IAM is \
                 not enabled for it)",
                target.user
            )],
            "add the user's secret to the proxy's authentication settings, or enable \
             end-to-end IAM authentication on the proxy"
                .to_owned(),
        );
    }
    token_causes(target, message.contains("pam"))
}

/// The token itself was refused. A PAM failure comes from a database whose user has rds_iam
/// (otherwise it asks for a password), so `pam` rules that cause out.
fn token_causes(target: &Target, pam: bool) -> Causes {
    let Target {
        host, region, user, ..
    } = target;
    let (partition, resource) = (target.partition(), target.resource());
    let now = humantime_utc(SystemTime::now());
    let mut causes = vec![
        format!(
            "the IAM policy of these credentials lacks rds-db:connect on \
             arn:{partition}:rds-db:{region}:ACCOUNT:dbuser:{resource}/{user} (the resource id, \
             not the name)"
        ),
        format!(
            "the token was signed for {host}, but the server expected another host name: \
             --upstream must be the endpoint's own name (not a CNAME, IP or tunnel address; use \
             --upstream-addr for those)"
        ),
        format!(
            "the database user lacks the rds_iam role: GRANT rds_iam TO \"{user}\" (direct \
             endpoints, and proxies with end-to-end IAM)"
        ),
        "IAM authentication is not enabled on the cluster / proxy (RDS Proxy: IAMAuth \
         REQUIRED), or the proxy has no Secrets Manager secret for this user"
            .to_owned(),
        format!(
            "this machine's clock is off (tokens are checked against AWS time; now here: {now})"
        ),
        "the access key was deactivated or the secret key is wrong".to_owned(),
    ];
    if pam {
        causes.remove(2);
    }
    if matches!(target.kind, EndpointKind::Ip | EndpointKind::Other) {
        // check 1 already warned: a name that is not the endpoint's own.
        causes.swap(0, 1);
    }
    (
        causes,
        "fix the first cause that applies; `aws rds generate-db-auth-token` with the same \
         credentials plus psql shows whether the problem is the sidecar or the grant"
            .to_owned(),
    )
}

/// The proxy accepted the connection and did not finish the login in time.
fn timeout_causes() -> Causes {
    (
        vec![
            "the proxy accepted the connection but could not reach its database in time: the \
             database's security group must admit the proxy, and its targets must be healthy \
             (aws rds describe-db-proxy-targets)"
                .to_owned(),
            "the proxy waits for a free database connection: MaxConnectionsPercent reached, or \
             ConnectionBorrowTimeout"
                .to_owned(),
            "the database is at max_connections or starting up".to_owned(),
        ],
        "check the proxy's target health; raise --connect-timeout if logins are just slow"
            .to_owned(),
    )
}

/// A UTC time as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic Gregorian).
fn humantime_utc(at: SystemTime) -> String {
    // humantime formats 1970..=9999 only; a clock outside that is what this text reports.
    let in_range = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|since| since.as_secs() < 253_402_300_800);
    if !in_range {
        return "an impossible time (check this machine's clock)".to_owned();
    }
    // "2026-11-23T01:44:05Z" as "2026-11-23 01:44:05 UTC".
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    format!(
        "{} UTC",
        rfc3339.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn utc_times() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_398_245);
        assert_eq!(humantime_utc(at), "2026-11-23 01:44:05 UTC");
        assert_eq!(
            humantime_utc(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert!(humantime_utc(before_1970).contains("clock"));
    }
}
