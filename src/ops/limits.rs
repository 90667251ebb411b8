//! The process's open-file limit. Every client holds a socket and, while it has one, an
//! upstream connection; a soft limit left at a shell's 1,024 would let a burst of clients take
//! every descriptor, so new clients would time out instead of getting 53300 and the admin
//! endpoint would stop answering. At start the soft limit is raised to the hard limit, and a
//! warning says when even that leaves too little room for `--max-client-connections`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

/// Descriptors kept for listeners, the admin endpoint, logs and credential requests.
const RESERVE: u64 = 64;

/// Raises the soft open-file limit to the hard limit, and warns when the result cannot hold
/// `clients` clients with an upstream connection each.
pub fn raise_open_files(clients: u64) {
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return; // unlimited
    };
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
    let needed = clients.saturating_mul(2).saturating_add(RESERVE);
    if now < needed {
        warn!(
            open_files = now,
            needed,
            "the open-file limit is below two per client (--max-client-connections) plus a reserve: under a burst new clients may wait instead of getting 53300; raise the hard limit (ulimit -n, the container's nofile ulimit)"
        );
    }
}
