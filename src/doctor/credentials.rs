//! Check 2: which provider of the AWS credentials chain supplies credentials, and until when.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::report::Checks;
use crate::iam::credentials::{CHAIN_SOURCES, CredentialCache, mask_access_key};
use crate::upstream::{UpstreamAuth, UpstreamSettings};

/// 2. Which provider of the chain supplies credentials, and until when.
pub(super) async fn credentials(
    checks: &mut Checks,
    config: &UpstreamSettings,
) -> Option<Arc<CredentialCache>> {
    let UpstreamAuth::Iam { region, .. } = &config.auth else {
        checks.skip("--auth password: no AWS credentials needed");
        return None;
    };
    let cache = match CredentialCache::from_default_chain(region).await {
        Ok(cache) => Arc::new(cache),
        Err(error) => {
            checks.fail(
                error.to_string(),
                vec![error.reason.clone()],
                "give the sidecar AWS credentials",
            );
            return None;
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), cache.get()).await {
        Ok(Ok(credentials)) => {
            found(checks, &credentials);
            Some(cache)
        }
        Ok(Err(error)) => {
            none_found(checks, region, &error.reason).await;
            None
        }
        Err(_) => {
            checks.fail(
                "the credential chain did not answer within 30 s",
                vec!["an IMDS or ECS endpoint that does not answer".to_owned()],
                "set AWS_EC2_METADATA_DISABLED=true off EC2, or check the ECS agent",
            );
            None
        }
    }
}

/// The chain gave credentials: say where from, and warn when they are about to expire.
fn found(checks: &mut Checks, credentials: &aws_credential_types::Credentials) {
    let expiry = match credentials.expiry() {
        Some(at) => {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            format!("expire in {} min", left.as_secs() / 60)
        }
        None => "do not expire".to_owned(),
    };
    let check = checks.ok(format!(
        "from {} (access key {}), {expiry}",
        provider_description(&provider_name(credentials)),
        mask_access_key(credentials.access_key_id())
    ));
    if credentials
        .expiry()
        .is_some_and(|at| at < SystemTime::now() + Duration::from_secs(300))
    {
        check
            .warnings
            .push("they expire within 5 minutes and must be refreshed".to_owned());
    }
}

/// No source of the chain gave credentials: ask each one again and report what it said.
async fn none_found(checks: &mut Checks, region: &str, reason: &str) {
    let said = crate::iam::sources::each_source_said(region, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|(source, answer)| format!("{source}: {answer}"))
        .collect::<Vec<_>>()
        .join("; ");
    checks.fail(
        format!("none found: {reason}. What each source said: {said}"),
        vec![
            format!("every source of the chain was tried: {CHAIN_SOURCES}"),
            "on ECS: the task definition has no taskRoleArn, or the container cannot reach \
             the ECS agent (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI unset)"
                .to_owned(),
            "on a laptop: no AWS_PROFILE / expired SSO session (aws sso login)".to_owned(),
        ],
        "give the sidecar AWS credentials: an ECS task role, an instance profile, \
         AWS_PROFILE, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
    );
}

/// The name of the provider that supplied `credentials`. aws-credential-types keeps it private
/// and shows it only in `Debug` (which redacts the secret key and omits the session token).
fn provider_name(credentials: &aws_credential_types::Credentials) -> String {
    let debug = format!("{credentials:?}");
    debug
        .split_once("provider_name: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(name, _)| name.to_owned())
        .unwrap_or_else(|| "an unnamed provider".to_owned())
}

fn provider_description(name: &str) -> String {
    let known = match name {
        "EnvironmentVariable" => "environment variables (AWS_ACCESS_KEY_ID)",
        "ProfileFile" => "the AWS profile (~/.aws/config, credentials)",
        "WebIdentityToken" => "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
        "EcsContainer" => "the ECS task role",
        "Ec2InstanceMetadata" | "IMDSv2" => "the EC2 instance profile (IMDS)",
        "SSO" | "Sso" => "AWS SSO",
        _ => "",
    };
    if known.is_empty() {
        name.to_owned()
    } else {
        format!("{known} [{name}]")
    }
}
