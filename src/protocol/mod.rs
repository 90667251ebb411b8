//! The PostgreSQL wire protocol as far as the sidecar needs it: header-only framing for the hot
//! path ([`framing`]), the client's first packets ([`startup`]), the few messages the sidecar
//! writes itself ([`messages`]) and whole server messages read outside the hot loop
//! ([`server`]).

pub mod framing;
pub mod messages;
pub mod server;
pub mod startup;
