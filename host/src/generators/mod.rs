//! Demo generators: built-in sources that make up events from a seed, for demos, tests and
//! benchmarks. They are not connectors to a real system.
//!
//! - [`telemetry`]: IoT devices reporting temperature, humidity, pressure, battery and signal;
//! - [`bookings`]: a booking platform's bookings and their payments.

pub mod bookings;
mod pacing;
mod random;
pub mod telemetry;

use crate::config::{ConfigError, Document};

/// Default number of partitions of a generator.
fn default_partitions() -> u32 {
    4
}

/// Default seed of a generator.
fn default_seed() -> u64 {
    1
}

/// Checks that each `(key, ratio)` of source `name` is a fraction between 0 and 1.
fn validate_fractions(
    doc: &Document<'_>,
    name: &str,
    ratios: &[(&str, f64)],
) -> Result<(), ConfigError> {
    for &(key, ratio) in ratios {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(doc.error(
                &["sources", name, key],
                format!("expected a fraction between 0 and 1, found {ratio}"),
            ));
        }
    }
    Ok(())
}

/// Checks that source `name`'s `start_time`, when given, is an RFC 3339 time.
fn validate_start_time(
    doc: &Document<'_>,
    name: &str,
    start: Option<&str>,
) -> Result<(), ConfigError> {
    if let Some(start) = start
        && chrono::DateTime::parse_from_rfc3339(start).is_err()
    {
        return Err(doc.error(
            &["sources", name, "start_time"],
            format!("expected an RFC 3339 time such as `2026-01-01T00:00:00Z`, found `{start}`"),
        ));
    }
    Ok(())
}
