//! Webhooks: records POSTed as JSON to an HTTP endpoint, at least once (sink).

pub mod config;
#[cfg(feature = "webhook")]
pub mod sink;
