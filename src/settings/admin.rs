//! Where the subcommands that talk to a running sidecar (`healthcheck`, `wait`, `shutdown`)
//! find its admin endpoint: read the way `run` reads its own setting in the same container.

/// The admin address to use: `--admin` / RDS_IAM_SIDECAR_ADMIN_URL, else the sidecar's own
/// setting as `run` would read it in the same container: RDS_IAM_SIDECAR_ADMIN_LISTEN, else
/// `admin-listen` in the file RDS_IAM_SIDECAR_CONFIG names (a wildcard address is reached
/// through loopback), else the default.
pub fn admin_address(flag: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    if let Some(url) = flag {
        return url.to_owned();
    }
    let from_file = || {
        let path = env("RDS_IAM_SIDECAR_CONFIG")?;
        super::FileSettings::load(std::path::Path::new(&path))
            .ok()?
            .process
            .admin_listen
    };
    match env("RDS_IAM_SIDECAR_ADMIN_LISTEN").or_else(from_file) {
        Some(listen) if !listen.eq_ignore_ascii_case("off") => listen
            .replacen("0.0.0.0:", "127.0.0.1:", 1)
            .replacen("[::]:", "[::1]:", 1),
        _ => super::DEFAULT_ADMIN_LISTEN.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_address_prefers_the_flag_then_the_sidecars_own_setting() {
        let none = |_: &str| None;
        assert_eq!(admin_address(Some("http://h:1"), &none), "http://h:1");
        assert_eq!(admin_address(None, &none), "127.0.0.1:9090");
        let wildcard = |_: &str| Some("0.0.0.0:9191".to_owned());
        assert_eq!(admin_address(None, &wildcard), "127.0.0.1:9191");
        let off = |_: &str| Some("off".to_owned());
        assert_eq!(admin_address(None, &off), "127.0.0.1:9090");
    }

    #[test]
    fn admin_address_follows_the_config_file_the_sidecar_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.toml");
        std::fs::write(&path, "admin-listen = \"0.0.0.0:9191\"\n").expect("write");
        let path = path.to_string_lossy().into_owned();
        let env = |name: &str| (name == "RDS_IAM_SIDECAR_CONFIG").then(|| path.clone());
        assert_eq!(admin_address(None, &env), "127.0.0.1:9191");
        // The variable wins over the file, as for `run`.
        let both = |name: &str| match name {
            "RDS_IAM_SIDECAR_CONFIG" => Some(path.clone()),
            "RDS_IAM_SIDECAR_ADMIN_LISTEN" => Some("127.0.0.1:9292".to_owned()),
            _ => None,
        };
        assert_eq!(admin_address(None, &both), "127.0.0.1:9292");
    }
}
