//! How a setting's value may be written in a TOML file or an endpoint's `?key=value` list: a
//! duration or a count as text or as a bare number, a list as one text or an array. Used by the
//! `deserialize_with` attributes of [`super::args`].

use serde::{Deserialize, Deserializer};

/// A value written as text or as a bare number (`connect-timeout = 5` is 5 seconds), as text.
pub(super) fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<toml::Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(toml::Value::String(text)) => Ok(Some(text)),
        Some(toml::Value::Integer(n)) => Ok(Some(n.to_string())),
        Some(toml::Value::Float(x)) => Ok(Some(x.to_string())),
        Some(other) => Err(D::Error::custom(format!(
            "expected text or a number, found {}",
            other.type_str()
        ))),
    }
}

/// A number, or text holding one (an endpoint's `?pool-size=10` arrives as text).
pub(super) fn number<'de, D, N>(deserializer: D) -> Result<Option<N>, D::Error>
where
    D: Deserializer<'de>,
    N: std::str::FromStr,
{
    match text(deserializer)? {
        None => Ok(None),
        Some(text) => text.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("'{text}' is not a whole number in range"))
        }),
    }
}

/// One text or a list of them.
pub(super) fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    let texts = |values: Vec<toml::Value>| {
        values
            .into_iter()
            .map(|value| match value {
                toml::Value::String(text) => Ok(text),
                other => Err(D::Error::custom(format!(
                    "expected text, found {}",
                    other.type_str()
                ))),
            })
            .collect()
    };
    match toml::Value::deserialize(deserializer)? {
        toml::Value::Array(values) => texts(values),
        one => texts(vec![one]),
    }
}
