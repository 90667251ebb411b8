//! The PostgreSQL wire protocol as far as the sidecar needs it: header-only framing for the hot
//! path ([`framing`]), the client's first packets ([`startup`]) and the few messages the sidecar
//! writes itself ([`messages`]).

pub mod framing;
pub mod messages;
pub mod startup;
