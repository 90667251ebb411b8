//! Unit tests of the layering and validation of settings.

use std::path::Path;

use super::*;
use crate::iam::region::RegionSource;
use crate::pool::PoolKey;
use crate::upstream::tls::TlsMode;
use crate::upstream::{Endpoint, UpstreamAuth};

fn no_env(_: &str) -> Option<String> {
    None
}

fn args(upstream: &str) -> RunArgs {
    RunArgs {
        upstream: vec![upstream.to_owned()],
        ..RunArgs::default()
    }
}

#[test]
fn endpoint_parsing() {
    assert_eq!(
        Endpoint::parse("db.example.com:6432"),
        Ok(Endpoint {
            host: "db.example.com".into(),
            port: 6432
        })
    );
    assert_eq!(Endpoint::parse("db.example.com").map(|e| e.port), Ok(5432));
    assert_eq!(
        Endpoint::parse("[::1]:5433").map(|e| e.dial_target()),
        Ok("[::1]:5433".to_owned())
    );
    assert!(Endpoint::parse(":5432").is_err());
    assert!(Endpoint::parse("db:notaport").is_err());
    assert!(Endpoint::parse("db:0").is_err());
}

#[test]
fn region_comes_from_the_endpoint_name() {
    let config = Settings::from_args(
        args("mydb.proxy-abc123.eu-west-2.rds.amazonaws.com:5432"),
        &no_env,
    )
    .expect("valid");
    match &config.endpoints[0].upstream.auth {
        UpstreamAuth::Iam {
            region,
            region_source,
        } => {
            assert_eq!(region, "eu-west-2");
            assert_eq!(*region_source, RegionSource::EndpointName);
        }
        other => panic!("unexpected auth {other:?}"),
    }
    assert_eq!(
        config.endpoints[0].listen,
        vec!["127.0.0.1:5432".parse().expect("addr")]
    );
    assert_eq!(
        config.endpoints[0].upstream.connect_timeout,
        Duration::from_secs(5)
    );
}

#[test]
fn warm_pools_come_from_repeated_flags_or_one_comma_separated_variable() {
    use clap::Parser;
    let endpoint = "mydb.proxy-abc123.eu-west-2.rds.amazonaws.com";
    let parse = |argv: &[&str]| {
        let cli = crate::settings::cli::Cli::try_parse_from(
            ["rds-iam-sidecar", "--upstream", endpoint]
                .iter()
                .chain(argv),
        )
        .expect("flags parse");
        Settings::from_args(cli.run, &no_env)
    };
    let config = parse(&[
        "--min-idle",
        "2",
        "--warm-pool",
        "app@orders?application_name=api",
        "--warm-pool",
        "app@orders,app@billing",
    ])
    .expect("valid");
    let specs: Vec<String> = config.endpoints[0]
        .warm_pools
        .iter()
        .map(PoolKey::spec)
        .collect();
    assert_eq!(
        specs,
        [
            "app@orders?application_name=api",
            "app@orders",
            "app@billing"
        ]
    );
    let err = parse(&["--warm-pool", "app@orders"]).expect_err("no --min-idle");
    assert!(
        err.setting
            .starts_with("--warm-pool (RDS_IAM_SIDECAR_WARM_POOLS)")
    );
    assert!(err.message.contains("--min-idle"), "{err}");
    let err = parse(&[
        "--min-idle",
        "1",
        "--db-user",
        "svc",
        "--warm-pool",
        "app@db",
    ])
    .expect_err("user differs from --db-user");
    assert!(err.message.contains("--db-user"), "{err}");
    let config = parse(&["--min-idle", "1", "--db-user", "svc", "--warm-pool", "db"])
        .expect("the user defaults to --db-user");
    assert_eq!(config.endpoints[0].warm_pools[0].to_string(), "svc@db");
}

#[test]
fn iam_with_tls_disabled_is_refused() {
    let mut a = args("mydb.proxy-abc123.eu-west-2.rds.amazonaws.com:5432");
    a.endpoint.tls_mode = Some(TlsMode::Disable);
    let err = Settings::from_args(a, &no_env).expect_err("must fail");
    assert!(
        err.setting
            .starts_with("--tls-mode (RDS_IAM_SIDECAR_TLS_MODE)")
    );
}

#[test]
fn verify_ca_needs_its_own_roots() {
    let mut a = args("mydb.proxy-abc123.eu-west-2.rds.amazonaws.com:5432");
    a.endpoint.tls_mode = Some(TlsMode::VerifyCa);
    let err = Settings::from_args(a, &no_env).expect_err("must fail");
    assert!(err.message.contains("--ca-file"), "{err}");
}

#[test]
fn password_variable_beats_the_files_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        "upstream = \"localhost:5432\"\nauth = \"password\"\ntls-mode = \"disable\"\n\
             password-file = \"/nonexistent/password\"\n",
    )
    .expect("write");
    let a = RunArgs {
        config: Some(path),
        ..RunArgs::default()
    };
    assert!(
        Settings::from_args(a.clone(), &no_env).is_err(),
        "file's password-file used"
    );
    let env = |name: &str| (name == PASSWORD_ENV).then(|| "from-env".to_owned());
    let config = Settings::from_args(a, &env).expect("valid");
    assert!(
        matches!(config.endpoints[0].upstream.auth, UpstreamAuth::Password(ref p) if p.expose() == "from-env")
    );
}

#[test]
fn unknown_region_is_an_error_naming_the_flag() {
    let err = Settings::from_args(args("10.0.0.5:5432"), &no_env).expect_err("must fail");
    assert_eq!(err.setting, "--region (RDS_IAM_SIDECAR_REGION)");
    let env = |name: &str| (name == "AWS_REGION").then(|| "us-west-1".to_owned());
    assert!(Settings::from_args(args("10.0.0.5:5432"), &env).is_ok());
}

#[test]
fn password_mode_reads_the_environment() {
    let mut a = args("localhost:5432");
    a.endpoint.auth = Some(AuthMode::Password);
    a.endpoint.tls_mode = Some(TlsMode::Disable);
    assert!(Settings::from_args(a.clone(), &no_env).is_err());
    let env = |name: &str| (name == PASSWORD_ENV).then(|| "pw".to_owned());
    let config = Settings::from_args(a, &env).expect("valid");
    assert!(
        matches!(config.endpoints[0].upstream.auth, UpstreamAuth::Password(ref p) if p.expose() == "pw")
    );
    assert!(!format!("{config:?}").contains("pw\""));
}

#[test]
fn flags_override_file_and_file_overrides_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        "upstream = \"a.proxy-x.us-east-1.rds.amazonaws.com:5432\"\n\
             connect-timeout = \"2s\"\nlisten = [\"127.0.0.1:6000\"]\n",
    )
    .expect("write");
    let a = RunArgs {
        config: Some(path.clone()),
        endpoint: EndpointArgs {
            connect_timeout: Some("7s".into()),
            ..EndpointArgs::default()
        },
        ..RunArgs::default()
    };
    let config = Settings::from_args(a, &no_env).expect("valid");
    assert_eq!(
        config.endpoints[0].upstream.connect_timeout,
        Duration::from_secs(7)
    );
    assert_eq!(
        config.endpoints[0].listen,
        vec!["127.0.0.1:6000".parse().expect("addr")]
    );

    std::fs::write(&path, "upstreem = \"x\"\n").expect("write");
    let a = RunArgs {
        config: Some(path),
        ..RunArgs::default()
    };
    let err = Settings::from_args(a, &no_env).expect_err("unknown key");
    assert!(err.message.contains("upstreem"), "{err}");
}

mod shipped_example {
    use super::*;

    /// `config/sidecar.toml` documents every key: it must load and validate.
    #[test]
    fn config_example_loads_into_the_real_struct() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml");
        let file = FileSettings::load(&path).expect("config/sidecar.toml parses");
        assert_eq!(file.upstreams.len(), 1);
        let args = RunArgs {
            config: Some(path),
            ..RunArgs::default()
        };
        Settings::from_args(args, &|_| None).expect("config/sidecar.toml validates");
    }
}

mod several_endpoints {
    use super::*;

    const RW: &str = "rw.proxy-abc.us-east-1.rds.amazonaws.com:5432";
    const RO: &str = "ro.endpoint.proxy-abc.us-east-1.rds.amazonaws.com:5432";

    fn from(argv: &[&str]) -> Result<Settings, ConfigError> {
        use clap::Parser;
        let cli = crate::settings::cli::Cli::try_parse_from(
            std::iter::once("rds-iam-sidecar").chain(argv.iter().copied()),
        )
        .expect("flags parse");
        Settings::from_args(cli.run, &|_| None)
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, text).expect("write");
        let flag = format!("--config={}", path.display());
        (dir, flag)
    }

    #[test]
    fn flags_beat_a_files_endpoint_table_and_an_endpoints_own_flag_beats_both() {
        let (_dir, config) = file(&format!(
            "pool-size = 3\n[[upstream]]\nendpoint = \"{RW}\"\npool-size = 4\nmin-idle = 1\n\
             [[upstream]]\nendpoint = \"{RO}\"\n"
        ));
        let settings = from(&[&config]).expect("valid");
        assert_eq!(
            settings.endpoints[0].pool.size, 4,
            "the table beats the file"
        );
        assert_eq!(settings.endpoints[1].pool.size, 3);
        let settings = from(&[&config, "--pool-size=9"]).expect("valid");
        assert_eq!(
            settings.endpoints[0].pool.size, 9,
            "a flag beats the file's table"
        );
        assert_eq!(
            settings.endpoints[0].pool.min_idle, 1,
            "the table's other keys stay"
        );
        let own = format!("--upstream={RW}?pool-size=11");
        let settings = from(&[&config, "--pool-size=9", &own]).expect("valid");
        assert_eq!(
            settings.endpoints.len(),
            1,
            "--upstream picks the endpoints"
        );
        assert_eq!(settings.endpoints[0].pool.size, 11);
        assert_eq!(
            settings.endpoints[0].pool.min_idle, 1,
            "--upstream naming a file's endpoint keeps its table"
        );
    }

    #[test]
    fn errors_name_the_endpoint_whether_its_own_key_or_a_shared_flag_failed() {
        let own = format!("--upstream={RW},{RO}?min-idle=30");
        let err = from(&[&own]).expect_err("min-idle over pool-size");
        assert_eq!(err.setting, format!("--upstream {RO}: min-idle"));
        let err = from(&[&format!("--upstream={RW},{RO}"), "--tls-mode=disable"])
            .expect_err("IAM without TLS");
        assert_eq!(err.setting, "--tls-mode (RDS_IAM_SIDECAR_TLS_MODE)");
        assert!(
            err.message.starts_with(&format!("for upstream {RW}: ")),
            "{err}"
        );
    }

    #[test]
    fn endpoints_cannot_share_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = format!("--unix-socket={}", dir.path().display());
        let upstream = format!("--upstream={RW},{RO}?listen=127.0.0.2:5432");
        let err = from(&[&socket, &upstream]).expect_err("same .s.PGSQL.5432");
        assert_eq!(err.setting, format!("--upstream {RO}: unix-socket"));
        let upstream = format!("--upstream={RW},{RO}");
        let settings = from(&[&socket, &upstream]).expect("5432 and 5433");
        assert_eq!(settings.endpoints[1].listen[0].port(), 5433);
    }
}

#[test]
fn worker_threads_come_from_the_flag_else_the_file_else_one() {
    assert_eq!(worker_threads(&args("db:5432")), Ok(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, "worker-threads = 3\n").expect("write");
    let mut from_file = args("db:5432");
    from_file.config = Some(path);
    assert_eq!(worker_threads(&from_file), Ok(3));
    from_file.process.worker_threads = Some(2);
    assert_eq!(worker_threads(&from_file), Ok(2));
    from_file.process.worker_threads = Some(0);
    let error = worker_threads(&from_file).expect_err("0 threads");
    assert_eq!(
        error.setting,
        "--worker-threads (RDS_IAM_SIDECAR_WORKER_THREADS)"
    );
}
