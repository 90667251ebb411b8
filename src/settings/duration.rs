//! Durations in flags, environment and TOML: humantime's forms (`5s`, `250ms`, `2m`, `1h 30m`,
//! `1.5s`) or a bare number of seconds (`5`, as the variables of older deployments say).

use std::time::Duration;

/// The longest duration any setting takes.
const MAX: Duration = Duration::from_secs(86_400 * 365);

/// Parses `5s`, `250ms`, `2m`, `1h 30m`, `1.5s` or `5` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    // humantime wants a digit first: ".5s" is "0.5s".
    let leading_zero;
    let text = if text.starts_with('.') {
        leading_zero = format!("0{text}");
        leading_zero.as_str()
    } else {
        text
    };
    let parsed = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|_| out_of_range(text))?
        }
        Ok(_) => return Err(out_of_range(text)),
        // humantime reads `M` as months: refuse it rather than read `5M` as 152 days.
        Err(_) if text.contains('M') => {
            return Err(format!(
                "'{text}': 'M' would mean months; write m or min for minutes"
            ));
        }
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!("'{text}' is not a duration ({e}; examples: 5s, 250ms, 2m, 1h)")
        })?,
    };
    if parsed > MAX {
        return Err(out_of_range(text));
    }
    Ok(parsed)
}

fn out_of_range(text: &str) -> String {
    format!("'{text}' is out of range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("2y").is_err(), "over a year");
        assert!(parse_duration("5M").is_err(), "months, not minutes");
    }
}
