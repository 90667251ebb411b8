//! Each source of the default credentials chain asked on its own, for `doctor` when the chain
//! as a whole found nothing: what the environment, the profile, web identity, the ECS agent
//! and IMDS each said. Never a secret: a source with credentials is only said to have them.

use std::time::Duration;

use aws_config::Region;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::credentials::{error_chain, http_client};

/// Asks each source of the default chain on its own (for `doctor`, when the chain as a whole
/// found nothing): the source's name and what it said, each within `timeout`. Never returns a
/// secret: a source that has credentials is reported only as having them.
pub async fn each_source_said(region: &str, timeout: Duration) -> Vec<(&'static str, String)> {
    use aws_config::provider_config::ProviderConfig;
    let config = ProviderConfig::default()
        .with_region(Some(Region::new(region.to_owned())))
        .with_http_client(http_client());
    let sources: Vec<(&'static str, SharedCredentialsProvider)> = vec![
        (
            "environment",
            SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
        ),
        (
            "profile",
            SharedCredentialsProvider::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&config)
                    .build(),
            ),
        ),
        (
            "web identity",
            SharedCredentialsProvider::new(
                aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
                    .configure(&config)
                    .build(),
            ),
        ),
        (
            "ECS task role",
            SharedCredentialsProvider::new(
                aws_config::ecs::EcsCredentialsProvider::builder()
                    .configure(&config)
                    .build(),
            ),
        ),
        (
            "EC2 instance profile (IMDS)",
            SharedCredentialsProvider::new(
                aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                    .configure(&config)
                    .build(),
            ),
        ),
    ];
    let mut said = Vec::new();
    for (name, provider) in sources {
        let answer = match tokio::time::timeout(timeout, provider.provide_credentials()).await {
            Ok(Ok(_)) => "has credentials".to_owned(),
            Ok(Err(error)) => error_chain(&error),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        said.push((name, answer));
    }
    said
}
