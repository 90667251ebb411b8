//! The verifiers `--client-auth scram-sha-256` checks clients against: lines of
//! `--client-auth-file` (`user:SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` as
//! `pg_authid` stores them, or `user:password` turned into a verifier at load), a password
//! turned into one, and a made-up one for unknown users. No password is kept, and none is
//! named in an error.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};
use sha2::{Digest, Sha256};

/// Iterations for verifiers the sidecar makes from plain passwords (PostgreSQL's default).
const ITERATIONS: usize = 4096;

/// A SCRAM-SHA-256 verifier as `pg_authid` stores it; no password in it.
#[derive(Clone)]
pub(super) struct Verifier {
    salt: Vec<u8>,
    iterations: usize,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// pgwire's form, one per exchange.
    pub(super) fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// Reads `user:verifier` or `user:password` lines; blank lines and `#` comments are skipped.
pub(super) fn load_file(path: &Path) -> Result<HashMap<String, Arc<Verifier>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--client-auth-file: cannot read {}: {e}", path.display()))?;
    let mut verifiers = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, secret) = line.split_once(':').ok_or_else(|| {
            format!(
                "--client-auth-file {} line {}: expected user:verifier or user:password",
                path.display(),
                number + 1
            )
        })?;
        let secret = if secret.starts_with("SCRAM-SHA-256$") {
            parse_verifier(secret).ok_or_else(|| {
                format!(
                    "--client-auth-file {} line {}: not a SCRAM-SHA-256 verifier as pg_authid \
                     stores it",
                    path.display(),
                    number + 1
                )
            })?
        } else {
            verifier_of(secret)
        };
        verifiers.insert(user.to_owned(), Arc::new(secret));
    }
    Ok(verifiers)
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 parts.
fn parse_verifier(text: &str) -> Option<Verifier> {
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (iterations_salt, keys) = rest.split_once('$')?;
    let (iterations, salt) = iterations_salt.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let decode = |part: &str| STANDARD.decode(part).ok();
    let (stored_key, server_key) = (decode(stored_key)?, decode(server_key)?);
    if stored_key.len() != 32 || server_key.len() != 32 {
        return None;
    }
    Some(Verifier {
        salt: decode(salt)?,
        iterations: iterations.parse().ok().filter(|n| *n > 0)?,
        stored_key,
        server_key,
    })
}

/// A verifier for a plain password, with a fresh salt.
pub(super) fn verifier_of(password: &str) -> Verifier {
    let salt: [u8; 16] = rand::random();
    let salted = gen_salted_password(password, &salt, ITERATIONS);
    match ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, ITERATIONS) {
        ScramSecret::Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        } => Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        },
        // pgwire makes a Verifier here; anything else would match no password.
        ScramSecret::SaltedPassword { .. } => unknown_user_secret(&rand::random(), ""),
    }
}

/// A verifier no password matches, for a user nobody configured: the same for the same user
/// as long as the process runs (as PostgreSQL's mock salt), so that two attempts do not tell
/// an unknown user (a new salt each time) from a known one. `mock_key` is made at start.
pub(super) fn unknown_user_secret(mock_key: &[u8; 32], user: &str) -> Verifier {
    let derive = |purpose: &[u8]| -> Vec<u8> {
        let mut hash = Sha256::new();
        hash.update(mock_key);
        hash.update(purpose);
        hash.update(user.as_bytes());
        hash.finalize().to_vec()
    };
    Verifier {
        salt: derive(b"salt")[..16].to_vec(),
        iterations: ITERATIONS,
        stored_key: derive(b"stored key"),
        server_key: derive(b"server key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_parse_as_pg_authid_stores_them() {
        // From PostgreSQL: SELECT rolpassword FROM pg_authid (password 'secret').
        let text = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
                    2HkqcYOP0DcflrRkbmzkIFIgrAsVIRLt+c4qgqgtIsM=:\
                    Yt5c4yiuCWIm1DwY9jGMWtLkHD9aqpwSvSNbEGdR7Ds=";
        let verifier = parse_verifier(text).expect("parses");
        assert_eq!(
            (verifier.iterations, verifier.salt.as_slice()),
            (4096, &b"saltsaltsaltsalt"[..])
        );
        assert!(parse_verifier("SCRAM-SHA-256$4096:c2FsdA==$short:short").is_none());
        assert!(parse_verifier("md5abcdef").is_none());
    }

    #[test]
    fn an_unknown_user_gets_the_same_made_up_salt_every_time() {
        let key = [7u8; 32];
        let first = unknown_user_secret(&key, "mallory");
        assert_eq!(first.salt, unknown_user_secret(&key, "mallory").salt);
        assert_ne!(first.salt, unknown_user_secret(&key, "eve").salt);
        assert_eq!((first.salt.len(), first.iterations), (16, 4096));
    }

    #[test]
    fn the_file_takes_verifiers_and_passwords_and_names_a_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        std::fs::write(&path, "# users\nalice:wonderland\n\nbob:SCRAM-SHA-256$4096:c2FsdA==$2HkqcYOP0DcflrRkbmzkIFIgrAsVIRLt+c4qgqgtIsM=:Yt5c4yiuCWIm1DwY9jGMWtLkHD9aqpwSvSNbEGdR7Ds=\n")
            .expect("write");
        let verifiers = load_file(&path).expect("loads");
        assert_eq!(verifiers.len(), 2);
        std::fs::write(&path, "alice:wonderland\nno colon here\n").expect("write");
        let error = load_file(&path).expect_err("a bad line");
        assert!(error.contains("line 2"), "{error}");
        assert!(
            !error.contains("wonderland"),
            "no password in errors: {error}"
        );
    }
}
