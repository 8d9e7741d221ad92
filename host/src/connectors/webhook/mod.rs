//! Webhooks: records POSTed as JSON to an HTTP endpoint, at least once (sink).

#[cfg(feature = "webhook")]
pub mod sink;
