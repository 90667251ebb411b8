//! A CancelRequest from a client: find the client its key names and cancel what that client
//! runs upstream (or stop its wait for an upstream connection), by forwarding the request to
//! the server key of its upstream connection, or, where there is no key (RDS Proxy) or
//! forwarding fails or `--cancel-mode close` asks, by closing that connection (the session
//! then answers 57014). A forwarded cancel whose statement
//! has not ended after `--cancel-grace` (a hung server, a path that lost the answer) is followed
//! by the close.

use std::time::Duration;

use tracing::{Instrument, debug, info, warn};

use crate::frontend::cancel::{CancelMode, CancelTarget, Grace, Mark, ServerKey, Serving};
use crate::ops::metrics::UpstreamMetrics;

use super::Frontend;

pub(super) async fn handle_cancel(context: &Frontend, pid: i32, secret: &[u8]) {
    let Ok(secret) = <[u8; 4]>::try_from(secret) else {
        debug!("cancel request with a key the sidecar never issued; ignored");
        context.metrics.cancel_request("unknown_key");
        return;
    };
    let Some(target) = context.cancels.lookup(pid, i32::from_be_bytes(secret)) else {
        debug!("cancel request for an unknown key; ignored");
        context.metrics.cancel_request("unknown_key");
        return;
    };
    let server = match target.serving {
        Serving::Nothing => {
            debug!("cancel request for a client between transactions; nothing to cancel");
            context.metrics.cancel_request("not_running");
            return;
        }
        Serving::Waiting => {
            info!(
                "cancel request for a statement waiting for an upstream connection; it will not run"
            );
            context.metrics.cancel_request("waiting");
            target.close();
            return;
        }
        Serving::Keyless => {
            info!(
                "cancel request: the upstream connection has no server key (RDS Proxy sends none); closing it"
            );
            context.metrics.cancel_request("emulated");
            target.close();
            return;
        }
        Serving::Key(server) => server,
    };
    match context.cancel_mode {
        CancelMode::Forward => forward(context, target, server).await,
        CancelMode::Close => {
            info!("cancel request: closing the client's upstream connection (--cancel-mode close)");
            context.metrics.cancel_request("closed");
            target.close();
        }
    }
}

/// Sends the cancel to the server; a statement still running after the grace with its server
/// silent, or a cancel that could not be sent, ends with the upstream connection closed.
async fn forward(context: &Frontend, target: CancelTarget, server: ServerKey) {
    // Taken before the cancel goes: an answer after this one shows the statement ended.
    let running = target.running();
    // Claimed once the cancel's connection is open, just before it is sent: in transaction
    // mode the statement may have ended and the server connection gone to another client
    // meanwhile, whose statement this cancel must not reach; and a claimed cancel holds the
    // connection's release until the server has it (src/frontend/cancel.rs).
    let claim = || running.and_then(|mark| target.claim(server, mark));
    match context
        .connector()
        .cancel(server.pid, server.secret, claim)
        .await
    {
        Ok(None) => {
            debug!("cancel request not sent: the statement ended before it could be");
            context.metrics.cancel_request("not_running");
        }
        Ok(Some(in_flight)) => {
            in_flight.delivered();
            info!("cancel request forwarded upstream");
            context.metrics.cancel_request("forwarded");
            if let Some(mark) = running {
                tokio::spawn(
                    close_after_grace(target, mark, context.cancel_grace, context.metrics)
                        .instrument(tracing::Span::current()),
                );
            }
        }
        Err(error) => {
            // Unless the statement ended meanwhile: the next one is not the cancel's.
            if let Some(mark) = running {
                warn!(%error, "forwarding a cancel request failed; closing the client's upstream connection instead");
                context.metrics.cancel_request("emulated");
                target.close_unless_answered(mark);
            } else {
                debug!(%error, "forwarding a cancel request failed; nothing was running");
                context.metrics.cancel_request("not_running");
            }
        }
    }
}

/// Closes the client's upstream connection if the statement a forwarded cancel was for has not
/// ended and its server has sent nothing for a whole `grace`. Its own task: the cancel's
/// connection is closed at once (libpq waits for that close).
async fn close_after_grace(
    target: CancelTarget,
    mut mark: Mark,
    grace: Duration,
    metrics: &'static UpstreamMetrics,
) {
    loop {
        tokio::time::sleep(grace).await;
        match target.after_grace(mark) {
            Grace::Ended => return,
            Grace::Progress(now) => mark = now,
            Grace::Closed => {
                warn!(
                    grace = %humantime::format_duration(grace),
                    "the statement a forwarded cancel was for still runs and its server has sent nothing for --cancel-grace; closing its upstream connection"
                );
                metrics.cancel_request("unanswered");
                return;
            }
        }
    }
}
