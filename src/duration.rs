//! Durations in the config file: an integer number of seconds or a string with a
//! unit (`"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"7d"`). It never accepts negative
//! or fractional values, so a typo cannot silently become "zero".

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parse `"10s"`, `"500ms"`, `"5m"`, `"2h"`, `"7d"` or a bare number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a duration (write e.g. \"10s\", \"500ms\", \"5m\", \"2h\", \"7d\" or a number of seconds)"
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is too large for a duration"))?;
    let millis_per_unit: u64 = match unit.trim() {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too large for a duration"))
}

/// Render a duration the way the config file accepts it.
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        format!("{millis}ms")
    } else {
        format!("{}s", duration.as_secs())
    }
}

/// `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// A duration in whole seconds that fits a `u32` (MQTT intervals such as the session
/// expiry), written like every other duration.
pub fn deserialize_secs_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let d = deserialize(deserializer)?;
    u32::try_from(d.as_secs()).map_err(|_| {
        de::Error::custom(format!(
            "{} is out of range (at most {} seconds, about 136 years)",
            format(d),
            u32::MAX
        ))
    })
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"10s\", \"500ms\", \"5m\" or a number of seconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("{v} is negative; a duration must be zero or more")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{v} is fractional; write milliseconds instead, e.g. \"1500ms\""
        )))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_bare_seconds() {
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn rejects_garbage_negative_and_unknown_units() {
        assert!(parse("").is_err());
        assert!(parse("-5s").is_err());
        assert!(parse("ten").is_err());
        assert!(parse("10 years").is_err());
        assert!(parse("99999999999999999999999d").is_err());
    }

    #[test]
    fn formats_back_into_accepted_syntax() {
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }
}
