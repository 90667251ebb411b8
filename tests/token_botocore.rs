//! Byte equality of our tokens with botocore's `generate_db_auth_token` (what
//! `aws rds generate-db-auth-token` runs), at a frozen time. Skipped, loudly, when python3 with
//! botocore is not on the machine.

use std::process::Command;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use rds_iam_sidecar::iam::token::sign_token;

const FROZEN_UNIX: u64 = 1724709600; // 2024-08-26T22:00:00Z

const SCRIPT: &str = r#"
import datetime, sys
import botocore.auth, botocore.session
fixed = datetime.datetime(2024, 8, 26, 22, 0, 0)
botocore.auth.get_current_datetime = lambda remove_tzinfo=True: fixed
akid, secret, token, region, host, port, user = sys.argv[1:8]
session = botocore.session.get_session()
session.set_credentials(akid, secret, token or None)
client = session.create_client("rds", region_name=region)
print(client.generate_db_auth_token(DBHostname=host, Port=int(port), DBUsername=user))
"#;

fn botocore_token(args: [&str; 7]) -> Option<String> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(args)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "botocore run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn botocore_available() -> bool {
    Command::new("python3")
        .args(["-c", "import botocore"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn tokens_equal_botocore_byte_for_byte() {
    if !botocore_available() {
        eprintln!(
            "SKIPPED tokens_equal_botocore_byte_for_byte: python3 with botocore is not installed"
        );
        return;
    }
    let cases = [
        (
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "",
            "us-east-1",
            "mydb.proxy-abc123.us-east-1.rds.amazonaws.com",
            "5432",
            "app_user",
        ),
        (
            "ASIAEXAMPLE",
            "secret/with+chars=",
            "IQoJb3JpZ2luX2VjEA8aCXVzLWVhc3QtMSJHMEUCIQ+/session=token",
            "eu-west-2",
            "cluster.cluster-xyz.eu-west-2.rds.amazonaws.com",
            "6543",
            "app user+x@y",
        ),
        (
            "akid",
            "secret",
            "",
            "us-east-1",
            "prod-instance.us-east-1.rds.amazonaws.com",
            "3306",
            "peccy",
        ),
    ];
    for (akid, secret, session_token, region, host, port, user) in cases {
        let expected = botocore_token([akid, secret, session_token, region, host, port, user])
            .expect("botocore produced a token");
        let credentials = Credentials::new(
            akid,
            secret,
            (!session_token.is_empty()).then(|| session_token.to_owned()),
            None,
            "test",
        );
        let ours = sign_token(
            &credentials,
            host,
            port.parse().expect("port"),
            user,
            region,
            SystemTime::UNIX_EPOCH + Duration::from_secs(FROZEN_UNIX),
        )
        .expect("signs");
        assert_eq!(ours.expose(), expected, "case user={user} host={host}");
    }
}
