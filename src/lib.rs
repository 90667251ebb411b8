//! rds-iam-sidecar: a local PostgreSQL endpoint that logs in to AWS RDS / RDS Proxy with IAM
//! database authentication on behalf of unmodified applications.
//!
//! The crate is organised one concept per module (see `docs/ARCHITECTURE.md`):
//! `config` turns flags, environment and TOML into one validated [`config::Config`];
//! `listener` accepts clients; `client` runs one client's life; `upstream` dials, secures and
//! logs in to the database; `iam` owns credentials and token signing; `forward` is the hot loop.

pub mod admin;
pub mod admin_client;
pub mod buffers;
pub mod cancel;
pub mod cli;
pub mod client;
pub mod config;
pub mod doctor;
pub mod duration;
pub mod error;
pub mod forward;
pub mod iam;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod secret;
pub mod shutdown;
pub mod stream;
pub mod upstream;

pub use listener::{RunningSidecar, start};
