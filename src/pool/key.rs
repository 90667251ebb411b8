//! What makes two clients share upstream connections: the upstream database user, the database
//! and the startup parameters RDS Proxy accepts, as the client sent them.

use std::fmt;

/// Identifies one pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: String,
    pub database: String,
    /// The other forwarded startup parameters, sorted by name.
    pub parameters: Vec<(String, String)>,
}

impl PoolKey {
    pub fn new(user: &str, database: &str, mut parameters: Vec<(String, String)>) -> Self {
        parameters.sort();
        Self {
            user: user.to_owned(),
            database: database.to_owned(),
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
}
