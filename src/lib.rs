//! rds-iam-sidecar: a local PostgreSQL endpoint that logs in to AWS RDS / RDS Proxy with IAM
//! database authentication on behalf of unmodified applications.
//!
//! Data flows one way (see `docs/ARCHITECTURE.md`): [`settings`] turns flags, environment and
//! TOML into one validated [`settings::Settings`]; [`sidecar`] starts one engine per upstream
//! endpoint from it; [`frontend`] accepts clients and runs each one's life; [`pool`] keeps
//! logged-in upstream connections; [`upstream`] dials, secures and logs in; [`forward`] is the
//! hot loop, over [`stream`]s whose TCP sockets do their I/O through [`uring`] where they can.
//! [`iam`] and [`protocol`] sit below them; [`ops`] (admin, health, metrics,
//! shutdown, logging) and [`doctor`] beside.

pub mod doctor;
pub mod error;
pub mod exec;
pub mod forward;
pub mod frontend;
pub mod iam;
pub mod lambda;
pub mod ops;
pub mod pool;
pub mod protocol;
pub mod secret;
pub mod settings;
pub mod sidecar;
pub mod stream;
pub mod upstream;
pub mod uring;

pub use sidecar::{RunningSidecar, start};
