//! What the process is doing, for the admin API and the health alerts: its pipelines, their
//! partitions with positions and lag, readiness.
//!
//! Partition workers update their own entry once per batch and per checkpoint; a worker started
//! later (a partition taken over at runtime) registers itself the same way, and one that stops
//! marks its entry stopped. Readers take a copy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::event::{PartitionId, Position};

/// The state of one partition worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Being set up.
    #[default]
    Starting,
    /// Reading and processing.
    Running,
    /// Ended (source finished or stop requested) after its final checkpoint.
    Stopped,
    /// Ended on an error.
    Failed,
}

/// One partition of one pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: PartitionId,
    /// What the worker is doing.
    pub state: PartitionState,
    /// The last position processed.
    pub position: Option<Position>,
    /// The position of the last checkpoint.
    pub checkpointed: Option<Position>,
    /// When the last checkpoint was written (ms since the Unix epoch).
    pub checkpoint_written_at: Option<i64>,
    /// What the source holds beyond `position`, when it knows its end (in its own units).
    pub lag: Option<u64>,
    /// Events read.
    pub events_in: u64,
    /// Events sent to the dead-letter sink.
    pub dead_letters: u64,
    /// When the last batch was processed (ms since the Unix epoch).
    pub last_batch_at: Option<i64>,
    /// The latest event time seen (ms since the Unix epoch).
    pub max_event_time: Option<i64>,
}

/// A worker's handle on its partition's entry.
#[derive(Debug, Clone)]
pub struct PartitionHandle(Arc<Mutex<PartitionStatus>>);

impl PartitionHandle {
    /// Changes the entry.
    pub fn update(&self, change: impl FnOnce(&mut PartitionStatus)) {
        change(&mut lock(&self.0));
    }

    /// A copy of the entry.
    pub fn get(&self) -> PartitionStatus {
        lock(&self.0).clone()
    }
}

/// One pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    /// Pipeline name.
    pub pipeline: String,
    /// Its source.
    pub source: String,
    /// Its partitions owned by this process.
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: bool,
    stopping: bool,
    pipelines: BTreeMap<String, (String, BTreeMap<PartitionId, PartitionHandle>)>,
}

/// The status registry of one process.
#[derive(Debug, Clone, Default)]
pub struct ServiceStatus {
    inner: Arc<Mutex<Inner>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServiceStatus {
    /// An empty registry, not ready.
    pub fn new() -> Self {
        ServiceStatus::default()
    }

    /// The entry of `pipeline`'s `partition` (created if new; an existing one is reused, so a
    /// partition that comes back keeps its counts).
    pub fn partition(
        &self,
        pipeline: &str,
        source: &str,
        partition: PartitionId,
    ) -> PartitionHandle {
        let mut inner = lock(&self.inner);
        let (_, partitions) = inner
            .pipelines
            .entry(pipeline.to_owned())
            .or_insert_with(|| (source.to_owned(), BTreeMap::new()));
        partitions
            .entry(partition)
            .or_insert_with(|| {
                PartitionHandle(Arc::new(Mutex::new(PartitionStatus {
                    partition,
                    ..PartitionStatus::default()
                })))
            })
            .clone()
    }

    /// Every pipeline with its partitions.
    pub fn pipelines(&self) -> Vec<PipelineStatus> {
        let inner = lock(&self.inner);
        inner
            .pipelines
            .iter()
            .map(|(name, (source, partitions))| PipelineStatus {
                pipeline: name.clone(),
                source: source.clone(),
                partitions: partitions.values().map(PartitionHandle::get).collect(),
            })
            .collect()
    }

    /// Marks the process ready (every pipeline started) or not.
    pub fn set_ready(&self, ready: bool) {
        lock(&self.inner).ready = ready;
    }

    /// Marks the process as stopping: it is no longer ready.
    pub fn set_stopping(&self) {
        lock(&self.inner).stopping = true;
    }

    /// Ready: started, not stopping, and no partition worker failed.
    pub fn is_ready(&self) -> bool {
        let ready = {
            let inner = lock(&self.inner);
            inner.ready && !inner.stopping
        };
        ready
            && self
                .pipelines()
                .iter()
                .flat_map(|p| &p.partitions)
                .all(|p| p.state != PartitionState::Failed)
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        lock(&self.inner).stopping
    }
}
