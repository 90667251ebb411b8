//! A [`Lease`]: one upstream connection checked out of a [`Pool`], given back with
//! [`Lease::release`] or closed when dropped (a connection in an unknown state is never pooled).

use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::{Pool, PoolKey, PooledConnection};
use crate::upstream::ServerConnection;

/// A connection lent to one client. Dropping it closes the connection; [`Lease::release`]
/// returns it to the pool.
pub struct Lease {
    connection: Option<PooledConnection>,
    pool: Arc<Pool>,
}

impl Lease {
    pub(super) fn new(pool: &Arc<Pool>, connection: PooledConnection) -> Self {
        Self {
            connection: Some(connection),
            pool: pool.clone(),
        }
    }

    pub fn server(&mut self) -> &mut ServerConnection {
        // A lease always holds its connection until it is released or dropped.
        &mut self
            .connection
            .as_mut()
            .expect("a lease holds a connection")
            .server
    }

    /// The server's cancel key, if it sent one.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.connection.as_ref().and_then(|c| c.server.backend_key)
    }

    /// The connection's ParameterStatus set, shared.
    pub fn shared_parameters(&self) -> super::Parameters {
        self.connection
            .as_ref()
            .map_or_else(Default::default, |c| c.server.parameters.clone())
    }

    pub fn parameters(&self) -> &[(String, String)] {
        self.connection
            .as_ref()
            .map_or(&[][..], |c| &c.server.parameters[..])
    }

    pub fn pool_key(&self) -> &PoolKey {
        &self.pool.key
    }

    /// Back to the pool as idle (or closed, when past its lifetime).
    pub fn release(mut self) {
        if let Some(mut connection) = self.connection.take() {
            let now = Instant::now();
            if connection.expired(now) {
                debug!(pool = %self.pool.key, "upstream connection reached its lifetime; closing");
                self.pool.forget_one();
                connection.server.close_in_background();
                return;
            }
            connection.idle_since = now;
            self.pool.give_back(connection);
        }
    }
}

impl Lease {
    /// Closes the connection, idle at a message boundary, with a goodbye
    /// ([`ServerConnection::close_in_background`](crate::upstream::ServerConnection::close_in_background)).
    /// Dropping a lease closes it without one: it may be in the middle of a message.
    pub fn close(mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.forget_one();
            connection.server.close_in_background();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.connection.take().is_some() {
            self.pool.forget_one();
        }
    }
}
