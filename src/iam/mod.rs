//! Everything IAM: where AWS credentials come from and how they are cached
//! ([`credentials`]), what each source of the chain says on its own ([`sources`], for
//! `doctor`), how an RDS auth token is signed ([`token`]), and which region signs it
//! ([`region`]).

pub mod credentials;
pub mod region;
pub mod sources;
pub mod token;
