//! Checkpoints: per pipeline partition, the source position, every stage's state and what every
//! sink has made durable, written only after the sinks have flushed what it covers.
//!
//! The store also keeps **ownership claims** for sources whose partitions several processes share
//! (Kafka, Event Hubs): one record per partition naming its owner, renewed while the owner runs and
//! taken over by another process once it has not been renewed within the ownership expiry. Every
//! claim is a conditional write against the version the claimer last saw, as in the Azure SDKs'
//! event processors, so two processes never both win the same partition.
//! [`crate::pipeline`]'s ownership loop balances the partitions over the processes.

mod incremental;
mod local;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::event::{PartitionId, Position};

pub use crate::event::ConsumerScope;
pub use incremental::{IncrementalState, MAX_DELTAS, StateWrite};
pub use local::LocalCheckpointStore;
// The Azure Blob store keeps checkpoints in the local store's encoding.
#[cfg(feature = "azure")]
pub(crate) use incremental::{drop_files, read_files, safe_name, write_files};
#[cfg(feature = "azure")]
pub(crate) use local::{MAGIC, MAGIC_V2, decode, encode, seal, unseal};

/// What a sink recorded as durable for one partition, kept in the partition's checkpoint: each
/// sink decides its shape, and gets it back when its writer is reopened.
pub type SinkProgress = serde_json::Value;

/// Why the checkpoint store failed.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store {location}: {reason}")]
pub struct CheckpointError {
    /// The file or blob concerned.
    pub location: String,
    /// What kind of failure it is.
    pub kind: CheckpointErrorKind,
    /// What happened.
    pub reason: String,
}

impl CheckpointError {
    /// A failure of `kind` at `location`.
    pub fn new(
        kind: CheckpointErrorKind,
        location: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        CheckpointError {
            location: location.into(),
            kind,
            reason: reason.to_string(),
        }
    }

    /// Whether trying again (a restart of the partition) can help, or an operator must change
    /// something first.
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

/// What kind of failure a [`CheckpointError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointErrorKind {
    /// The store failed or could not be reached (a file system, Blob Storage).
    Unavailable,
    /// A record the store holds cannot be read (a corrupt file, a checksum that does not match):
    /// reading it again gives the same answer.
    Unreadable,
    /// The store's configuration cannot work (an unknown option, a container that cannot be
    /// configured).
    Misconfigured,
    /// This build of weir lacks the store's support.
    Unsupported,
}

impl CheckpointErrorKind {
    /// See [`CheckpointError::retryable`].
    pub fn retryable(self) -> bool {
        matches!(self, CheckpointErrorKind::Unavailable)
    }
}

/// The recovery point of one pipeline partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last source position whose effects are covered; the reader resumes after it.
    pub position: Option<Position>,
    /// Per sink name, what the sink recorded as durable for this partition.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkProgress>,
    /// Per stage name, the stage's state.
    #[serde(skip)]
    pub stages: BTreeMap<String, Vec<u8>>,
    /// When the checkpoint was written, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub written_at: i64,
    /// The source's own name for `position` when it has one besides it (an Event Hubs offset),
    /// kept for other readers of the store such as the Azure SDKs' event processors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_offset: Option<String>,
    /// A pipeline with several sources: each source's position (and offset), by source name,
    /// each resumed after its own. `position` is then the partition's own sequence of merged
    /// events (see [`crate::time::SourceMerge`]), which sinks see as positions. Empty for a
    /// pipeline with one source, whose position is `position` (as checkpoints always had it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, SourcePosition>,
    /// Per stage name, the files of its keyed state checkpointed incrementally (see
    /// [`IncrementalState`]): its base, then its deltas in order. Such a stage has no entry in
    /// `stages`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub state_files: BTreeMap<String, Vec<String>>,
    /// The sequence number of the last state file named.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_seq: u64,
    /// Saving: the state files to write (name, bytes) before the record that lists them.
    #[serde(skip)]
    pub state_writes: Vec<(String, bytes::Bytes)>,
    /// Saving: the state files to delete once the record no longer lists them.
    #[serde(skip)]
    pub state_drops: Vec<String>,
    /// Loaded: per stage name, the contents of its `state_files`, in order.
    #[serde(skip)]
    pub state_parts: BTreeMap<String, Vec<bytes::Bytes>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where one source of a pipeline partition with several stands in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The last position of the source whose effects are covered; its reader resumes after it.
    pub position: Option<Position>,
    /// The source's own name for `position` when it has one (an Event Hubs offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
}

/// The ownership record of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The partition.
    pub partition: PartitionId,
    /// The owner's id; empty when the partition was released.
    pub owner: String,
    /// When the record was last written (claimed, renewed or released), in milliseconds since the
    /// Unix epoch.
    pub last_modified: i64,
    /// The record's version (a blob's ETag); `None` for a record that does not exist yet. A claim
    /// carries the version its claimer saw and succeeds only if the record is still at it.
    pub version: Option<String>,
}

impl Ownership {
    /// Whether the record names a live owner at `now`: claimed by someone and renewed within
    /// `expiry_ms`.
    pub fn is_active(&self, now: i64, expiry_ms: i64) -> bool {
        !self.owner.is_empty() && now.saturating_sub(self.last_modified) < expiry_ms
    }
}

/// Where checkpoints live.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The last checkpoint of `pipeline`'s `partition`, if any, with the state files it lists
    /// read into [`Checkpoint::state_parts`].
    async fn load(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Option<Checkpoint>, CheckpointError>;

    /// Replaces the checkpoint of `pipeline`'s `partition`, atomically: first the state files it
    /// adds ([`Checkpoint::state_writes`]), then its record, then the files it drops.
    async fn save(
        &self,
        pipeline: &str,
        partition: PartitionId,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError>;

    /// Writes one state file of `pipeline`'s `partition` (see [`IncrementalState`]), whole or
    /// not at all.
    async fn write_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), CheckpointError>;

    /// Reads one state file written by [`CheckpointStore::write_state_file`].
    async fn read_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
    ) -> Result<bytes::Bytes, CheckpointError>;

    /// Deletes one state file (one that does not exist is not an error).
    async fn delete_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
    ) -> Result<(), CheckpointError>;

    /// The names of every state file of `pipeline`'s `partition` (listed or not by a record), so
    /// that those earlier runs left behind can be deleted (see
    /// [`IncrementalState::leftovers`]).
    async fn list_state_files(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Vec<String>, CheckpointError>;

    /// A small value kept for a source across restarts (for example the simulator's start time).
    async fn load_meta(&self, key: &str) -> Result<Option<String>, CheckpointError>;

    /// Stores a value for [`CheckpointStore::load_meta`].
    async fn save_meta(&self, key: &str, value: &str) -> Result<(), CheckpointError>;

    /// Every ownership record of `pipeline`'s partitions (claimed, renewed or released).
    async fn list_ownership(&self, pipeline: &str) -> Result<Vec<Ownership>, CheckpointError>;

    /// Writes each of `claims` (a claim, a renewal, or a release with an empty owner) if its
    /// record is still at `claim.version` (absent for `None`). Returns the claims that succeeded,
    /// with their new version and time; a claim someone else won meanwhile is left out, not an
    /// error.
    async fn claim_ownership(
        &self,
        pipeline: &str,
        claims: &[Ownership],
    ) -> Result<Vec<Ownership>, CheckpointError>;

    /// Where the store keeps its data, for people.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_checkpoint_error_reads_as_before_and_says_whether_to_retry() {
        let error = CheckpointError::new(
            CheckpointErrorKind::Unavailable,
            "/data/p/0.ckpt",
            "disk full",
        );
        assert_eq!(
            error.to_string(),
            "checkpoint store /data/p/0.ckpt: disk full"
        );
        assert!(error.retryable());
        for kind in [
            CheckpointErrorKind::Unreadable,
            CheckpointErrorKind::Misconfigured,
            CheckpointErrorKind::Unsupported,
        ] {
            assert!(
                !CheckpointError::new(kind, "x", "y").retryable(),
                "{kind:?}"
            );
        }
    }
}
