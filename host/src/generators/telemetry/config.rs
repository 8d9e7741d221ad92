//! Configuration of the telemetry simulator.

use serde::Deserialize;

use crate::config::{ConfigDuration, ConfigError, Document};

/// The telemetry simulator: devices reporting temperature, humidity, pressure, battery and signal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSourceConfig {
    /// Number of partitions; events are partitioned by `DeviceId`.
    #[serde(default = "crate::generators::default_partitions")]
    pub partitions: u32,
    /// Number of simulated devices.
    #[serde(default = "default_devices")]
    pub devices: u32,
    /// Events per second over all devices; 0 produces as fast as the pipeline consumes.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Stop after this many readings (duplicates not counted); absent runs until stopped.
    #[serde(default)]
    pub max_events: Option<u64>,
    /// Seed of the generator: the same seed gives the same events.
    #[serde(default = "crate::generators::default_seed")]
    pub seed: u64,
    /// Event time of the first reading (RFC 3339). Absent: the time of the pipeline's first start,
    /// kept in the checkpoint store so that a restart replays the same events.
    #[serde(default)]
    pub start_time: Option<String>,
    /// Event time between two readings of the same device.
    #[serde(default = "default_reading_interval")]
    pub reading_interval: ConfigDuration,
    /// Fraction of readings with a sudden temperature jump.
    #[serde(default = "default_jump_ratio")]
    pub jump_ratio: f64,
    /// Fraction of readings sent twice, as the streaming-at-scale samples inject.
    #[serde(default = "default_duplicate_ratio")]
    pub duplicate_ratio: f64,
}

fn default_devices() -> u32 {
    20
}
fn default_rate() -> u32 {
    1000
}
fn default_reading_interval() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}
fn default_jump_ratio() -> f64 {
    0.05
}
fn default_duplicate_ratio() -> f64 {
    0.001
}

/// Checks a telemetry simulator source: what types cannot.
pub(crate) fn validate(
    doc: &Document<'_>,
    name: &str,
    sim: &SimulatorSourceConfig,
) -> Result<(), ConfigError> {
    if sim.devices == 0 {
        return Err(doc.error(&["sources", name, "devices"], "expected at least 1 device"));
    }
    crate::generators::validate_fractions(
        doc,
        name,
        &[
            ("jump_ratio", sim.jump_ratio),
            ("duplicate_ratio", sim.duplicate_ratio),
        ],
    )?;
    crate::generators::validate_start_time(doc, name, sim.start_time.as_deref())?;
    if sim.reading_interval.get().is_zero() {
        return Err(doc.error(
            &["sources", name, "reading_interval"],
            "expected a duration above zero",
        ));
    }
    Ok(())
}
