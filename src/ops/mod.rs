//! Operating the sidecar: the admin HTTP endpoint and what it checks, the client the
//! `healthcheck`/`wait`/`shutdown` subcommands use, Prometheus metrics, graceful shutdown and
//! log output. Nothing here forwards client bytes; the engine reports to `metrics` and
//! `shutdown`, and `admin` reads what it checks from the engine parts it is handed.

pub mod admin;
pub mod admin_client;
pub mod allocator;
pub mod health;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod shutdown;
