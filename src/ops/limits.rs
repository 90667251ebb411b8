//! The process's open-file limit. Every client holds a socket and, while it has one, an
//! upstream connection; a soft limit left at a shell's 1,024 would let a burst of clients take
//! every descriptor, so new clients would time out instead of getting 53300 and the admin
//! endpoint would stop answering. At start the soft limit is raised to the hard limit; when even
//! that cannot hold two descriptors per allowed client plus a reserve, the client limits are
//! lowered to fit (with a warning), so that at the limit a new client still gets 53300 at once
//! and the admin endpoint still answers: the reserve is never taken by clients.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

/// Descriptors kept for listeners, the admin endpoint, logs and credential requests.
const RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard limit; returns the limit now in force (`None`:
/// unlimited).
pub fn raise_open_files() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    let target = limit.maximum.unwrap_or(current.max(1 << 20));
    let now = if target > current {
        let raised = Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                info!(from = current, to = target, "raised the open-file limit");
                target
            }
            Err(error) => {
                warn!(%error, limit = current, "could not raise the open-file limit");
                current
            }
        }
    } else {
        current
    };
    Some(now)
}

/// Raises the open-file limit and fits every endpoint's client limit to it.
pub fn fit_open_files(config: &mut crate::settings::Settings) {
    let open_files = raise_open_files();
    let mut client_limits: Vec<usize> = config
        .endpoints
        .iter()
        .map(|e| e.frontend.max_client_connections)
        .collect();
    fit_client_limits(open_files, &mut client_limits);
    for (endpoint, limit) in config.endpoints.iter_mut().zip(client_limits) {
        endpoint.frontend.max_client_connections = limit;
    }
}

/// Lowers the endpoints' client limits (`--max-client-connections`, in `limits`) in proportion
/// when together they need more than `open_files` allows: two descriptors per client (its
/// socket and an upstream connection) plus [`RESERVE`]. Warns when it lowers them.
pub fn fit_client_limits(open_files: Option<u64>, limits: &mut [usize]) {
    let Some(open_files) = open_files else {
        return;
    };
    let budget = usize::try_from(open_files.saturating_sub(RESERVE) / 2).unwrap_or(usize::MAX);
    let wanted: usize = limits.iter().sum();
    if wanted <= budget {
        return;
    }
    for limit in limits.iter_mut() {
        // At least one client per endpoint, whatever the budget.
        *limit = (*limit as u128 * budget as u128 / wanted as u128).max(1) as usize;
    }
    warn!(
        open_files,
        wanted,
        allowed = limits.iter().sum::<usize>(),
        "the open-file limit cannot hold two descriptors per client (--max-client-connections) plus a reserve: client limits lowered to fit, so that clients past them get 53300 at once; raise the hard limit (ulimit -n, the container's nofile ulimit) to allow more"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_limits_fit_the_descriptors() {
        let mut limits = [1000, 500];
        fit_client_limits(Some(1024), &mut limits);
        assert_eq!(limits, [320, 160], "(1024 - 64) / 2 = 480 shared 2:1");
        let mut limits = [100];
        fit_client_limits(Some(1024), &mut limits);
        assert_eq!(limits, [100], "room enough: unchanged");
        fit_client_limits(None, &mut limits);
        assert_eq!(limits, [100], "unlimited: unchanged");
        let mut limits = [10, 10];
        fit_client_limits(Some(10), &mut limits);
        assert_eq!(limits, [1, 1], "never below one");
    }
}
