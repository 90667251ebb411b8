//! What makes two clients share upstream connections: the upstream database user, the database
//! and the other startup parameters, as the client sent them (the connector decides which go in
//! the startup packet and which are applied after login). A key also has a
//! written form, `user@database?name=value&...`, which `--warm-pool` takes and the log shows
//! for each new pool.

use std::fmt;
use std::hash::{Hash, Hasher};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

/// What the written form escapes: its own separators, the comma that separates specs in
/// `RDS_IAM_SIDECAR_WARM_POOLS`, `%`, quotes and whitespace.
const SPEC_ESCAPED: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b'&')
    .add(b'=')
    .add(b'?')
    .add(b',')
    .add(b'@')
    .add(b'"')
    .add(b'\'');

/// Identifies one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolKey {
    pub user: String,
    pub database: String,
    /// The other forwarded startup parameters, sorted by name.
    pub parameters: Vec<(String, String)>,
}

impl PoolKey {
    pub fn new(
        user: impl Into<String>,
        database: impl Into<String>,
        mut parameters: Vec<(String, String)>,
    ) -> Self {
        parameters.sort();
        Self {
            user: user.into(),
            database: database.into(),
            parameters,
        }
    }

    /// The startup parameters for an upstream login of this pool.
    pub fn startup_parameters(&self) -> Vec<(&str, &str)> {
        let mut all = vec![
            ("user", self.user.as_str()),
            ("database", self.database.as_str()),
        ];
        all.extend(
            self.parameters
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        all
    }
}

impl Hash for PoolKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

/// A pool key read in place (from a client's startup packet), to look its pool up without
/// building a [`PoolKey`]: equal to a key, it hashes as that key does. `parameters` are the
/// forwarded ones, sorted by name, each name once (as [`PoolKey::new`] keeps them).
#[derive(Clone)]
pub struct KeyView<'a, P> {
    pub user: &'a str,
    pub database: &'a str,
    pub parameters: P,
}

impl<'a, P: Iterator<Item = (&'a str, &'a str)> + Clone> KeyView<'a, P> {
    /// The key itself (for a new pool).
    pub fn to_key(&self) -> PoolKey {
        PoolKey {
            user: self.user.to_owned(),
            database: self.database.to_owned(),
            parameters: self
                .parameters
                .clone()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        }
    }
}

impl<'a, P: Iterator<Item = (&'a str, &'a str)> + Clone> Hash for KeyView<'a, P> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.user.hash(state);
        self.database.hash(state);
        for (name, value) in self.parameters.clone() {
            name.hash(state);
            value.hash(state);
        }
    }
}

impl<'a, P: Iterator<Item = (&'a str, &'a str)> + Clone> hashbrown::Equivalent<PoolKey>
    for KeyView<'a, P>
{
    fn equivalent(&self, key: &PoolKey) -> bool {
        let mut theirs = key.parameters.iter();
        self.user == key.user
            && self.database == key.database
            && self
                .parameters
                .clone()
                .all(|(name, value)| theirs.next().is_some_and(|(n, v)| name == n && value == v))
            && theirs.next().is_none()
    }
}

/// A key's parameters as a [`KeyView`] reads them.
type ParameterRefs<'a> =
    std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&(String, String)) -> (&str, &str)>;

impl PoolKey {
    /// The key as a view (what it hashes as).
    pub fn view(&self) -> KeyView<'_, ParameterRefs<'_>> {
        KeyView {
            user: &self.user,
            database: &self.database,
            parameters: self
                .parameters
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        }
    }

    /// The written form: `user@database`, then `?name=value&...` when the client sent
    /// parameters; each part percent-encoded where it holds a separator.
    pub fn spec(&self) -> String {
        let escape = |text: &str| utf8_percent_encode(text, SPEC_ESCAPED).to_string();
        let mut spec = format!("{}@{}", escape(&self.user), escape(&self.database));
        for (index, (name, value)) in self.parameters.iter().enumerate() {
            spec.push(if index == 0 { '?' } else { '&' });
            spec.push_str(&escape(name));
            spec.push('=');
            spec.push_str(&escape(value));
        }
        spec
    }

    /// The written form for a log line, bounded: past a few parameters or a few hundred
    /// characters, the rest is counted, not shown.
    pub fn spec_for_log(&self) -> String {
        const MOST_PARAMETERS: usize = 8;
        const MOST_CHARS: usize = 400;
        let spec = self.spec();
        if self.parameters.len() <= MOST_PARAMETERS && spec.len() <= MOST_CHARS {
            return spec;
        }
        let shown = Self {
            parameters: self
                .parameters
                .iter()
                .take(MOST_PARAMETERS)
                .cloned()
                .collect(),
            ..self.clone()
        };
        let mut text: String = shown.spec().chars().take(MOST_CHARS).collect();
        text.push_str(&format!(
            " … and {} more parameters",
            self.parameters.len().saturating_sub(MOST_PARAMETERS)
        ));
        text
    }

    /// Reads the written form `[user@]database[?name=value&...]`; the user defaults to
    /// `default_user` (`--db-user`), and must equal it when both are given, since every
    /// upstream login then uses `--db-user`. Parameter names are spelled as the client's driver
    /// sends them (pools are told apart by the exact text).
    pub fn parse_spec(spec: &str, default_user: Option<&str>) -> Result<Self, String> {
        let decode = |text: &str| {
            percent_decode_str(text)
                .decode_utf8()
                .map(|decoded| decoded.into_owned())
                .map_err(|_| format!("'{text}' is not UTF-8 once percent-decoded"))
        };
        let (target, query) = match spec.split_once('?') {
            Some((target, query)) => (target, Some(query)),
            None => (spec, None),
        };
        let (user, database) = match target.rsplit_once('@') {
            Some((user, database)) => (Some(decode(user)?), decode(database)?),
            None => (None, decode(target)?),
        };
        let user = match (user, default_user) {
            (Some(user), Some(forced)) if user != forced => {
                return Err(format!(
                    "user '{user}' differs from --db-user '{forced}', which every upstream \
                     login uses; write '{forced}@{database}' or leave the user out"
                ));
            }
            (Some(user), _) if !user.is_empty() => user,
            (_, Some(forced)) => forced.to_owned(),
            _ => {
                return Err(format!(
                    "'{spec}' names no user: write user@database (or set --db-user)"
                ));
            }
        };
        if database.is_empty() {
            return Err(format!("'{spec}' names no database: write user@database"));
        }
        let mut parameters: Vec<(String, String)> = Vec::new();
        for pair in query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("'{pair}' is not name=value"))?;
            let name = decode(name)?;
            if name.is_empty() || matches!(name.as_str(), "user" | "database") {
                return Err(format!(
                    "'{name}' is not a startup parameter a pool may add (user and database go \
                     before the '?')"
                ));
            }
            if parameters.iter().any(|(seen, _)| *seen == name) {
                return Err(format!("'{name}' is given twice"));
            }
            parameters.push((name, decode(value)?));
        }
        Ok(Self::new(&user, &database, parameters))
    }
}

impl fmt::Display for PoolKey {
    /// `user@database`: what messages and metric labels name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_order_does_not_split_pools() {
        let a = PoolKey::new(
            "u",
            "d",
            vec![
                ("TimeZone".into(), "UTC".into()),
                ("application_name".into(), "x".into()),
            ],
        );
        let b = PoolKey::new(
            "u",
            "d",
            vec![
                ("application_name".into(), "x".into()),
                ("TimeZone".into(), "UTC".into()),
            ],
        );
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "u@d");
        assert_eq!(a.startup_parameters()[0], ("user", "u"));
    }

    /// A view finds the pool of the key it equals, and only that one: what a login looks its
    /// pool up with must hash and compare as the key the pool was made with.
    #[test]
    fn a_view_finds_the_pool_of_its_equal_key_and_no_other() {
        let key = |parameters: &[(&str, &str)]| {
            let parameters = parameters
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            PoolKey::new("app", "orders", parameters)
        };
        let mut pools = hashbrown::HashMap::<PoolKey, u32, foldhash::fast::RandomState>::default();
        pools.insert(key(&[]), 0);
        pools.insert(key(&[("application_name", "x")]), 1);
        pools.insert(key(&[("TimeZone", "UTC"), ("application_name", "x")]), 2);
        let find = |user: &str, database: &str, parameters: &[(&str, &str)]| {
            pools
                .get(&KeyView {
                    user,
                    database,
                    parameters: parameters.iter().copied(),
                })
                .copied()
        };
        assert_eq!(find("app", "orders", &[]), Some(0));
        assert_eq!(find("app", "orders", &[("application_name", "x")]), Some(1));
        assert_eq!(
            find(
                "app",
                "orders",
                &[("TimeZone", "UTC"), ("application_name", "x")]
            ),
            Some(2)
        );
        for other in [
            find("app", "orders", &[("application_name", "y")]),
            find("app", "orders", &[("application_nam", "x")]),
            find("app", "orders", &[("TimeZone", "UTC")]),
            find("app", "orders", &[("application_name", "x"), ("zone", "")]),
            find("ap", "porders", &[]),
            find("app", "order", &[]),
        ] {
            assert_eq!(other, None);
        }
        let view = KeyView {
            user: "app",
            database: "orders",
            parameters: [("application_name", "x")].into_iter(),
        };
        assert_eq!(view.to_key(), key(&[("application_name", "x")]));
    }

    #[test]
    fn the_written_form_reads_back_as_the_same_key() {
        let key = PoolKey::new(
            "app@corp",
            "orders",
            vec![
                ("application_name".into(), "PostgreSQL JDBC Driver".into()),
                ("options".into(), "-c search_path=a,b&c".into()),
                ("DateStyle".into(), "ISO".into()),
            ],
        );
        let spec = key.spec();
        assert_eq!(
            spec,
            "app%40corp@orders?DateStyle=ISO&application_name=PostgreSQL%20JDBC%20Driver\
             &options=-c%20search_path%3Da%2Cb%26c"
        );
        assert_eq!(PoolKey::parse_spec(&spec, None), Ok(key.clone()));
        assert_eq!(PoolKey::parse_spec(&spec, Some("app@corp")), Ok(key));
        // Raw spaces and an unescaped '@' in the user are read too.
        let loose =
            PoolKey::parse_spec("me@corp.com@db?application_name=my app", None).expect("loose");
        assert_eq!(loose.user, "me@corp.com");
        assert_eq!(loose.database, "db");
        assert_eq!(
            loose.parameters,
            vec![("application_name".into(), "my app".into())]
        );
    }

    #[test]
    fn the_logged_form_is_bounded() {
        let many = (0..1000)
            .map(|i| (format!("param_{i}"), "x".repeat(50)))
            .collect();
        let key = PoolKey::new("u", "d", many);
        let logged = key.spec_for_log();
        assert!(logged.len() < 600, "{} characters", logged.len());
        assert!(logged.ends_with("and 992 more parameters"), "{logged}");
        let few = PoolKey::new("u", "d", vec![("TimeZone".into(), "UTC".into())]);
        assert_eq!(few.spec_for_log(), few.spec());
    }

    #[test]
    fn written_forms_that_name_no_usable_pool_are_refused() {
        let err = |spec: &str, user: Option<&str>| PoolKey::parse_spec(spec, user).expect_err(spec);
        assert_eq!(
            PoolKey::parse_spec("orders", Some("svc")).map(|k| k.to_string()),
            Ok("svc@orders".to_owned())
        );
        assert!(err("orders", None).contains("names no user"));
        assert!(err("other@orders", Some("svc")).contains("differs from --db-user"));
        assert!(err("app@", None).contains("names no database"));
        assert!(err("app@db?user=x", None).contains("not a startup parameter"));
        assert!(err("app@db?TimeZone", None).contains("not name=value"));
        assert!(err("app@db?TimeZone=UTC&TimeZone=UTC", None).contains("twice"));
        assert!(err("app@db%FF", None).contains("UTF-8"));
    }
}
