//! Which AWS region signs the token: `--region`, else the region inside an
//! `*.REGION.rds.amazonaws.com(.cn)` endpoint name, else `AWS_REGION` / `AWS_DEFAULT_REGION`.

/// Reads an environment variable; injectable so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where the region was found (reported by `doctor` and at start-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    Flag,
    EndpointName,
    Environment,
}

/// The region inside an RDS endpoint name, e.g. `us-east-1` from
/// `mydb.proxy-abc.us-east-1.rds.amazonaws.com`.
pub fn region_from_host(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host
        .strip_suffix(".rds.amazonaws.com")
        .or_else(|| host.strip_suffix(".rds.amazonaws.com.cn"))?;
    let region = rest.rsplit('.').next()?;
    let looks_like_region = region.split('-').count() >= 3
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    looks_like_region.then(|| region.to_owned())
}

/// Resolves the signing region in the documented order.
pub fn resolve_region(
    flag: Option<&str>,
    host: &str,
    env: EnvLookup<'_>,
) -> Option<(String, RegionSource)> {
    if let Some(region) = flag.map(str::trim).filter(|r| !r.is_empty()) {
        return Some((region.to_owned(), RegionSource::Flag));
    }
    if let Some(region) = region_from_host(host) {
        return Some((region, RegionSource::EndpointName));
    }
    env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .map(|r| (r, RegionSource::Environment))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rds_names() {
        assert_eq!(
            region_from_host("mydb.proxy-abc123.us-east-1.rds.amazonaws.com").as_deref(),
            Some("us-east-1")
        );
        assert_eq!(
            region_from_host("c.cluster-ro-xyz.eu-central-1.rds.amazonaws.com.").as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(
            region_from_host("db.abc.cn-north-1.rds.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(region_from_host("db.example.com"), None);
        assert_eq!(region_from_host("10.1.2.3"), None);
    }

    #[test]
    fn order_is_flag_then_name_then_env() {
        let env = |n: &str| (n == "AWS_REGION").then(|| "ap-south-1".to_owned());
        let host = "db.proxy-a.us-west-2.rds.amazonaws.com";
        assert_eq!(
            resolve_region(Some("eu-west-1"), host, &env),
            Some(("eu-west-1".into(), RegionSource::Flag))
        );
        assert_eq!(
            resolve_region(None, host, &env),
            Some(("us-west-2".into(), RegionSource::EndpointName))
        );
        assert_eq!(
            resolve_region(None, "localhost", &env),
            Some(("ap-south-1".into(), RegionSource::Environment))
        );
        assert_eq!(resolve_region(None, "localhost", &|_| None), None);
    }
}
