//! A CancelRequest from a client: find the client its key names and cancel what that client
//! runs upstream, by forwarding the request to the server key of its upstream connection, or,
//! where there is no key (RDS Proxy) or forwarding fails or `--cancel-mode close` asks, by
//! closing that connection (the session then answers 57014).

use tracing::{debug, info, warn};

use crate::frontend::cancel::{CancelMode, Serving};

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
        CancelMode::Forward => match context.connector().cancel(server.pid, server.secret).await {
            Ok(()) => {
                info!("cancel request forwarded upstream");
                context.metrics.cancel_request("forwarded");
            }
            Err(error) => {
                warn!(%error, "forwarding a cancel request failed; closing the client's upstream connection instead");
                context.metrics.cancel_request("emulated");
                target.close();
            }
        },
        CancelMode::Close => {
            info!("cancel request: closing the client's upstream connection (--cancel-mode close)");
            context.metrics.cancel_request("closed");
            target.close();
        }
    }
}
