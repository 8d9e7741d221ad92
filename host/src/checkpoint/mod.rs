//! Checkpoints: per pipeline partition, the source position, every stage's state and what every
//! sink has made durable, written only after the sinks have flushed what it covers.

mod local;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::{PartitionId, Position};
use crate::sink::SinkProgress;

pub use local::LocalCheckpointStore;

/// Why the checkpoint store failed.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store {location}: {reason}")]
pub struct CheckpointError {
    /// The file or blob concerned.
    pub location: String,
    /// What happened.
    pub reason: String,
}

/// The recovery point of one pipeline partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last source position whose effects are covered; the reader resumes after it.
    pub position: Option<Position>,
    /// The source's own form of `position` when it has one (Event Hubs: the offset of that
    /// sequence number), for checkpoint stores that record both, like the Azure SDKs' blobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_offset: Option<String>,
    /// Per sink name, what the sink recorded as durable for this partition.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkProgress>,
    /// Per stage name, the stage's state.
    #[serde(skip)]
    pub stages: BTreeMap<String, Vec<u8>>,
    /// When the checkpoint was written, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub written_at: i64,
}

/// Where checkpoints live.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The last checkpoint of `pipeline`'s `partition`, if any.
    async fn load(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Option<Checkpoint>, CheckpointError>;

    /// Replaces the checkpoint of `pipeline`'s `partition`, atomically.
    async fn save(
        &self,
        pipeline: &str,
        partition: PartitionId,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError>;

    /// A small value kept for a source across restarts (for example the simulator's start time).
    async fn load_meta(&self, key: &str) -> Result<Option<String>, CheckpointError>;

    /// Stores a value for [`CheckpointStore::load_meta`].
    async fn save_meta(&self, key: &str, value: &str) -> Result<(), CheckpointError>;
}
