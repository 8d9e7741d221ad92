//! Configuration of the file source and the file sink.

use std::path::PathBuf;

use serde::Deserialize;

/// Replay of a JSON Lines file, one event per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to read.
    pub path: PathBuf,
    /// Number of partitions the lines are spread over.
    #[serde(default = "default_one_partition")]
    pub partitions: u32,
    /// Top-level JSON field whose value is the partition key; absent spreads lines round-robin.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Keep reading as the file grows, instead of ending at its end.
    #[serde(default)]
    pub follow: bool,
    /// Top-level JSON field holding the time each event was enqueued (RFC 3339 text or epoch
    /// milliseconds), for replaying a capture of a broker's stream with its arrival times; absent
    /// (or unreadable in a line): the time the line is read.
    #[serde(default)]
    pub enqueued_time_field: Option<String>,
}

fn default_one_partition() -> u32 {
    1
}

/// JSON Lines files under a directory, one file per pipeline and partition
/// (`<path>/<pipeline>-<partition>.jsonl`), truncated back to the last checkpoint on recovery so
/// that every record is written exactly once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory of the files.
    pub path: PathBuf,
}
