//! Everything IAM: where AWS credentials come from and how they are cached
//! ([`credentials`]), how an RDS auth token is signed ([`token`]), and which region signs it
//! ([`region`]).

pub mod credentials;
pub mod region;
pub mod token;
