//! Independent SigV4 verifier (and a tiny signer) for RDS IAM authentication tokens.
//!
//! This module owns the test-side view of the token format described in DESIGN.md §5. It is
//! written from the SigV4 specification with only `hmac`, `sha2`, `hex` and `percent-encoding`,
//! deliberately sharing no code with the sidecar's signer (which uses `aws-sigv4`), so that a
//! canonicalisation mistake in one is caught by the other.
//!
//! A token is a presigned `GET` URL with the scheme stripped:
//! `HOST:PORT/?Action=connect&DBUser=USER&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…
//! &X-Amz-Date=…&X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=…]&X-Amz-Signature=…`.
//!
//! [`verify_token`] recomputes the signature from the raw query exactly as RDS does (the
//! parameter order in the token does not matter, only the sorted canonical query), and checks
//! the action, user, host, credential scope, date window and access key.
//! [`sign_token_for_tests`] mints tokens in botocore's byte order so tests can log in to the
//! emulator without going through the sidecar.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The service name in the credential scope of an RDS IAM token.
pub const SERVICE: &str = "rds-db";
/// The only algorithm RDS accepts.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Upper bound RDS puts on `X-Amz-Expires` (seconds).
pub const MAX_EXPIRES: u64 = 900;
/// How far in the future `X-Amz-Date` may be (clock skew allowance, seconds).
pub const MAX_CLOCK_SKEW: u64 = 300;

/// What the verifying side (the RDS Proxy emulator) expects the token to be for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// `HOST:PORT` of the endpoint the client was supposed to sign for.
    pub host_port: String,
    /// Region that must appear in the credential scope.
    pub region: String,
    /// The database user of the login (the startup `user` parameter).
    pub db_user: String,
}

/// What a successfully verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub access_key_id: String,
    pub db_user: String,
    pub session_token: Option<String>,
}

/// Why a token was refused. `Display` says what was wrong in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRejection {
    /// The token is not `HOST:PORT/?query` or the query cannot be parsed.
    Malformed(String),
    /// A required query parameter is absent.
    MissingParameter(&'static str),
    /// A query parameter appears more than once.
    DuplicateParameter(String),
    WrongAction(String),
    WrongAlgorithm(String),
    WrongUser {
        expected: String,
        got: String,
    },
    WrongHost {
        expected: String,
        got: String,
    },
    BadCredential(String),
    WrongRegion {
        expected: String,
        got: String,
    },
    WrongService(String),
    WrongSignedHeaders(String),
    BadDate(String),
    /// `X-Amz-Date` is later than now + [`MAX_CLOCK_SKEW`].
    NotYetValid {
        signed_at: u64,
        now: u64,
    },
    /// now > `X-Amz-Date` + `X-Amz-Expires`.
    Expired {
        signed_at: u64,
        expires: u64,
        now: u64,
    },
    BadExpires(String),
    UnknownAccessKey(String),
    SignatureMismatch {
        expected: String,
        got: String,
    },
}

impl fmt::Display for TokenRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed token: {why}"),
            Self::MissingParameter(p) => write!(f, "missing query parameter {p}"),
            Self::DuplicateParameter(p) => write!(f, "duplicate query parameter {p}"),
            Self::WrongAction(a) => write!(f, "Action must be 'connect', got '{a}'"),
            Self::WrongAlgorithm(a) => write!(f, "X-Amz-Algorithm must be {ALGORITHM}, got '{a}'"),
            Self::WrongUser { expected, got } => {
                write!(
                    f,
                    "DBUser '{got}' does not match the login user '{expected}'"
                )
            }
            Self::WrongHost { expected, got } => {
                write!(f, "token signed for host '{got}', expected '{expected}'")
            }
            Self::BadCredential(c) => write!(f, "malformed X-Amz-Credential '{c}'"),
            Self::WrongRegion { expected, got } => {
                write!(f, "credential scope region '{got}', expected '{expected}'")
            }
            Self::WrongService(s) => {
                write!(f, "credential scope service '{s}', expected '{SERVICE}'")
            }
            Self::WrongSignedHeaders(h) => {
                write!(f, "X-Amz-SignedHeaders must be 'host', got '{h}'")
            }
            Self::BadDate(d) => write!(f, "bad X-Amz-Date '{d}'"),
            Self::NotYetValid { signed_at, now } => write!(
                f,
                "token dated {}s in the future (signed at {signed_at}, now {now})",
                signed_at - now
            ),
            Self::Expired {
                signed_at,
                expires,
                now,
            } => write!(
                f,
                "token expired: signed at {signed_at}, valid {expires}s, now {now} ({}s too late)",
                now - (signed_at + expires)
            ),
            Self::BadExpires(e) => {
                write!(f, "X-Amz-Expires must be 1..={MAX_EXPIRES}, got '{e}'")
            }
            Self::UnknownAccessKey(k) => write!(f, "unknown access key id '{k}'"),
            Self::SignatureMismatch { expected, got } => {
                write!(
                    f,
                    "signature mismatch: computed {expected}, token has {got}"
                )
            }
        }
    }
}

impl std::error::Error for TokenRejection {}

/// Verifies an RDS IAM token the way RDS / RDS Proxy does.
///
/// `secret_for(access_key_id)` returns the secret access key for a known key id.
/// `now_unix` is the verification time in seconds since the Unix epoch.
pub fn verify_token(
    token: &str,
    expect: &Expectation,
    secret_for: impl Fn(&str) -> Option<String>,
    now_unix: u64,
) -> Result<VerifiedToken, TokenRejection> {
    let (host_port, query) = token
        .split_once('/')
        .ok_or_else(|| TokenRejection::Malformed("no '/' after HOST:PORT".into()))?;
    let query = query
        .strip_prefix('?')
        .ok_or_else(|| TokenRejection::Malformed("path must be '/' followed by '?'".into()))?;
    if host_port.is_empty() || !host_port.contains(':') {
        return Err(TokenRejection::Malformed(format!(
            "'{host_port}' is not HOST:PORT"
        )));
    }
    let params = parse_query(query)?;
    let get = |name: &'static str| {
        params
            .get(name)
            .map(String::as_str)
            .ok_or(TokenRejection::MissingParameter(name))
    };

    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(TokenRejection::WrongAlgorithm(algorithm.into()));
    }
    let action = get("Action")?;
    if action != "connect" {
        return Err(TokenRejection::WrongAction(action.into()));
    }
    let db_user = get("DBUser")?;
    if db_user != expect.db_user {
        return Err(TokenRejection::WrongUser {
            expected: expect.db_user.clone(),
            got: db_user.into(),
        });
    }
    if !host_port.eq_ignore_ascii_case(&expect.host_port) {
        return Err(TokenRejection::WrongHost {
            expected: expect.host_port.clone(),
            got: host_port.into(),
        });
    }

    let credential = get("X-Amz-Credential")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, scope_date, region, service, terminator] = scope[..] else {
        return Err(TokenRejection::BadCredential(credential.into()));
    };
    if access_key_id.is_empty() || terminator != "aws4_request" {
        return Err(TokenRejection::BadCredential(credential.into()));
    }
    if region != expect.region {
        return Err(TokenRejection::WrongRegion {
            expected: expect.region.clone(),
            got: region.into(),
        });
    }
    if service != SERVICE {
        return Err(TokenRejection::WrongService(service.into()));
    }
    let signed_headers = get("X-Amz-SignedHeaders")?;
    if signed_headers != "host" {
        return Err(TokenRejection::WrongSignedHeaders(signed_headers.into()));
    }

    let amz_date = get("X-Amz-Date")?;
    let signed_at =
        parse_amz_date(amz_date).ok_or_else(|| TokenRejection::BadDate(amz_date.into()))?;
    if amz_date.get(..8) != Some(scope_date) {
        return Err(TokenRejection::BadCredential(format!(
            "{credential} (scope date differs from X-Amz-Date {amz_date})"
        )));
    }
    let expires_raw = get("X-Amz-Expires")?;
    let expires: u64 = expires_raw
        .parse()
        .ok()
        .filter(|e| (1..=MAX_EXPIRES).contains(e))
        .ok_or_else(|| TokenRejection::BadExpires(expires_raw.into()))?;
    if signed_at > now_unix + MAX_CLOCK_SKEW {
        return Err(TokenRejection::NotYetValid {
            signed_at,
            now: now_unix,
        });
    }
    if now_unix > signed_at + expires {
        return Err(TokenRejection::Expired {
            signed_at,
            expires,
            now: now_unix,
        });
    }

    let secret = secret_for(access_key_id)
        .ok_or_else(|| TokenRejection::UnknownAccessKey(access_key_id.into()))?;
    let got = get("X-Amz-Signature")?;
    let expected = signature(
        &secret,
        amz_date,
        region,
        host_port,
        &canonical_query(&params),
    );
    if !constant_time_eq(expected.as_bytes(), got.to_ascii_lowercase().as_bytes()) {
        return Err(TokenRejection::SignatureMismatch {
            expected,
            got: got.into(),
        });
    }

    Ok(VerifiedToken {
        access_key_id: access_key_id.into(),
        db_user: db_user.into(),
        session_token: params.get("X-Amz-Security-Token").cloned(),
    })
}

/// Parameters for [`sign_token`]; [`sign_token_for_tests`] fills `expires` with 900.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    /// `HOST:PORT` the token is for.
    pub host_port: &'a str,
    pub region: &'a str,
    pub db_user: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    /// Signing time, seconds since the Unix epoch.
    pub now_unix: u64,
    /// `X-Amz-Expires` in seconds (the verifier rejects values above 900).
    pub expires: u64,
}

/// Mints a token (valid 900 s) in botocore's parameter order. For tests only.
pub fn sign_token_for_tests(
    host_port: &str,
    region: &str,
    db_user: &str,
    access_key_id: &str,
    secret_access_key: &str,
    session_token: Option<&str>,
    now_unix: u64,
) -> String {
    sign_token(&SignRequest {
        host_port,
        region,
        db_user,
        access_key_id,
        secret_access_key,
        session_token,
        now_unix,
        expires: MAX_EXPIRES,
    })
}

/// Mints a token from a [`SignRequest`] in botocore's parameter order.
pub fn sign_token(req: &SignRequest<'_>) -> String {
    let amz_date = format_amz_date(req.now_unix);
    let credential = format!(
        "{}/{}/{}/{SERVICE}/aws4_request",
        req.access_key_id,
        &amz_date[..8],
        req.region
    );
    // Token byte order as botocore emits it (DESIGN.md §5).
    let mut ordered: Vec<(&str, String)> = vec![
        ("Action", "connect".into()),
        ("DBUser", req.db_user.into()),
        ("X-Amz-Algorithm", ALGORITHM.into()),
        ("X-Amz-Credential", credential),
        ("X-Amz-Date", amz_date.clone()),
        ("X-Amz-Expires", req.expires.to_string()),
        ("X-Amz-SignedHeaders", "host".into()),
    ];
    if let Some(token) = req.session_token {
        ordered.push(("X-Amz-Security-Token", token.into()));
    }
    let params: BTreeMap<String, String> = ordered
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let sig = signature(
        req.secret_access_key,
        &amz_date,
        req.region,
        req.host_port,
        &canonical_query(&params),
    );
    let mut query: Vec<String> = ordered
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    query.push(format!("X-Amz-Signature={sig}"));
    format!("{}/?{}", req.host_port, query.join("&"))
}

/// RFC 3986 percent-encoding as SigV4 requires (space → `%20`, `+` → `%2B`).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Splits and percent-decodes the query; rejects duplicates and non-UTF-8.
fn parse_query(query: &str) -> Result<BTreeMap<String, String>, TokenRejection> {
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| TokenRejection::Malformed(format!("'{s}' is not UTF-8")))
        };
        let key = decode(k)?;
        if params.insert(key.clone(), decode(v)?).is_some() {
            return Err(TokenRejection::DuplicateParameter(key));
        }
    }
    Ok(params)
}

/// Canonical query string: every parameter except the signature, encoded, sorted by key.
fn canonical_query(params: &BTreeMap<String, String>) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "X-Amz-Signature")
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Hex signature of a presigned `GET /` with only `host` signed and an empty payload.
fn signature(
    secret: &str,
    amz_date: &str,
    region: &str,
    host_port: &str,
    canonical_query: &str,
) -> String {
    let empty_payload_hash = hex::encode(Sha256::digest(b""));
    let canonical_request =
        format!("GET\n/\n{canonical_query}\nhost:{host_port}\n\nhost\n{empty_payload_hash}");
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, SERVICE.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses `YYYYMMDDTHHMMSSZ` into seconds since the Unix epoch.
pub fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs).ok()
}

/// Formats seconds since the Unix epoch as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).expect("date within range");
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}
