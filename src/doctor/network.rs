//! Checks 3 and 4: the dialled name resolves (to which addresses, private or public), and a
//! TCP connection to one of them opens within the timeout.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::report::Checks;
use crate::upstream::UpstreamSettings;

/// 3. The dialled name resolves, to which addresses.
pub(super) async fn dns(checks: &mut Checks, config: &UpstreamSettings) -> Option<Vec<SocketAddr>> {
    let target = config.dial_endpoint().dial_target();
    let lookup = tokio::time::timeout(config.connect_timeout, tokio::net::lookup_host(&target));
    match lookup.await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() {
                checks.fail(
                    format!("{target} resolves to no address"),
                    vec!["the DNS record is empty".to_owned()],
                    "check --upstream / --upstream-addr",
                );
                return None;
            }
            let list = addresses
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let check = checks.ok(format!("{target} resolves to {list}"));
            if addresses
                .iter()
                .all(|a| is_private(a.ip()) && !a.ip().is_loopback())
            {
                check.warnings.push(
                    "private addresses only: reachable from inside the VPC (or through a tunnel \
                     with --upstream-addr)"
                        .to_owned(),
                );
            }
            Some(addresses)
        }
        Ok(Err(error)) => {
            checks.fail(
                format!("{target} does not resolve: {error}"),
                vec![
                    "a typo in the endpoint name".to_owned(),
                    "the VPC has DNS resolution / DNS hostnames turned off".to_owned(),
                    "this machine is outside the VPC and its DNS cannot see the name".to_owned(),
                ],
                "check --upstream; from outside the VPC use a tunnel and --upstream-addr",
            );
            None
        }
        Err(_) => {
            checks.fail(
                format!(
                    "resolving {target} took longer than {:?}",
                    config.connect_timeout
                ),
                vec!["the DNS server does not answer".to_owned()],
                "check this machine's DNS settings",
            );
            None
        }
    }
}

fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// 4. A TCP connection to one of the addresses within the timeout.
pub(super) async fn tcp(
    checks: &mut Checks,
    config: &UpstreamSettings,
    addresses: &[SocketAddr],
) -> bool {
    let mut failures = Vec::new();
    let mut timed_out = false;
    for address in addresses {
        let started = std::time::Instant::now();
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(_)) => {
                checks.ok(format!(
                    "connected to {address} in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                ));
                return true;
            }
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => {
                timed_out = true;
                failures.push(format!(
                    "{address}: no answer within {:?}",
                    config.connect_timeout
                ));
            }
        }
    }
    let (causes, fix) = if timed_out {
        (
            vec![
            "a security group does not let this machine in: the endpoint's security group needs \
             an inbound rule for the port from this task's security group"
                .to_owned(),
            "no route: subnets, route tables or network ACLs; RDS Proxy is reachable only from \
             inside its VPC"
                .to_owned(),
        ],
            "allow the port in the endpoint's security group from this task, or use a tunnel and \
         --upstream-addr from outside the VPC",
        )
    } else {
        (
            vec![
                "nothing listens on that port: a wrong port in --upstream / --upstream-addr \
                 (RDS Proxy: 5432), the endpoint is stopped or being replaced, or a tunnel is \
                 not running"
                    .to_owned(),
                "(a timeout instead would point at a security group)".to_owned(),
            ],
            "check the port and that the endpoint (or the tunnel) is up",
        )
    };
    checks.fail(failures.join("; "), causes, fix);
    false
}
