//! Every file in `config/` is parsed here, so the examples cannot rot: the TOML loads into the
//! real configuration, the ECS task definition names real flags and subcommands and the
//! ports the sidecar really uses, the IAM policy grants `rds-db:connect` on well-formed
//! dbuser ARNs, and the Prometheus configuration scrapes the admin endpoint's /metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use rds_iam_sidecar::settings::cli::{Cli, Command};
use rds_iam_sidecar::settings::{FileSettings, Settings};
use serde_json::Value;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(config_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn json(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"))
}

/// The environment variables the `run` flags read.
fn flag_variables() -> BTreeSet<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_file_in_config_is_checked_here() {
    let mut names: Vec<String> = std::fs::read_dir(config_dir())
        .expect("config/")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ecs-task-definition.json",
            "iam-policy.json",
            "prometheus.yml",
            "rds-iam-sidecar.service",
            "sidecar.toml"
        ],
        "a new file in config/ needs a test here"
    );
}

#[test]
fn sidecar_toml_sets_every_key_and_loads_into_the_real_config() {
    let file = FileSettings::load(&config_dir().join("sidecar.toml")).expect("sidecar.toml loads");
    // Every setting appears in the example: the TOML keys are the flags' names.
    let text = read("sidecar.toml");
    for variable in flag_variables() {
        let key = variable
            .trim_start_matches("RDS_IAM_SIDECAR_")
            .to_ascii_lowercase()
            .replace('_', "-");
        if key == "config" || key == "password" || key == "admin-url" {
            continue; // not file settings: the file itself, the secret, a subcommand's flag
        }
        assert!(
            text.lines().any(|line| line
                .trim_start_matches("# ")
                .starts_with(&format!("{key} ="))),
            "sidecar.toml does not show `{key}`"
        );
    }
    drop(file);
    let args = Cli::try_parse_from([
        "rds-iam-sidecar",
        "--config",
        config_dir().join("sidecar.toml").to_str().expect("utf-8"),
    ])
    .expect("flags parse");
    let config = Settings::from_args(args.run, &|name| {
        (name == "AWS_REGION").then(|| "us-east-1".to_owned())
    })
    .expect("the example is a valid configuration");
    assert_eq!(
        config.admin_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
}

#[test]
fn ecs_task_definition_uses_real_flags_ports_and_health_check() {
    let task = json("ecs-task-definition.json");
    let containers = task["containerDefinitions"]
        .as_array()
        .expect("containerDefinitions");
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "rds-iam-sidecar")
        .expect("a rds-iam-sidecar container");
    let app = containers
        .iter()
        .find(|c| c["name"] != "rds-iam-sidecar")
        .expect("an app container");

    let known = flag_variables();
    let mut env = std::collections::HashMap::new();
    for variable in sidecar["environment"].as_array().expect("environment") {
        let name = variable["name"].as_str().expect("name");
        let value = variable["value"].as_str().expect("value");
        assert!(known.contains(name), "{name} is not a flag's variable");
        env.insert(name.to_owned(), value.to_owned());
    }
    // The environment is a valid configuration: each variable as the flag it stands for.
    let mut argv = vec!["rds-iam-sidecar".to_owned()];
    for (name, value) in &env {
        let flag = name
            .trim_start_matches("RDS_IAM_SIDECAR_")
            .to_ascii_lowercase()
            .replace('_', "-");
        argv.push(format!("--{flag}={value}"));
    }
    let args = Cli::try_parse_from(&argv).expect("the task's variables are flags");
    let config = Settings::from_args(args.run, &|_| None).expect("the task's settings are valid");

    // The metrics port mapping is the admin port; the grace fits in the stop timeout.
    let admin = config.admin_listen.expect("admin endpoint on");
    let ports: Vec<u64> = sidecar["portMappings"]
        .as_array()
        .expect("portMappings")
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(admin.port())),
        "{ports:?} vs {admin}"
    );
    let stop_timeout = sidecar["stopTimeout"].as_u64().expect("stopTimeout");
    assert!(config.lifecycle.shutdown_grace.as_secs() < stop_timeout);

    // The health check runs the real subcommand.
    let command: Vec<&str> = sidecar["healthCheck"]["command"]
        .as_array()
        .expect("healthCheck.command")
        .iter()
        .map(|c| c.as_str().expect("string"))
        .collect();
    assert_eq!(command[0], "CMD");
    assert!(command[1].ends_with("/rds-iam-sidecar"));
    let parsed = Cli::try_parse_from(&command[1..]).expect("the health check command parses");
    let Some(Command::Healthcheck(check)) = parsed.command else {
        panic!("the health check runs `healthcheck`");
    };
    // Liveness: ECS replaces a task whose check fails, and an upstream outage fails every
    // task's readiness at once. Its own timeout leaves room to print the reason.
    assert!(check.live, "the health check asks /livez");
    let own_timeout =
        humantime::parse_duration(check.timeout.as_deref().unwrap_or("5s")).expect("a duration");
    let ecs_timeout = sidecar["healthCheck"]["timeout"].as_u64().expect("timeout");
    assert!(own_timeout.as_secs() < ecs_timeout);
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!(
            "COPY --from=builder /build/target/release/rds-iam-sidecar {}",
            command[1]
        )),
        "the image puts the binary where the health check runs it"
    );
    let quoted: Vec<String> = command[1..].iter().map(|c| format!("\"{c}\"")).collect();
    assert!(
        dockerfile.contains(&format!("CMD [{}]", quoted.join(", "))),
        "the image's HEALTHCHECK runs the same command"
    );

    // The app starts after the sidecar is healthy and reaches it on localhost.
    assert_eq!(app["dependsOn"][0]["containerName"], "rds-iam-sidecar");
    assert_eq!(app["dependsOn"][0]["condition"], "HEALTHY");
    let url = app["environment"][0]["value"]
        .as_str()
        .expect("DATABASE_URL");
    let listen = config.endpoints[0].listen[0];
    assert!(url.contains(&format!("@{listen}/")), "{url} vs {listen}");
}

#[test]
fn iam_policy_grants_connect_on_dbuser_arns() {
    let policy = json("iam-policy.json");
    assert_eq!(policy["Version"], "2012-10-17");
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Effect"], "Allow");
    assert_eq!(statement["Action"], "rds-db:connect");
    let resources = statement["Resource"].as_array().expect("Resource list");
    assert!(!resources.is_empty());
    for arn in resources {
        let arn = arn.as_str().expect("string");
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        assert_eq!(parts.len(), 6, "{arn}");
        assert_eq!(&parts[..3], ["arn", "aws", "rds-db"], "{arn}");
        assert!(
            parts[4].len() == 12 && parts[4].bytes().all(|b| b.is_ascii_digit()),
            "{arn}"
        );
        let (resource_id, user) = parts[5]
            .strip_prefix("dbuser:")
            .and_then(|r| r.split_once('/'))
            .unwrap_or_else(|| panic!("{arn}: dbuser:RESOURCE_ID/USER"));
        assert!(
            ["prx-", "cluster-", "db-"]
                .iter()
                .any(|p| resource_id.starts_with(p)),
            "{arn}: the resource id (not the name) of a proxy, cluster or instance"
        );
        assert!(!user.is_empty(), "{arn}");
    }
}

#[test]
fn prometheus_scrapes_the_admin_endpoint() {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read("prometheus.yml"))
        .expect("prometheus.yml is valid YAML");
    let scrape = &docs[0]["scrape_configs"][0];
    assert_eq!(scrape["metrics_path"].as_str(), Some("/metrics"));
    let target = scrape["static_configs"][0]["targets"][0]
        .as_str()
        .expect("a target");
    assert_eq!(target, rds_iam_sidecar::settings::DEFAULT_ADMIN_LISTEN);
}

#[test]
fn the_systemd_unit_runs_the_app_under_exec_with_real_settings() {
    let text = read("rds-iam-sidecar.service");
    let mut section = String::new();
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        keys.push((section.clone(), key.to_owned(), value.to_owned()));
    }
    let get = |section: &str, key: &str| {
        keys.iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let start = get("Service", "ExecStart");
    assert_eq!(start.len(), 1);
    let words: Vec<&str> = start[0].split_whitespace().collect();
    assert!(words[0].ends_with("rds-iam-sidecar") && words[1] == "exec" && words.contains(&"--"));
    // The flags before `--` and the variables parse as the binary would take them.
    let before: Vec<&str> = words[2..]
        .iter()
        .take_while(|w| **w != "--")
        .copied()
        .collect();
    let args = std::iter::once("rds-iam-sidecar")
        .chain(["exec"])
        .chain(before)
        .chain(["--", "true"]);
    let cli = Cli::try_parse_from(args).expect("ExecStart's flags parse");
    let variables = flag_variables();
    for assignment in get("Service", "Environment") {
        let (name, _) = assignment.split_once('=').expect("NAME=value");
        assert!(
            variables.contains(name),
            "{name} is not a setting's variable"
        );
    }
    drop(cli);
    assert_eq!(
        get("Service", "KillMode"),
        ["mixed"],
        "SIGTERM to the sidecar first"
    );
    assert_eq!(get("Install", "WantedBy"), ["multi-user.target"]);
}
