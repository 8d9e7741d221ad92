//! Configuration of the HTTP source.

use std::path::PathBuf;

use serde::Deserialize;

/// An HTTP ingest endpoint: `POST /events` with one JSON event or NDJSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address to listen on.
    #[serde(default = "default_http_address")]
    pub address: String,
    /// Number of partitions.
    #[serde(default = "default_one_partition")]
    pub partitions: u32,
    /// Request header carrying the partition key.
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// Top-level JSON field used as partition key when the header is absent.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Directory of the write-ahead log that makes accepted events durable before the reply.
    #[serde(default)]
    pub wal_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Size at which a write-ahead log segment is closed and a new one started, in bytes. Whole
    /// segments below every reader's checkpoint are deleted.
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
}

fn default_http_address() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_key_header() -> String {
    "x-partition-key".to_owned()
}
fn default_max_request_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_wal_segment_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_one_partition() -> u32 {
    1
}
