//! Configuration of the stdout sink.

use serde::Deserialize;

/// Standard output. At-least-once: records after the last checkpoint are printed again after a
/// crash.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}
