//! Durations written as text: `250ms`, `5s`, `2m`, `1h`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration in a configuration file: an integer followed by `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        ConfigDuration(Duration::from_millis(millis))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// Parses `250ms`, `5s`, `2m` or `1h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        let value: u64 = number.parse().map_err(|_| {
            format!("expected a duration such as `500ms`, `5s`, `2m` or `1h`, found `{text}`")
        })?;
        let millis = match unit.trim() {
            "ms" => Some(value),
            "s" => value.checked_mul(1_000),
            "m" => value.checked_mul(60_000),
            "h" => value.checked_mul(3_600_000),
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}`: expected `ms`, `s`, `m` or `h`"
                ));
            }
        };
        millis
            .map(ConfigDuration::from_millis)
            .ok_or_else(|| format!("duration `{text}` is too long"))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"5s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
                ConfigDuration::parse(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_the_rest() {
        assert_eq!(
            ConfigDuration::parse("250ms"),
            Ok(ConfigDuration::from_millis(250))
        );
        assert_eq!(
            ConfigDuration::parse("5s"),
            Ok(ConfigDuration::from_millis(5_000))
        );
        assert_eq!(
            ConfigDuration::parse("2m"),
            Ok(ConfigDuration::from_millis(120_000))
        );
        assert_eq!(
            ConfigDuration::parse("1h"),
            Ok(ConfigDuration::from_millis(3_600_000))
        );
        assert!(
            ConfigDuration::parse("5")
                .expect_err("refused")
                .contains("unknown duration unit")
        );
        assert!(
            ConfigDuration::parse("five s")
                .expect_err("refused")
                .contains("expected a duration")
        );
        assert!(ConfigDuration::parse("5d").is_err());
    }
}
