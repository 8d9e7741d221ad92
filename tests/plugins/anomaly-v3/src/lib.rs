//! The telemetry anomaly rule, compiled from the same source as `plugins/telemetry-anomaly` into
//! a component of its own: a new version (another content hash) with the same behaviour, for the
//! hot-swap tests. Keyed state written by one version is read by the next.

#[path = "../../../../plugins/telemetry-anomaly/src/lib.rs"]
pub mod rule;
