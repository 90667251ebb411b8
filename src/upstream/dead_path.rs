//! A dead path to the upstream ends within `--upstream-dead-after`: a failover, a NAT that
//! forgot the flow or a dropped route leaves a connection that neither errors nor answers, and
//! the kernel's defaults would keep it for minutes (keepalive after 2 h, retransmissions for
//! about 15 min). Two kernel timers bound it on every upstream socket:
//!
//! - keepalive probes while the connection is idle (half the bound before the first probe,
//!   then four probes an eighth of the bound apart), so a pooled connection whose path died
//!   is noticed before a client gets it;
//! - `TCP_USER_TIMEOUT` (Linux): bytes sent and not acknowledged for the whole bound end the
//!   connection, so a query sent into a dead path fails within the bound instead of after the
//!   retransmission schedule.
//!
//! Neither fires while the server is alive and merely slow: a long query on a healthy path
//! acknowledges every byte and answers every probe. The one exception is a server that stops
//! reading while the sidecar still sends (a `COPY FROM` blocked on a lock): its zero receive
//! window counts against `TCP_USER_TIMEOUT` since Linux 5.11, so such a statement ends after
//! the bound too (documented with the flag). A hung server behind a live TCP stack (a stopped
//! proxy process) is the idle-connection probe's and the cancel grace's business.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Keepalive probes sent before the connection is given up.
const PROBES: u32 = 4;

/// Applies the bound to an upstream socket; failures are logged (the connection still works,
/// only a dead path would be noticed later).
pub fn bound_dead_path(stream: &TcpStream, dead_after: Duration) {
    let socket = SockRef::from(stream);
    if let Err(error) = socket.set_tcp_keepalive(&keepalive_for(dead_after)) {
        tracing::debug!(%error, "could not enable TCP keepalive upstream");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket.set_tcp_user_timeout(Some(dead_after)) {
        tracing::debug!(%error, "could not set TCP_USER_TIMEOUT upstream");
    }
}

/// Idle for half the bound, then [`PROBES`] probes an eighth of it apart: silence for the
/// whole bound ends the connection.
fn keepalive_for(dead_after: Duration) -> TcpKeepalive {
    let keepalive = TcpKeepalive::new().with_time(whole_seconds(dead_after / 2));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
    let keepalive = keepalive
        .with_interval(whole_seconds(dead_after / (2 * PROBES)))
        .with_retries(PROBES);
    keepalive
}

/// The kernel counts keepalive timers in whole seconds, at least one.
fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_kernel_holds_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        bound_dead_path(&stream, Duration::from_secs(60));
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(30)
        );
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
                Duration::from_secs(7)
            );
            assert_eq!(socket.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 4);
            assert_eq!(
                socket.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
                Some(Duration::from_secs(60))
            );
        }
    }

    #[test]
    fn short_bounds_keep_whole_seconds() {
        assert_eq!(
            whole_seconds(Duration::from_millis(2500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(300)),
            Duration::from_secs(1)
        );
    }
}
