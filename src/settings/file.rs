//! Where settings come from besides flags: the TOML file (`--config`) and an endpoint's own
//! settings, written after its address (`HOST:PORT?pool-size=10&listen=...`) or as a table of
//! the file's `[[upstream]]` array. Keys are the flags' names, checked against the flags
//! themselves so that a typo is an error, never a silently ignored line.

use std::collections::BTreeSet;
use std::path::Path;

use clap::{Args, Command};
use percent_encoding::percent_decode_str;
use toml::{Table, Value};

use super::args::{EndpointArgs, ProcessArgs};

/// One `--upstream`: the endpoint's address and the settings it sets for itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamSpec {
    /// HOST:PORT as written.
    pub address: String,
    /// Its own settings, keyed like the flags (`pool-size`), over the shared ones.
    pub own: Table,
}

/// The TOML file: the endpoints it names and the settings it gives everyone.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub upstreams: Vec<UpstreamSpec>,
    pub endpoint: EndpointArgs,
    pub process: ProcessArgs,
}

impl FileSettings {
    /// Reads and checks `path`; the error names the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut table: Table = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
        let upstreams = match table.remove("upstream") {
            None => Vec::new(),
            Some(value) => upstream_entries(value)?,
        };
        let keys = Keys::of_flags();
        if let Some(key) = table.keys().find(|key| !keys.known(key)) {
            return Err(format!("unknown key '{key}' (keys are the flags' names)"));
        }
        if table
            .get("listen")
            .is_some_and(|listen| listen.as_array().is_some_and(Vec::is_empty))
        {
            return Err("listen: needs at least one address".to_owned());
        }
        check_each_key::<EndpointArgs>(&table)?;
        check_each_key::<ProcessArgs>(&table)?;
        let endpoint = deserialize(&table)?;
        let process = deserialize(&table)?;
        Ok(Self {
            upstreams,
            endpoint,
            process,
        })
    }
}

/// `upstream = "HOST:PORT"`, a list of them, or `[[upstream]]` tables with an `endpoint` key.
fn upstream_entries(value: Value) -> Result<Vec<UpstreamSpec>, String> {
    let entries = match value {
        Value::Array(entries) => entries,
        single => vec![single],
    };
    entries
        .into_iter()
        .map(|entry| match entry {
            Value::String(text) => UpstreamSpec::parse(&text),
            Value::Table(table) => UpstreamSpec::from_table(table),
            other => Err(format!(
                "upstream: expected \"HOST:PORT\" or [[upstream]] tables, found {}",
                other.type_str()
            )),
        })
        .collect()
}

impl UpstreamSpec {
    /// `HOST:PORT` or `HOST:PORT?key=value&key=value` (values percent-encoded where needed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let Some((address, query)) = text.split_once('?') else {
            return Ok(Self {
                address: text.to_owned(),
                own: Table::new(),
            });
        };
        let mut own = Table::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            // A warm pool's spec is taken as written (as the "new pool" log line shows it):
            // it is percent-decoded once, by the pool key's own parser.
            let value = if key == "warm-pool" || key == "warm-pools" {
                Value::String(value.to_owned())
            } else {
                Value::String(decode(value)?)
            };
            match own.get_mut(&key) {
                Some(Value::Array(values)) => values.push(value),
                Some(first) => *first = Value::Array(vec![first.clone(), value]),
                None => {
                    own.insert(key, value);
                }
            }
        }
        Self::checked(address, own)
    }

    /// An `[[upstream]]` table: `endpoint = "HOST:PORT"` and the endpoint's own settings.
    fn from_table(mut table: Table) -> Result<Self, String> {
        let address = match table.remove("endpoint") {
            Some(Value::String(address)) => address,
            _ => return Err("[[upstream]]: each needs endpoint = \"HOST:PORT\"".to_owned()),
        };
        Self::checked(&address, table)
    }

    fn checked(address: &str, mut own: Table) -> Result<Self, String> {
        if let Some(spelled) = own.remove("warm-pool") {
            own.insert("warm-pools".to_owned(), spelled);
        }
        let keys = Keys::of_flags();
        if let Some(key) = own.keys().find(|key| !keys.endpoint.contains(key.as_str())) {
            let why = if keys.known(key) {
                "is shared by the whole process, not set per endpoint"
            } else {
                "is not a setting"
            };
            return Err(format!("upstream {address}: '{key}' {why}"));
        }
        // Checked now, so a bad value is reported before anything else.
        check_each_key::<EndpointArgs>(&own).map_err(|e| format!("upstream {address}: {e}"))?;
        Ok(Self {
            address: address.trim().to_owned(),
            own,
        })
    }
}

fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| format!("'{text}' is not UTF-8 once percent-decoded"))
}

/// A table of settings as the struct of one level; keys of the other level are ignored.
pub fn deserialize<T: serde::de::DeserializeOwned>(table: &Table) -> Result<T, String> {
    Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_owned())
}

/// Each key of `table` that belongs to `T`, read alone, so an error names its key:
/// `pool-size: 'ten' is not a whole number`.
fn check_each_key<T: serde::de::DeserializeOwned>(table: &Table) -> Result<(), String> {
    for (key, value) in table {
        let alone = Table::from_iter([(key.clone(), value.clone())]);
        deserialize::<T>(&alone).map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(())
}

/// `base` with every setting `top` holds put over it.
pub fn overlay<T>(base: &T, top: &Table) -> Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut merged = Table::try_from(base).map_err(|e| e.to_string())?;
    merged.extend(top.iter().map(|(key, value)| (key.clone(), value.clone())));
    deserialize(&merged)
}

/// The settings `args` holds (flags and variables given), as a table to put over another.
pub fn as_table<T: serde::Serialize>(args: &T) -> Result<Table, String> {
    Table::try_from(args).map_err(|e| e.to_string())
}

/// The keys of one level: each flag's variable name without its prefix, in kebab case
/// (`RDS_IAM_SIDECAR_WARM_POOLS` is `warm-pools`), so the keys cannot drift from the flags.
fn keys_of<A: Args>() -> BTreeSet<String> {
    A::augment_args(Command::new("keys"))
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| {
            env.to_string_lossy()
                .trim_start_matches("RDS_IAM_SIDECAR_")
                .to_ascii_lowercase()
                .replace('_', "-")
        })
        .collect()
}

/// The keys of both levels, from the flags themselves.
struct Keys {
    endpoint: BTreeSet<String>,
    process: BTreeSet<String>,
}

impl Keys {
    fn of_flags() -> Self {
        Self {
            endpoint: keys_of::<EndpointArgs>(),
            process: keys_of::<ProcessArgs>(),
        }
    }

    fn known(&self, key: &str) -> bool {
        self.endpoint.contains(key) || self.process.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_with_its_own_settings() {
        let spec = UpstreamSpec::parse(
            "ro.example.com:5432?listen=127.0.0.1:6432&pool-size=10&warm-pool=a@b%3Fx%3Dy&warm-pool=c@d&reset-query=select+1%2B1",
        )
        .expect("parses");
        assert_eq!(spec.address, "ro.example.com:5432");
        let args: EndpointArgs = deserialize(&spec.own).expect("valid");
        assert_eq!(args.listen, ["127.0.0.1:6432"]);
        assert_eq!(args.pool_size, Some(10));
        // Warm pool specs stay as written (their own parser decodes them); '+' is a plus.
        assert_eq!(args.warm_pools, ["a@b%3Fx%3Dy", "c@d"]);
        assert_eq!(args.reset_query.as_deref(), Some("select+1+1"));
        assert_eq!(
            UpstreamSpec::parse("db:5432").expect("plain").own,
            Table::new()
        );
    }

    #[test]
    fn unknown_shared_and_bad_keys_name_the_endpoint() {
        let err = UpstreamSpec::parse("db:5432?pool-sise=1").expect_err("typo");
        assert!(
            err.contains("upstream db:5432") && err.contains("pool-sise"),
            "{err}"
        );
        let err = UpstreamSpec::parse("db:5432?admin-listen=off").expect_err("shared");
        assert!(err.contains("whole process"), "{err}");
        let err = UpstreamSpec::parse("db:5432?pool-size=ten").expect_err("not a number");
        assert!(err.contains("pool-size: 'ten'"), "{err}");
        let err = FileSettings::parse("pool-mode = \"sesion\"\n").expect_err("bad variant");
        assert!(err.starts_with("pool-mode: "), "{err}");
        let err = FileSettings::parse("pool-size = true\n").expect_err("bad type");
        assert!(err.starts_with("pool-size: "), "{err}");
    }

    #[test]
    fn the_file_takes_one_upstream_a_list_or_tables() {
        let file = FileSettings::parse(
            "pool-size = 5\nconnect-timeout = 2\n[[upstream]]\nendpoint = \"a:5432\"\n\
             listen = \"127.0.0.1:7000\"\n[[upstream]]\nendpoint = \"b:5432\"\npool-mode = \"transaction\"\n",
        )
        .expect("parses");
        assert_eq!(file.endpoint.pool_size, Some(5));
        assert_eq!(file.endpoint.connect_timeout.as_deref(), Some("2"));
        let addresses: Vec<_> = file.upstreams.iter().map(|u| u.address.as_str()).collect();
        assert_eq!(addresses, ["a:5432", "b:5432"]);
        assert!(file.upstreams[1].own.contains_key("pool-mode"));
        let file =
            FileSettings::parse("upstream = [\"a:1\", \"b:2?pool-size=3\"]\n").expect("list");
        assert_eq!(file.upstreams.len(), 2);
        let err = FileSettings::parse("listen = []\n").expect_err("no address");
        assert!(err.starts_with("listen: "), "{err}");
        let err = FileSettings::parse("upstreem = \"x\"\n").expect_err("typo");
        assert!(err.contains("upstreem"), "{err}");
    }

    #[test]
    fn overlay_puts_the_top_over_the_base() {
        let base = EndpointArgs {
            pool_size: Some(5),
            db_user: Some("app".into()),
            ..EndpointArgs::default()
        };
        let top = as_table(&EndpointArgs {
            pool_size: Some(9),
            ..EndpointArgs::default()
        })
        .expect("table");
        let merged = overlay(&base, &top).expect("merged");
        assert_eq!(merged.pool_size, Some(9));
        assert_eq!(merged.db_user.as_deref(), Some("app"));
    }
}
