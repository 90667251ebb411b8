//! Session pooling: a client keeps one upstream connection for its life; between round trips
//! it holds no forwarding buffers. When it leaves, a connection it left clean goes back to the
//! pool as it is; one with session state is reset (`--reset-query`) or closed where a reset
//! would pin it (RDS Proxy). A cancel that closed the connection, or the server closing it while
//! the client was idle (`session_idle.rs`), leaves a client whose session can be built again
//! connected: it goes on with another upstream connection.

use std::time::Instant;

use bytes::BytesMut;
use tracing::{debug, info, warn};

use crate::forward::buffers::Buffer;
use crate::forward::replay::SessionReplay;
use crate::forward::session_state::SessionChange;
use crate::forward::{ClientSide, Detach, Outcome, Period, Pump, Traffic, forward_attached};
use crate::ops::allocator::CacheAligned;
use crate::ops::metrics::ClientState;
use crate::ops::shutdown::Woken;
use crate::pool::reset::{close_statements, replay, reset};
use crate::pool::{Lease, Parameters};
use crate::protocol::messages;

use super::cancel::Serving;
use super::login::checkout_error_to_pg;
use super::session::{Held, Session, closer};
use super::session_idle::Spoken;
use super::waiting::Waited;
use super::{send_error, send_shutdown_error};

/// What a client's session kept to build again on another connection, and what closed the
/// one it had: a cancel, or the server while the client was idle.
type Kept<'a> = Option<(&'a SessionReplay, Outcome)>;

impl Session {
    /// Session mode from what the login left: a connection, or a greeting from the pool's
    /// known parameters (the connection then comes at the client's first message).
    pub(super) async fn run_held(&mut self, held: Box<Held>) -> Outcome {
        match *held {
            Held::Connection(lease) => self.run_session_mode(lease, None).await,
            Held::Greeted(parameters) => match self.attach_at_next_bytes(&parameters, None).await {
                Ok((lease, first)) => self.run_session_mode(lease, Some(first)).await,
                Err(outcome) => outcome,
            },
        }
    }

    /// The first bytes of a client that has no connection yet (holding nothing while it
    /// waits); a client that leaves or terminates first never takes a connection.
    async fn first_message(&mut self) -> Result<(Buffer, usize), Outcome> {
        loop {
            let stream = &mut self.stream;
            let woken = self
                .context
                .shutdown
                .idle_wait(true, self.cancel_key.closer(), |cx| {
                    stream.poll_read_ready(cx)
                })
                .await;
            match woken {
                Woken::Ready(Ok(())) => {}
                Woken::Ready(Err(_)) => return Err(Outcome::ClientError),
                Woken::Draining => {
                    Box::pin(send_shutdown_error(&mut self.stream)).await;
                    return Err(Outcome::Shutdown);
                }
            }
            let mut buffer = Buffer::take();
            match self.stream.try_read(&mut buffer) {
                Ok(0) => return Err(Outcome::ClientClosed),
                Ok(n) if buffer[..n] == [b'X', 0, 0, 0, 4] => {
                    return Err(Outcome::ClientTerminated);
                }
                Ok(n) => return Ok((buffer, n)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Outcome::ClientError),
            }
        }
    }

    /// The client's next bytes for an upstream connection, once it has ended a transaction
    /// that a cancel failed (answered locally until then).
    async fn next_bytes(&mut self) -> Result<(Buffer, usize), Outcome> {
        loop {
            let (buffer, n) = self.first_message().await?;
            if !self.cancel_key.state().only_sidecar_answers() {
                return Ok((buffer, n));
            }
            let rest = Box::pin(self.serve_aborted(&buffer[..n])).await?;
            if rest.is_empty() {
                continue;
            }
            if rest[..] == [b'X', 0, 0, 0, 4] {
                return Err(Outcome::ClientTerminated);
            }
            let mut buffer = buffer;
            let Some(slot) = buffer.get_mut(..rest.len()) else {
                return Err(Outcome::ClientError);
            };
            slot.copy_from_slice(&rest);
            return Ok((buffer, rest.len()));
        }
    }

    /// The client's next bytes and a connection for them (greeted without one, or its own was
    /// closed); a statement cancelled while it waits is answered 57014, and the next waits.
    async fn attach_at_next_bytes(
        &mut self,
        greeted: &[(String, String)],
        kept: Kept<'_>,
    ) -> Result<(Lease, (Buffer, usize)), Outcome> {
        loop {
            let (buffer, n) = self.next_bytes().await?;
            if let Some(lease) = self.attach(greeted, kept, &buffer[..n]).await? {
                return Ok((lease, (buffer, n)));
            }
        }
    }

    /// A connection for the client's bytes `first` (`--pool-timeout`, then 53300 naming the
    /// pool; `None` when a cancel for them came first and the client goes on). What `kept`
    /// holds of the client's session is built again on it first; ParameterStatus for every
    /// value that differs from what the client last saw (`greeted`) goes to the client.
    async fn attach(
        &mut self,
        greeted: &[(String, String)],
        kept: Kept<'_>,
        first: &[u8],
    ) -> Result<Option<Lease>, Outcome> {
        let Some(mut lease) = self.checkout_for_first_message(first).await? else {
            return Ok(None);
        };
        self.cancel_key
            .set_serving(Serving::connection(lease.backend_key()));
        match kept.filter(|(kept, _)| !kept.is_empty()) {
            Some((kept, closed_by)) => {
                let rebuilt = Box::pin(replay(
                    lease.server(),
                    kept.settings(),
                    kept.parse_messages(),
                ))
                .await;
                if let Err(error) = rebuilt {
                    warn!(conn = self.conn, %error, ?closed_by, "the session could not be built again on another upstream connection");
                    self.not_rebuilt_fatal(closed_by).await;
                    return Err(closed_by);
                }
            }
            None => self.cancel_key.state().forget_session_changes(),
        }
        let mut changed = BytesMut::new();
        for (name, value) in lease.parameters() {
            if !greeted.iter().any(|(n, v)| n == name && v == value) {
                messages::parameter_status(&mut changed, name, value);
            }
        }
        if !changed.is_empty() && self.stream.write_flushed(&changed).await.is_err() {
            return Err(Outcome::ClientError);
        }
        Ok(Some(lease))
    }

    /// A connection of the client's pool for its bytes `first`, waited for without holding
    /// up a drain; `None` when a cancel for them came first and was answered.
    async fn checkout_for_first_message(&mut self, first: &[u8]) -> Result<Option<Lease>, Outcome> {
        let started = Instant::now();
        let checkout = match Box::pin(self.checkout_unless_cancelled(first)).await {
            Waited::Checkout(checkout) => checkout,
            Waited::Stopped(None) => return Ok(None),
            Waited::Stopped(Some(ending)) => return Err(ending),
        };
        match checkout {
            Ok(lease) => {
                self.context.metrics.pool_wait(started.elapsed());
                Ok(Some(lease))
            }
            Err(error) => {
                let pg = checkout_error_to_pg(&error, &self.context, &self.pool.key.user);
                warn!(conn = self.conn, %error, sqlstate = %pg.code, pool = %self.pool.key, "no upstream connection for a client's first message");
                self.context.metrics.auth_failure(&pg.code);
                send_error(&mut self.stream, &pg).await;
                Err(Outcome::ServerError)
            }
        }
    }

    /// The client keeps `lease` until it leaves (or a cancel closes it: then, if the client's
    /// session held no state the sidecar cannot build again, it goes on with another
    /// connection on which its settings and named statements are set up again).
    pub(super) async fn run_session_mode(
        &mut self,
        mut lease: Lease,
        mut first: Option<(Buffer, usize)>,
    ) -> Outcome {
        // The client's stream as it passes through (in this boxed future, not the Session:
        // transaction mode keeps its own framing in the rewriter).
        let mut client_side = ClientSide::default();
        loop {
            let (outcome, last) = self
                .serve_connection(&mut lease, &mut client_side, first.take())
                .await;
            let goes_on = matches!(outcome, Outcome::Cancelled | Outcome::ServerClosedIdle);
            if !goes_on || !self.cancel_key.state().session_is_replayable() {
                self.leave(lease, outcome, &client_side.replay).await;
                self.tell_ending(outcome, &last).await;
                return outcome;
            }
            // The client goes on: at its next message, with another connection.
            let greeted: Parameters = lease.shared_parameters();
            drop(lease);
            if outcome == Outcome::ServerClosedIdle {
                info!(
                    conn = self.conn,
                    "the upstream connection closed while its client was idle; the client goes on with another"
                );
                self.context.metrics.upstream_lost("idle");
            } else if let Some(ending) = self.answer_cancelled().await {
                return ending;
            }
            let bytes;
            (lease, bytes) = match self
                .attach_at_next_bytes(&greeted, Some((&client_side.replay, outcome)))
                .await
            {
                Ok(attached) => attached,
                Err(ending) => return ending,
            };
            first = Some(bytes);
        }
    }

    /// Forwards between the client and `lease`'s connection until either leaves it, starting
    /// with the client's bytes `first` when it already sent some.
    async fn serve_connection(
        &mut self,
        lease: &mut Lease,
        client_side: &mut ClientSide,
        mut first: Option<(Buffer, usize)>,
    ) -> (Outcome, Traffic) {
        let mut pending = std::mem::take(&mut lease.server().pending);
        loop {
            let server = lease.server();
            if pending.is_empty() && first.is_none() {
                match self.idle_until_spoken(server).await {
                    Ok(Spoken::Client(buffer, n)) => first = Some((buffer, n)),
                    Ok(Spoken::Server(said)) => pending = said,
                    Ok(Spoken::ServerClosed) => {
                        let idle = Traffic {
                            client_at_boundary: true,
                            ..Traffic::default()
                        };
                        return (Outcome::ServerClosedIdle, idle);
                    }
                    Ok(Spoken::Stale) => continue,
                    // The client is idle: at a message boundary, where an error can be sent.
                    Err(outcome) => {
                        let idle = Traffic {
                            client_at_boundary: true,
                            ..Traffic::default()
                        };
                        return (outcome, idle);
                    }
                }
            }
            let first_bytes = first.as_ref().map_or(&[][..], |(buffer, n)| &buffer[..*n]);
            self.gauge.set(ClientState::Active);
            let period = Period {
                state: self.cancel_key.state(),
                parameters: &mut server.parameters,
                first: first_bytes,
                pending: &pending,
                detach: Detach::WhenQuiet,
                cancel: closer(&self.cancel_key),
                pump: Pump::PassThrough(client_side),
            };
            // Boxed: the attached period's state lives on the heap only while it runs.
            let (outcome, traffic) = Box::pin(CacheAligned::new(forward_attached(
                &mut self.stream,
                &mut server.stream,
                period,
            )))
            .await;
            self.gauge.set(ClientState::Idle);
            pending = BytesMut::new();
            first = None;
            self.add(traffic);
            if outcome != Outcome::Released {
                return (outcome, traffic);
            }
        }
    }

    /// The session ended with `outcome`: pool the connection if it can serve another client,
    /// and tell the client what it is owed.
    async fn leave(&mut self, lease: Lease, outcome: Outcome, kept: &SessionReplay) {
        match outcome {
            Outcome::ClientTerminated | Outcome::ClientClosed
                if self.cancel_key.state().is_idle() =>
            {
                self.give_back(lease, kept).await;
            }
            Outcome::Cancelled => {
                drop(lease);
                self.cancelled_fatal().await;
            }
            Outcome::Shutdown => {
                drop(lease);
                Box::pin(send_shutdown_error(&mut self.stream)).await;
            }
            _ => {
                debug!(?outcome, status = ?self.cancel_key.state().status(), "upstream connection not reusable; closing it")
            }
        }
    }

    /// Pools a connection its client left idle: as it is when the client left no session
    /// state, with its named statements closed when that is all it left, after the reset query
    /// for other state, or not at all when a reset would pin it or undo settings applied after
    /// login.
    async fn give_back(&mut self, mut lease: Lease, kept: &SessionReplay) {
        // A cancel claimed from here on finds nothing to reach; one claimed before holds the
        // release until it settled (src/frontend/cancel.rs).
        self.cancel_key.set_serving(Serving::Nothing);
        // Kept SETs are session state too (the replay holds them, not the change bits).
        let change = match self.cancel_key.state().session_change() {
            Some(SessionChange::NamedStatement) | None if kept.has_settings() => {
                Some(SessionChange::Setting)
            }
            change => change,
        };
        let Some(change) = change else {
            self.cancel_key.release(lease);
            return;
        };
        let metrics = self.context.metrics;
        if change == SessionChange::NamedStatement {
            match Box::pin(close_statements(lease.server(), kept.statement_names())).await {
                Ok(()) => {
                    metrics.session_state("reset", change.label());
                    self.cancel_key.release(lease);
                }
                Err(error) => {
                    debug!(%error, "closing named statements failed; closing the connection");
                    metrics.session_state("closed", change.label());
                }
            }
            return;
        }
        let reset_query = self.context.pools.settings.reset_query.clone();
        let query = match reset_query {
            Some(query) if !lease.server().settings_after_login => query,
            _ => {
                debug!(
                    state = change.label(),
                    "upstream connection left with session state; closing it"
                );
                metrics.session_state("closed", change.label());
                lease.close();
                return;
            }
        };
        match Box::pin(reset(lease.server(), &query)).await {
            Ok(()) => {
                if let Ok(mut prepared) = lease.server().prepared.lock() {
                    prepared.clear();
                }
                metrics.session_state("reset", change.label());
                self.cancel_key.release(lease);
            }
            Err(error) => {
                debug!(%error, "upstream connection not reusable; closing it");
                metrics.session_state("closed", change.label());
            }
        }
    }
}
