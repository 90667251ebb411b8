//! Who a bad setting is blamed on in its error: the endpoint and key when the endpoint's own
//! settings set it, else the flag (and, with several endpoints, which endpoint it hit); with
//! the value checks every endpoint setting shares (durations).

use std::time::Duration;

use toml::Table;

use super::duration::parse_duration;
use super::{ConfigError, key_of_flag};

/// Names a setting in an error: the endpoint and key when the endpoint set it itself, else
/// the flag and its variable.
pub(super) struct Blame<'a> {
    pub address: &'a str,
    /// The keys the endpoint's own settings decided.
    pub own: &'a Table,
    /// Whether there are several endpoints (then a shared flag's error says which one it hit).
    pub several: bool,
}

impl Blame<'_> {
    pub fn error(&self, flag: &str, message: impl Into<String>) -> ConfigError {
        let key = key_of_flag(flag);
        if self.own.contains_key(key) {
            ConfigError {
                setting: format!("--upstream {}: {key}", self.address),
                message: message.into(),
            }
        } else if self.several {
            ConfigError::new(
                flag,
                format!("for upstream {}: {}", self.address, message.into()),
            )
        } else {
            ConfigError::new(flag, message)
        }
    }

    fn duration(
        &self,
        flag: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match text {
            Some(text) => parse_duration(text).map_err(|e| self.error(flag, e)),
            None => Ok(default),
        }
    }

    /// A duration from zero up to `most`.
    pub(super) fn bounded_duration(
        &self,
        flag: &str,
        text: Option<&str>,
        default: Duration,
        most: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(flag, text, default)?;
        if value > most {
            let most = humantime::format_duration(most);
            return Err(self.error(flag, format!("must be at most {most}")));
        }
        Ok(value)
    }

    pub(super) fn positive_duration(
        &self,
        flag: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(flag, text, default)?;
        if value.is_zero() {
            return Err(self.error(flag, "must be more than 0"));
        }
        Ok(value)
    }
}
