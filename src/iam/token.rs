//! RDS IAM auth tokens: a SigV4 presigned `GET https://HOST:PORT/?Action=connect&DBUser=USER`
//! for service `rds-db`, valid 900 s, with the scheme stripped — byte for byte what botocore's
//! `generate_db_auth_token` (and so `aws rds generate-db-auth-token`) emits.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::secret::Secret;

/// How long a token is accepted for login (the maximum RDS allows).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (as botocore does).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The order botocore writes the query parameters in.
const PARAM_ORDER: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Security-Token",
    "X-Amz-Signature",
];

/// Signing failed (bad input, never expected with valid credentials).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the IAM auth token: {0}")]
pub struct SignError(String);

/// Signs a token for `host:port` and `user` in `region` at `time`.
pub fn sign_token(
    credentials: &Credentials,
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    time: SystemTime,
) -> Result<Secret, SignError> {
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();

    let host_port = format!("{host}:{port}");
    let base = format!(
        "Action=connect&DBUser={}",
        utf8_percent_encode(user, UNRESERVED)
    );
    let url = format!("https://{host_port}/?{base}");
    let request = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::empty())
        .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();

    let mut token = format!("{host_port}/?{base}");
    let added = instructions.params();
    for name in PARAM_ORDER {
        if let Some((_, value)) = added.iter().find(|(n, _)| *n == name) {
            token.push('&');
            token.push_str(name);
            token.push('=');
            token.extend(utf8_percent_encode(value, UNRESERVED));
        }
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    /// The known-answer vector from the AWS Rust SDK's own auth token test.
    #[test]
    fn known_answer_vector() {
        let credentials = Credentials::new("akid", "secret", None, None, "test");
        let token = sign_token(
            &credentials,
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "peccy",
            "us-east-1",
            at(1724709600),
        )
        .expect("signs");
        assert_eq!(
            token.expose(),
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
    }

    #[test]
    fn session_token_goes_before_the_signature_and_user_is_encoded() {
        let credentials = Credentials::new("AKID", "secret", Some("tok/en+=".into()), None, "t");
        let token = sign_token(
            &credentials,
            "h.proxy-x.eu-west-1.rds.amazonaws.com",
            5432,
            "app user+x@y",
            "eu-west-1",
            at(1724709600),
        )
        .expect("signs");
        let text = token.expose();
        assert!(text.contains("DBUser=app%20user%2Bx%40y&"), "{text}");
        let st = text
            .find("&X-Amz-Security-Token=tok%2Fen%2B%3D")
            .expect("token param");
        let sh = text.find("&X-Amz-SignedHeaders=").expect("signed headers");
        let sig = text.find("&X-Amz-Signature=").expect("signature");
        assert!(sh < st && st < sig, "{text}");
    }
}
