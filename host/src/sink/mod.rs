//! Sinks: where records end up.
//!
//! Each pipeline partition gets its own [`SinkWriter`] per sink. A writer accepts whole batches and
//! makes them durable on [`SinkWriter::flush`], returning the progress that the partition's
//! checkpoint records; on restart, [`Sink::open_writer`] receives that progress back and undoes or
//! skips whatever a crash left beyond it. That is how each sink decides its guarantee:
//! - Delta Lake: exactly once (a transaction action per pipeline and partition, version = position);
//! - files: exactly once (each partition's file is truncated back to the checkpointed length);
//! - stdout, Kafka, Event Hubs, webhooks: at least once (Kafka records, Event Hubs messages and
//!   webhook requests carry a deterministic id so that receivers can drop repeats).
//!
//! At-least-once sinks deliver as records are written, not at the checkpoint: webhooks within
//! `write`, Kafka and Event Hubs through a sender task of each writer ([`continuous`]), whose
//! acknowledgements `flush` waits for. Exactly-once sinks batch until the checkpoint's flush.
//!
//! A regular checkpoint does not stop its partition while sinks make its records durable:
//! [`SinkWriter::begin_flush`] marks what the checkpoint covers and returns a future that the
//! pipeline awaits beside its work, so that records produced meanwhile keep flowing (Kafka,
//! Event Hubs and Delta Lake wait in the background; files and stdout flush at once).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{LoadedConfig, SinkConfig};
#[cfg(feature = "delta")]
use crate::connectors::delta::sink as delta;
#[cfg(feature = "eventhubs")]
use crate::connectors::eventhubs::sink as eventhubs;
use crate::connectors::file::sink as file;
#[cfg(feature = "kafka")]
use crate::connectors::kafka::sink as kafka;
use crate::connectors::stdout::sink as stdout;
#[cfg(feature = "webhook")]
use crate::connectors::webhook::sink as webhook;
use crate::event::{Event, PartitionId, Position};

pub use crate::checkpoint::SinkProgress;

pub mod continuous;

/// Why a sink failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink `{sink}` ({}): {reason}", self.scope())]
pub struct SinkError {
    /// Sink name.
    pub sink: String,
    /// Pipeline writing to it (while the sink opens: the pipelines that use it, once known).
    pub pipeline: String,
    /// Partition writing to it; `None` while the sink opens, before any partition writes.
    pub partition: Option<PartitionId>,
    /// What kind of failure it is.
    pub kind: SinkErrorKind,
    /// What happened.
    pub reason: String,
}

impl SinkError {
    /// A [`SinkError`] of `kind` while sink `sink` opens, before any pipeline writes to it.
    pub fn opening(kind: SinkErrorKind, sink: &str, reason: impl Into<String>) -> SinkError {
        SinkError {
            sink: sink.to_owned(),
            pipeline: String::new(),
            partition: None,
            kind,
            reason: reason.into(),
        }
    }

    /// This error, naming the pipelines that use the sink (for an error while it opens).
    pub fn used_by(mut self, pipelines: &[&str]) -> SinkError {
        if self.pipeline.is_empty() {
            self.pipeline = pipelines.join("`, `");
        }
        self
    }

    /// Who met the error: the pipeline and the partition, or the pipelines that use the sink.
    fn scope(&self) -> String {
        match (self.partition, self.pipeline.is_empty()) {
            (Some(partition), _) => format!("pipeline `{}`, partition {partition}", self.pipeline),
            (None, true) => "while opening".to_owned(),
            (None, false) if self.pipeline.contains('`') => {
                format!("pipelines `{}`", self.pipeline)
            }
            (None, false) => format!("pipeline `{}`", self.pipeline),
        }
    }

    /// Whether trying again (a restart of the partition from its last checkpoint) can help, or
    /// an operator must change something first.
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

/// What kind of failure a [`SinkError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// The destination failed or could not be reached (a connection, a request, a commit).
    Unavailable,
    /// The sink's configuration cannot work (for example, a header that is not valid HTTP, or a
    /// Delta table whose columns differ from the configured ones).
    Misconfigured,
    /// This build of weir lacks the sink's connector.
    Unsupported,
    /// A newer writer of the same partition replaced this one (the partition was opened again):
    /// this writer is done, and the newer one carries on.
    Superseded,
}

impl SinkErrorKind {
    /// See [`SinkError::retryable`].
    pub fn retryable(self) -> bool {
        matches!(self, SinkErrorKind::Unavailable)
    }
}

/// Who a writer writes for.
#[derive(Debug, Clone)]
pub struct WriterScope {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// Partition.
    pub partition: PartitionId,
}

impl WriterScope {
    /// A [`SinkError`] for sink `sink` in this scope: the destination failed.
    pub fn error(&self, sink: &str, reason: impl Into<String>) -> SinkError {
        self.error_of(SinkErrorKind::Unavailable, sink, reason)
    }

    /// A [`SinkError`] of `kind` for sink `sink` in this scope.
    pub fn error_of(
        &self,
        kind: SinkErrorKind,
        sink: &str,
        reason: impl Into<String>,
    ) -> SinkError {
        SinkError {
            sink: sink.to_owned(),
            pipeline: self.pipeline.to_string(),
            partition: Some(self.partition),
            kind,
            reason: reason.into(),
        }
    }
}

/// A record a sink could not take (for example, a field of the wrong type for a Delta column).
/// The pipeline sends it to the dead-letter sink.
#[derive(Debug)]
pub struct Refused {
    /// The record.
    pub record: Event,
    /// Why, as a kind.
    pub kind: RefusalKind,
    /// Why, in words (the dead letter's reason).
    pub reason: String,
}

/// Why a sink refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The record is not the JSON the sink must read (to post it, or to take its fields).
    Malformed,
    /// The record is larger than the destination takes.
    TooLarge,
    /// A value of the record does not fit the destination's schema (a missing value for a
    /// column that is not nullable, a value of the wrong type).
    Schema,
    /// The destination answered that it will not take the record (an HTTP 4xx answer).
    RejectedByDestination,
    /// The destination did not take the record after every attempt (unreachable, or failing).
    Undelivered,
}

impl RefusalKind {
    /// Whether sending the record again, unchanged, can succeed: only when the destination
    /// failed to take it, not when the record itself is what it refused.
    pub fn retryable(self) -> bool {
        matches!(self, RefusalKind::Undelivered)
    }
}

/// A configured sink, shared by every pipeline partition that writes to it.
#[async_trait]
pub trait Sink: Send + Sync {
    /// The sink's name in the configuration.
    fn name(&self) -> &str;

    /// Where the sink writes, for people: a path, a URL or a stream name.
    fn describe(&self) -> String {
        format!("sink `{}`", self.name())
    }

    /// Hands the sink the process's metrics, for counters of its own; called once, after the
    /// sink is built.
    fn attach_metrics(&self, _metrics: &crate::metrics::Metrics) {}

    /// Opens the writer of one pipeline partition. `progress` is what the partition's last
    /// checkpoint recorded for this sink (`None` without a checkpoint): anything the sink holds
    /// beyond it will be written again by the replay, so the sink undoes or skips it.
    async fn open_writer(
        &self,
        scope: &WriterScope,
        progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError>;
}

/// A flush that ends in the background (see [`SinkWriter::begin_flush`]).
pub type PendingFlush = Pin<Box<dyn Future<Output = Result<SinkProgress, SinkError>> + Send>>;

/// Writes one pipeline partition's records to a sink.
#[async_trait]
pub trait SinkWriter: Send {
    /// Takes the records of one batch, in order; the sink may send them at once or buffer them
    /// until [`SinkWriter::flush`]. Records it cannot take are returned, with the reason.
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError>;

    /// Makes everything written so far durable (or, for a sink that sends as it is written,
    /// waits for the acknowledgements of everything written so far), and returns the progress
    /// to checkpoint.
    async fn flush(&mut self) -> Result<SinkProgress, SinkError>;

    /// Starts a flush of everything written so far that may end after this call returns, while
    /// the writer takes more records: the future resolves once those records are durable (or
    /// acknowledged), with progress that covers them (and may cover records written after this
    /// call). The pipeline awaits it before the writer's next flush. The default flushes here.
    async fn begin_flush(&mut self) -> Result<PendingFlush, SinkError> {
        let progress = self.flush().await?;
        Ok(Box::pin(std::future::ready(Ok(progress))))
    }

    /// The partition's checkpoint at `position` is saved: every record written from now on was
    /// produced after it (a sink that skips a replay's records up to some position stops
    /// skipping once a checkpoint covers that position).
    fn checkpointed(&mut self, position: Position) {
        let _ = position;
    }
}

/// A key the pipeline adds (`true`) to the progress a sink writer is reopened with when the
/// checkpoint was saved just before an idle advance: the replay repeats that advance first, its
/// records at the checkpoint's own position (see the Delta sink).
pub const IDLE_ADVANCE_PENDING: &str = "idle_advance_pending";

/// Builds the sink `name` from its configuration.
pub async fn build(
    name: &str,
    config: &SinkConfig,
    loaded: &LoadedConfig,
) -> Result<Arc<dyn Sink>, SinkError> {
    // Used only by builds without some connector.
    #[allow(unused_variables)]
    let unsupported = |feature: &str| {
        SinkError::opening(
            SinkErrorKind::Unsupported,
            name,
            format!(
                "this build of weir has no {feature} support: rebuild with `--features {feature}`"
            ),
        )
    };
    Ok(match config {
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(kafka) => Arc::new(kafka::KafkaSink::connect(name, kafka, loaded).await?),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => return Err(unsupported("kafka")),
        #[cfg(feature = "webhook")]
        SinkConfig::Webhook(webhook) => Arc::new(webhook::WebhookSink::new(name, webhook)?),
        #[cfg(not(feature = "webhook"))]
        SinkConfig::Webhook(_) => return Err(unsupported("webhook")),
        SinkConfig::File(file) => Arc::new(file::FileSink::new(name, loaded.resolve(&file.path))),
        SinkConfig::Stdout(_) => Arc::new(stdout::StdoutSink::new(name)),
        #[cfg(feature = "delta")]
        SinkConfig::Delta(delta) => Arc::new(delta::DeltaSink::open(name, delta, loaded).await?),
        #[cfg(feature = "eventhubs")]
        SinkConfig::EventHubs(eventhubs) => {
            Arc::new(eventhubs::EventHubsSink::open(name, eventhubs).await?)
        }
        #[cfg(not(feature = "eventhubs"))]
        SinkConfig::EventHubs(_) => return Err(unsupported("eventhubs")),
        #[cfg(not(feature = "delta"))]
        SinkConfig::Delta(_) => return Err(unsupported("delta")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_error_reads_as_before_and_says_whether_to_retry() {
        let scope = WriterScope {
            pipeline: "p".into(),
            partition: 2,
        };
        let error = scope.error("out", "connection reset");
        assert_eq!(
            error.to_string(),
            "sink `out` (pipeline `p`, partition 2): connection reset"
        );
        assert!(error.retryable());
        let misconfigured = SinkError {
            kind: SinkErrorKind::Misconfigured,
            ..error
        };
        assert!(!misconfigured.retryable());
        assert!(!SinkErrorKind::Unsupported.retryable());
    }

    #[test]
    fn an_error_while_opening_names_its_pipelines_and_a_superseded_writer_is_not_retried() {
        let error = SinkError::opening(SinkErrorKind::Misconfigured, "lake", "bad columns");
        assert_eq!(
            error.to_string(),
            "sink `lake` (while opening): bad columns"
        );
        // Issue 19: a failed start named its pipeline as empty (`pipeline ``).
        assert!(!error.retryable());
        let named = error.used_by(&["telemetry"]);
        assert_eq!(
            named.to_string(),
            "sink `lake` (pipeline `telemetry`): bad columns"
        );
        let shared =
            SinkError::opening(SinkErrorKind::Unavailable, "lake", "down").used_by(&["a", "b"]);
        assert_eq!(shared.to_string(), "sink `lake` (pipelines `a`, `b`): down");
        let scope = WriterScope {
            pipeline: "p".into(),
            partition: 1,
        };
        let superseded = scope.error_of(
            SinkErrorKind::Superseded,
            "lake",
            "this writer was replaced by a newer writer of the same partition",
        );
        assert_eq!(
            superseded.to_string(),
            "sink `lake` (pipeline `p`, partition 1): this writer was replaced by a newer writer of the same partition"
        );
        assert!(!superseded.retryable());
    }

    #[test]
    fn only_an_undelivered_record_is_worth_sending_again() {
        assert!(RefusalKind::Undelivered.retryable());
        for kind in [
            RefusalKind::Malformed,
            RefusalKind::TooLarge,
            RefusalKind::Schema,
            RefusalKind::RejectedByDestination,
        ] {
            assert!(!kind.retryable(), "{kind:?}");
        }
    }
}
