//! Sources: where events come from, split into partitions that are read in order.
//!
//! A [`Source`] opens one [`PartitionReader`] per partition this process owns, each resuming
//! after the position its checkpoint recorded. Sources whose input is not partitioned by nature
//! (a file, a generator, HTTP) read it once and spread events over partitions by key with a
//! [`Dispatcher`]; brokers (Event Hubs, Kafka) read their partitions directly.

pub mod dispatch;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::checkpoint::CheckpointStore;
use crate::config::{LoadedConfig, SourceConfig};
#[cfg(feature = "eventhubs")]
use crate::connectors::eventhubs::source as eventhubs;
use crate::connectors::file::source as file;
use crate::connectors::http::source as http;
#[cfg(feature = "kafka")]
use crate::connectors::kafka::source as kafka;
use crate::event::{Event, PartitionId, Position};
use crate::generators::{bookings, telemetry};

pub use dispatch::{DispatchSettings, Dispatcher};

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the input failed.
    #[error("source `{source_name}`, partition {partition}: {reason}")]
    Read {
        /// Source name.
        source_name: String,
        /// Partition being read.
        partition: PartitionId,
        /// What kind of failure it is.
        kind: SourceErrorKind,
        /// What happened.
        reason: String,
    },
    /// Another reader took the partition (an Event Hubs reader with a higher owner level): this
    /// process stops reading it, but the partition goes on and may be claimed again later.
    #[error("source `{source_name}`, partition {partition} was taken by another reader: {reason}")]
    Lost {
        /// Source name.
        source_name: String,
        /// Partition taken.
        partition: PartitionId,
        /// What the source said.
        reason: String,
    },
    /// The source could not start.
    #[error("source `{source_name}` cannot start: {reason}")]
    Start {
        /// Source name.
        source_name: String,
        /// What kind of failure it is.
        kind: SourceErrorKind,
        /// What happened.
        reason: String,
    },
}

impl SourceError {
    /// Reading `partition` of `source_name` failed, for a reason of `kind`.
    pub fn read(
        kind: SourceErrorKind,
        source_name: impl Into<String>,
        partition: PartitionId,
        reason: impl Into<String>,
    ) -> Self {
        SourceError::Read {
            source_name: source_name.into(),
            partition,
            kind,
            reason: reason.into(),
        }
    }

    /// `source_name` could not start, for a reason of `kind`.
    pub fn start(
        kind: SourceErrorKind,
        source_name: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        SourceError::Start {
            source_name: source_name.into(),
            kind,
            reason: reason.into(),
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> SourceErrorKind {
        match self {
            SourceError::Read { kind, .. } | SourceError::Start { kind, .. } => *kind,
            SourceError::Lost { .. } => SourceErrorKind::Lost,
        }
    }

    /// Whether trying again (a restart of the partition from its last checkpoint) can help, or
    /// an operator must change something first.
    pub fn retryable(&self) -> bool {
        self.kind().retryable()
    }
}

/// What kind of failure a [`SourceError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// The input failed or could not be reached (a broker, a hub, a file system).
    Unavailable,
    /// The source's configuration cannot work (a source that is not defined, a partition it
    /// does not have, a connection string that does not parse, a topic that does not exist).
    Misconfigured,
    /// This build of weir lacks the source's connector.
    Unsupported,
    /// The input cannot be read from where the checkpoint says (an offset beyond the end of a
    /// recreated topic): reading again gives the same answer.
    Unreadable,
    /// Another reader took the partition ([`SourceError::Lost`]): reading it again here would
    /// take it back from its new owner.
    Lost,
}

impl From<crate::checkpoint::CheckpointErrorKind> for SourceErrorKind {
    /// The kind of a source's failure to read or write what it keeps in the checkpoint store.
    fn from(kind: crate::checkpoint::CheckpointErrorKind) -> Self {
        use crate::checkpoint::CheckpointErrorKind as Store;
        match kind {
            Store::Unavailable => SourceErrorKind::Unavailable,
            Store::Unreadable => SourceErrorKind::Unreadable,
            Store::Misconfigured => SourceErrorKind::Misconfigured,
            Store::Unsupported => SourceErrorKind::Unsupported,
        }
    }
}

impl SourceErrorKind {
    /// See [`SourceError::retryable`].
    pub fn retryable(self) -> bool {
        matches!(self, SourceErrorKind::Unavailable)
    }
}

/// Where a partition reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStart {
    /// The partition.
    pub partition: PartitionId,
    /// Resume after this position (from the checkpoint); `None` reads from the beginning.
    pub after: Option<Position>,
}

/// What one read returned.
#[derive(Debug)]
pub enum ReadOutcome {
    /// One or more events, in partition order.
    Events(Vec<Event>),
    /// Nothing arrived within the wait.
    Idle,
    /// The partition has ended and will never produce again (a file read to its end).
    End,
    /// Positions `first..=last` hold data that can never be decoded (a corrupt Kafka record
    /// batch): the worker dead-letters what is known of them and reads on after `last`.
    Undecodable {
        /// First position of the data.
        first: Position,
        /// Last position of the data.
        last: Position,
        /// Why it cannot be decoded, naming where it is.
        reason: String,
    },
}

/// An event source.
#[async_trait]
pub trait Source: Send + Sync {
    /// The source's name in the configuration.
    fn name(&self) -> &str;

    /// How many partitions the source has.
    fn partition_count(&self) -> u32;

    /// Whether each partition can be opened and closed on its own, at any time and in any process
    /// (brokers such as Kafka and Event Hubs). Only such sources can share their partitions
    /// between processes; the others are opened once, all partitions at a time.
    fn partitions_open_independently(&self) -> bool {
        false
    }

    /// Opens readers for `starts`. Sources that dispatch one input over partitions must be given
    /// all their partitions in one call.
    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError>;
}

/// Reads one partition in order.
#[async_trait]
pub trait PartitionReader: Send {
    /// The partition this reads.
    fn partition(&self) -> PartitionId;

    /// Up to `max` events, waiting at most `wait` for the first one.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<ReadOutcome, SourceError>;

    /// Whether an event this reader delivers with its `event_time` set carries the pipeline's
    /// event time, read from the pipeline's event-time field of this source exactly as the
    /// partition worker reads it (a source that finds the field in the same pass as the key):
    /// the worker then does not read the field again. An event without one is read by the worker,
    /// which also gives the reason when the field is missing or malformed.
    fn event_time_decoded(&self) -> bool {
        false
    }

    /// Events known to be in the partition but not yet read, when the source knows its end.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Called after a checkpoint covering everything up to `position` was saved: the source may
    /// release what it kept for a replay (for example, old write-ahead log segments).
    fn checkpointed(&mut self, _position: Position) {}

    /// The source's own name for `position` when it has one (an Event Hubs offset, a Kafka
    /// offset), recorded in the checkpoint for other readers of the store (the Azure SDKs'
    /// processors); `None` when the reader does not know it (the worker then keeps the one of a
    /// position it resumed from).
    fn source_offset(&self, _position: Position) -> Option<String> {
        None
    }
}

/// Builds the source `name` from its configuration, for a pipeline that reads its event time
/// from top-level field `event_time_field` of it (if any: a source that scans each event for its
/// key reads that field in the same pass, see [`PartitionReader::event_time_decoded`]).
pub async fn build(
    name: &str,
    config: &SourceConfig,
    loaded: &LoadedConfig,
    checkpoints: Arc<dyn CheckpointStore>,
    metrics: &crate::metrics::Metrics,
    event_time_field: Option<&str>,
) -> Result<Arc<dyn Source>, SourceError> {
    // Used only by builds without some connector.
    #[allow(unused_variables)]
    let unsupported = |reason: &str| SourceError::start(SourceErrorKind::Unsupported, name, reason);
    Ok(match config {
        SourceConfig::File(file) => {
            let mut file = file.clone();
            file.path = loaded.resolve(&file.path);
            Arc::new(file::FileSource::new(name, file).reading_event_time(event_time_field))
        }
        SourceConfig::Simulator(sim) => {
            let start_time = telemetry::resolve_start_time(name, sim, checkpoints.as_ref())
                .await
                .map_err(|(kind, reason)| SourceError::start(kind, name, reason))?;
            Arc::new(telemetry::SimulatorSource::new(
                name,
                sim.clone(),
                start_time,
            ))
        }
        SourceConfig::Bookings(bookings) => {
            let start_time = bookings::resolve_start_time(name, bookings, checkpoints.as_ref())
                .await
                .map_err(|(kind, reason)| SourceError::start(kind, name, reason))?;
            Arc::new(bookings::BookingsSource::new(
                name,
                bookings.clone(),
                start_time,
            ))
        }
        SourceConfig::Http(http) => {
            let mut http = http.clone();
            let default_wal = loaded
                .resolve(&loaded.config.checkpoint.dir)
                .join("wal")
                .join(name);
            http.wal_dir = Some(
                http.wal_dir
                    .as_deref()
                    .map_or(default_wal, |dir: &Path| loaded.resolve(dir)),
            );
            http.tls = http.tls.as_ref().map(|tls| tls.resolved(loaded));
            if let Some(auth) = &mut http.auth {
                auth.tokens_file = auth.tokens_file.as_deref().map(|f| loaded.resolve(f));
            }
            Arc::new(
                http::HttpSource::start(name, http, metrics.clone())
                    .await
                    .map_err(|(kind, reason)| SourceError::start(kind, name, reason))?,
            )
        }
        #[cfg(feature = "eventhubs")]
        SourceConfig::EventHubs(eventhubs) => {
            Arc::new(eventhubs::EventHubsSource::start(name, eventhubs).await?)
        }
        #[cfg(not(feature = "eventhubs"))]
        SourceConfig::EventHubs(_) => {
            return Err(unsupported(
                "this build of weir has no Event Hubs support: rebuild with `--features eventhubs`",
            ));
        }
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(kafka) => {
            Arc::new(kafka::KafkaSource::connect(name, kafka, loaded).await?)
        }
        #[cfg(not(feature = "kafka"))]
        SourceConfig::Kafka(_) => {
            return Err(unsupported(
                "this build of weir has no Kafka support: rebuild with `--features kafka`",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_error_reads_as_before_and_says_whether_to_retry() {
        let read = SourceError::read(SourceErrorKind::Unavailable, "in", 3, "broker away");
        assert_eq!(read.to_string(), "source `in`, partition 3: broker away");
        assert!(read.retryable());
        let start = SourceError::start(SourceErrorKind::Misconfigured, "in", "not defined");
        assert_eq!(start.to_string(), "source `in` cannot start: not defined");
        assert_eq!(start.kind(), SourceErrorKind::Misconfigured);
        assert!(!start.retryable());
        let lost = SourceError::Lost {
            source_name: "in".to_owned(),
            partition: 1,
            reason: "owner level 2".to_owned(),
        };
        assert_eq!(
            lost.to_string(),
            "source `in`, partition 1 was taken by another reader: owner level 2"
        );
        assert_eq!(lost.kind(), SourceErrorKind::Lost);
        assert!(!lost.retryable());
        for kind in [SourceErrorKind::Unsupported, SourceErrorKind::Unreadable] {
            assert!(!kind.retryable(), "{kind:?}");
        }
    }
}
