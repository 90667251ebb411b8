//! How the sources of an endpoint's settings stack up, most specific last:
//! the file's shared keys < the file's table for that endpoint < flags and variables <
//! the endpoint's own `?key=value` on the command line (or in the variable). So flags beat the
//! file, as everywhere, and an endpoint's own setting beats a shared one from the same source.
//! `listen` is not layered per endpoint: the shared value is the first endpoint's, and the next
//! ones take the following ports.

use toml::Table;

use super::ConfigError;
use super::args::EndpointArgs;
use super::file::{UpstreamSpec, as_table, overlay};

/// One endpoint and what each source says about it alone.
#[derive(Debug, Clone)]
pub(super) struct EndpointSource {
    pub address: String,
    /// Its `[[upstream]]` table (or `?key=value` in the file's `upstream`).
    pub file_own: Table,
    /// Its `?key=value` in `--upstream` / `RDS_IAM_SIDECAR_UPSTREAM`.
    pub flag_own: Table,
}

/// The shared layers: the file's keys and the flags' (with the environment folded in).
pub(super) struct Layers {
    file_shared: EndpointArgs,
    flags_shared: Table,
    /// The first endpoint's listen addresses as written (flag, else file), maybe empty.
    pub listen: Vec<String>,
}

impl Layers {
    pub fn new(mut file_shared: EndpointArgs, flags: &EndpointArgs) -> Result<Self, ConfigError> {
        let mut flags_shared = as_table(flags).map_err(|e| ConfigError::new("--config", e))?;
        let listen = if flags.listen.is_empty() {
            std::mem::take(&mut file_shared.listen)
        } else {
            file_shared.listen.clear();
            flags.listen.clone()
        };
        flags_shared.remove("listen");
        Ok(Self {
            file_shared,
            flags_shared,
            listen,
        })
    }

    /// The endpoint's settings from every layer, and the keys its own layers decided (for
    /// errors naming the endpoint rather than a flag).
    pub fn merge(&self, source: &EndpointSource) -> Result<(EndpointArgs, Table), ConfigError> {
        let failed = |e: String| ConfigError::new("--upstream", format!("{}: {e}", source.address));
        let file_level = overlay(&self.file_shared, &source.file_own).map_err(failed)?;
        let shared = overlay(&file_level, &self.flags_shared).map_err(failed)?;
        let merged = overlay(&shared, &source.flag_own).map_err(failed)?;
        let mut decided_by_endpoint = source.flag_own.clone();
        for (key, value) in &source.file_own {
            if !self.flags_shared.contains_key(key) {
                decided_by_endpoint.insert(key.clone(), value.clone());
            }
        }
        Ok((merged, decided_by_endpoint))
    }
}

/// The endpoints: those `--upstream` names (flags or variable), each keeping the file's table of
/// the same address under its own settings; without `--upstream`, the file's.
pub(super) fn endpoint_sources(
    flags: &[String],
    from_file: Vec<UpstreamSpec>,
) -> Result<Vec<EndpointSource>, ConfigError> {
    let named: Vec<UpstreamSpec> = flags
        .iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| UpstreamSpec::parse(text).map_err(|e| ConfigError::new("--upstream", e)))
        .collect::<Result<_, _>>()?;
    let sources: Vec<EndpointSource> = if named.is_empty() {
        from_file
            .into_iter()
            .map(|spec| EndpointSource {
                address: spec.address,
                file_own: spec.own,
                flag_own: Table::new(),
            })
            .collect()
    } else {
        named
            .into_iter()
            .map(|spec| EndpointSource {
                file_own: from_file
                    .iter()
                    .find(|f| f.address == spec.address)
                    .map(|f| f.own.clone())
                    .unwrap_or_default(),
                address: spec.address,
                flag_own: spec.own,
            })
            .collect()
    };
    if sources.is_empty() {
        return Err(ConfigError::new(
            "--upstream",
            "is required: the RDS Proxy or database endpoint, e.g. \
             mydb.proxy-abc123.us-east-1.rds.amazonaws.com:5432",
        ));
    }
    Ok(sources)
}
