//! `rds-iam-sidecar doctor` against the RDS Proxy emulator and the ephemeral PostgreSQL: a run
//! that passes, and one failing run per broken link of the chain, each naming the failed check
//! and the likely cause, in text and in JSON.

mod harness;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use harness::binary::{free_port, sidecar_command};
use serde_json::Value;
use support::{
    DEFAULT_ENDPOINT_HOST, Emulator, EmulatorOptions, TEST_AKID, TEST_SECRET, TestPki,
    shared_cluster,
};

/// Another proxy name in the same region, for certificates and tokens that do not match.
const OTHER_HOST: &str = "other.proxy-abc123.us-east-1.rds.amazonaws.com";

/// An emulator for the shared cluster with its TLS certificate for `names` (no TLS if empty).
async fn emulator(pki: &TestPki, names: &[&str]) -> Emulator {
    let cluster = tokio::task::spawn_blocking(shared_cluster)
        .await
        .expect("start the shared PostgreSQL cluster");
    Emulator::start(EmulatorOptions {
        tls: (!names.is_empty()).then(|| pki.server_cert(names)),
        backend_port: cluster.port,
        keys: Arc::new(Mutex::new(HashMap::from([(
            TEST_AKID.to_owned(),
            TEST_SECRET.to_owned(),
        )]))),
        ..EmulatorOptions::default()
    })
    .await
}

/// What one doctor run printed, both ways.
struct Run {
    code: Option<i32>,
    text: String,
    json: Value,
}

impl Run {
    /// The status of check `step` (1-based) in the JSON report.
    fn status(&self, step: usize) -> &str {
        self.json["checks"][step - 1]["status"]
            .as_str()
            .unwrap_or("missing")
    }

    /// Detail, causes and fix of check `step`, as one string.
    fn explanation(&self, step: usize) -> String {
        let check = &self.json["checks"][step - 1];
        format!("{} {} {}", check["detail"], check["causes"], check["fix"])
    }

    fn assert_failed_at(&self, step: usize, expected: &[&str]) {
        assert_eq!(self.code, Some(1), "{}", self.text);
        for earlier in 1..step {
            assert_ne!(self.status(earlier), "failed", "{}", self.text);
        }
        assert_eq!(self.status(step), "failed", "{}", self.text);
        for later in step + 1..=7 {
            assert_eq!(self.status(later), "skipped", "{}", self.text);
        }
        let explanation = self.explanation(step);
        for words in expected {
            assert!(
                explanation.contains(words),
                "check {step} should mention '{words}': {explanation}"
            );
        }
        let line = self
            .text
            .lines()
            .find(|l| l.starts_with("FAILED"))
            .unwrap_or_default();
        assert!(line.contains(&format!("{step}. ")), "{}", self.text);
    }
}

/// Runs doctor twice (text, JSON) with `args` and the credentials in `env`.
async fn doctor(args: &[String], env: &[(&str, &str)]) -> Run {
    let home = tempfile::tempdir().expect("tempdir");
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let output = tokio::process::Command::from(sidecar_command(home.path()))
            .arg("doctor")
            .args(args)
            .args([
                "--format",
                format,
                "--user",
                "postgres",
                "--database",
                "postgres",
            ])
            .envs(env.iter().copied())
            .output()
            .await
            .expect("run doctor");
        outputs.push(output);
    }
    let text = String::from_utf8_lossy(&outputs[0].stdout).into_owned();
    let json_text = String::from_utf8_lossy(&outputs[1].stdout).into_owned();
    let json: Value = serde_json::from_str(&json_text)
        .unwrap_or_else(|e| panic!("doctor --format json is not JSON ({e}): {json_text}"));
    assert_eq!(outputs[0].status.code(), outputs[1].status.code());
    for secret in [TEST_SECRET, "X-Amz-Signature", "wrong/secret", TEST_AKID] {
        assert!(
            !text.contains(secret) && !json_text.contains(secret),
            "the report shows '{secret}'"
        );
    }
    Run {
        code: outputs[0].status.code(),
        text,
        json,
    }
}

fn args_for(upstream: &str, dial: &str, pki: &TestPki) -> Vec<String> {
    vec![
        "--upstream".into(),
        upstream.into(),
        "--upstream-addr".into(),
        dial.into(),
        "--ca-file".into(),
        pki.ca_file().to_str().expect("utf-8 path").into(),
        "--connect-timeout".into(),
        "3s".into(),
    ]
}

const CREDENTIALS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", TEST_AKID),
    ("AWS_SECRET_ACCESS_KEY", TEST_SECRET),
];

/// Doctor for `upstream_host` against an emulator whose certificate names `cert_names` (no TLS
/// if empty), with the credentials in `env`.
async fn doctor_through(cert_names: &[&str], upstream_host: &str, env: &[(&str, &str)]) -> Run {
    let pki = TestPki::new();
    let emulator = emulator(&pki, cert_names).await;
    let upstream = format!("{upstream_host}:5432");
    doctor(&args_for(&upstream, &emulator.addr.to_string(), &pki), env).await
}

#[tokio::test]
async fn a_working_chain_passes_every_check() {
    let run = doctor_through(&[DEFAULT_ENDPOINT_HOST], DEFAULT_ENDPOINT_HOST, CREDENTIALS).await;
    assert_eq!(run.code, Some(0), "{}", run.text);
    assert_eq!(run.json["ok"], true);
    for step in 1..=7 {
        assert_eq!(run.status(step), "ok", "check {step}: {}", run.text);
    }
    assert!(
        run.explanation(1).contains("RDS Proxy endpoint"),
        "{}",
        run.text
    );
    assert!(
        run.explanation(1).contains("region us-east-1"),
        "{}",
        run.text
    );
    assert!(
        run.explanation(1).contains("treated as rds-proxy"),
        "{}",
        run.text
    );
    assert!(
        run.explanation(1)
            .contains("client TLS off, client auth trust"),
        "the listener's side: {}",
        run.text
    );
    // The access key is shown masked, with the provider that supplied it.
    let masked = format!(
        "{}{}",
        "*".repeat(TEST_AKID.len() - 4),
        &TEST_AKID[TEST_AKID.len() - 4..]
    );
    assert!(run.explanation(2).contains(&masked), "{}", run.text);
    assert!(
        run.explanation(2).contains("EnvironmentVariable"),
        "{}",
        run.text
    );
    assert!(
        !run.text.contains(TEST_AKID),
        "the full access key id is never shown"
    );
    assert!(run.explanation(3).contains("127.0.0.1"), "{}", run.text);
    assert!(run.explanation(5).contains("issued by"), "{}", run.text);
    assert!(
        run.explanation(6).contains("characters"),
        "token length: {}",
        run.text
    );
    assert!(
        run.explanation(7).contains("current_user postgres"),
        "{}",
        run.text
    );
    assert!(
        run.explanation(7).contains("PostgreSQL"),
        "version: {}",
        run.text
    );
}

#[tokio::test]
async fn a_listener_beyond_loopback_without_client_auth_is_warned_about() {
    let pki = TestPki::new();
    let emulator = emulator(&pki, &[DEFAULT_ENDPOINT_HOST]).await;
    let upstream = format!("{DEFAULT_ENDPOINT_HOST}:5432");
    let mut args = args_for(&upstream, &emulator.addr.to_string(), &pki);
    args.extend(
        [
            "--listen",
            "0.0.0.0:5432",
            "--allow-unauthenticated-clients",
        ]
        .map(str::to_owned),
    );
    let run = doctor(&args, CREDENTIALS).await;
    assert_eq!(run.status(1), "ok", "{}", run.text);
    assert!(
        run.text
            .contains("beyond loopback without client authentication"),
        "{}",
        run.text
    );
}

#[tokio::test]
async fn no_credentials_fail_check_2_with_the_sources_tried() {
    let run = doctor_through(&[DEFAULT_ENDPOINT_HOST], DEFAULT_ENDPOINT_HOST, &[]).await;
    run.assert_failed_at(
        2,
        &[
            "What each source said",
            "environment: ",
            "ECS task role: ",
            "EC2 instance profile (IMDS): ",
        ],
    );
}

#[tokio::test]
async fn a_wrong_secret_key_fails_the_login_at_check_6() {
    let run = doctor_through(
        &[DEFAULT_ENDPOINT_HOST],
        DEFAULT_ENDPOINT_HOST,
        &[
            ("AWS_ACCESS_KEY_ID", TEST_AKID),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wrong/secret+key0000000000000000000000000",
            ),
        ],
    )
    .await;
    run.assert_failed_at(6, &["rds-db:connect", "secret key is wrong"]);
}

#[tokio::test]
async fn a_closed_port_fails_check_4() {
    let pki = TestPki::new();
    let upstream = format!("{DEFAULT_ENDPOINT_HOST}:5432");
    let closed = format!("127.0.0.1:{}", free_port());
    let run = doctor(&args_for(&upstream, &closed, &pki), CREDENTIALS).await;
    run.assert_failed_at(4, &["nothing listens", "security group"]);
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_check_5() {
    let run = doctor_through(&[OTHER_HOST], DEFAULT_ENDPOINT_HOST, CREDENTIALS).await;
    run.assert_failed_at(5, &["does not name", OTHER_HOST, "--upstream-addr"]);
}

#[tokio::test]
async fn a_token_signed_for_another_host_fails_check_6() {
    // The certificate names both hosts, so TLS passes; the proxy expects tokens for its own.
    let run = doctor_through(
        &[DEFAULT_ENDPOINT_HOST, OTHER_HOST],
        OTHER_HOST,
        CREDENTIALS,
    )
    .await;
    run.assert_failed_at(6, &["signed for", OTHER_HOST]);
}

#[tokio::test]
async fn a_server_without_tls_fails_check_5() {
    let run = doctor_through(&[], DEFAULT_ENDPOINT_HOST, CREDENTIALS).await;
    run.assert_failed_at(5, &["does not offer TLS"]);
}

#[tokio::test]
async fn a_bad_setting_fails_check_1() {
    let run = doctor(&["--upstream".into(), "db:notaport".into()], CREDENTIALS).await;
    run.assert_failed_at(1, &["--upstream"]);
}
