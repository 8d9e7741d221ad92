//! A Kafka topic, read partition by partition with explicit assignment (as Flink's Kafka source
//! does): Weir's checkpoint store holds the positions and decides which process reads which
//! partition, so no Kafka consumer group is involved. Works with Event Hubs' Kafka endpoint (TLS
//! and SASL PLAIN), Redpanda and Fabric Eventstream's Kafka endpoints.
//!
//! An event's position is its Kafka offset; its key, timestamp and headers become the event's
//! key, enqueued time and properties.
//!
//! A broker that goes away (a restart, a network outage) does not stop the pipeline: a reader
//! whose fetch fails after rskafka's own retries (at least the connection's `timeout`) logs a
//! warning, backs off and fetches again from the offset it stopped at, reconnecting, for up to
//! the connection's `max_outage`.
//!
//! A fault that retrying cannot fix stops the partition's reading at once, with an error naming
//! the topic, partition, offset and cause: an authorization failure, a topic or partition that
//! does not exist, and (with `on_undecodable = "stop"`, the default) a record batch that cannot be
//! decoded. With `on_undecodable = "dead_letter"`, such a batch's offset range and cause go to
//! the dead letters and the reading goes on after it. Every codec Kafka defines (none, gzip,
//! snappy, lz4, zstd) is read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use tokio::sync::mpsc;

use super::client;
use crate::config::{KafkaSourceConfig, KafkaStart, KafkaUndecodable, LoadedConfig};
use crate::event::{Event, PartitionId, Position};
use crate::source::{
    PartitionReader, PartitionStart, ReadOutcome, Source, SourceError, SourceErrorKind,
};

/// A Kafka topic as a source.
pub struct KafkaSource {
    name: String,
    config: KafkaSourceConfig,
    client: Arc<rskafka::client::Client>,
    partitions: u32,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("name", &self.name)
            .field("topic", &self.config.connection.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Connects to the brokers and reads the topic's partition count.
    pub async fn connect(
        name: &str,
        config: &KafkaSourceConfig,
        loaded: &LoadedConfig,
    ) -> Result<Self, SourceError> {
        let connected = client::connect(&config.connection, loaded)
            .await
            .map_err(|e| {
                let kind = e.kind(SourceErrorKind::Misconfigured, SourceErrorKind::Unavailable);
                SourceError::start(kind, name, e.reason)
            })?;
        tracing::info!(
            source = %name, topic = %config.connection.topic, partitions = connected.partitions,
            "connected to Kafka"
        );
        Ok(KafkaSource {
            name: name.to_owned(),
            config: config.clone(),
            client: Arc::new(connected.client),
            partitions: connected.partitions,
        })
    }

    fn read_error(&self, partition: PartitionId, reason: impl Into<String>) -> SourceError {
        SourceError::read(SourceErrorKind::Unavailable, &self.name, partition, reason)
    }

    async fn open_one(&self, start: PartitionStart) -> Result<KafkaReader, SourceError> {
        let partition = start.partition;
        if partition >= self.partitions {
            return Err(SourceError::read(
                SourceErrorKind::Misconfigured,
                &self.name,
                partition,
                format!("the topic has only {} partitions", self.partitions),
            ));
        }
        let id = i32::try_from(partition).map_err(|_| self.read_error(partition, "bad id"))?;
        let client = self
            .client
            .partition_client(
                self.config.connection.topic.clone(),
                id,
                UnknownTopicHandling::Retry,
            )
            .await
            .map_err(|e| self.read_error(partition, format!("cannot reach its leader: {e}")))?;
        let next_offset = match start.after {
            Some(after) => i64::try_from(after)
                .map_err(|_| self.read_error(partition, format!("bad position {after}")))?
                .saturating_add(1),
            None => {
                let at = match self.config.start {
                    KafkaStart::Earliest => OffsetAt::Earliest,
                    KafkaStart::Latest => OffsetAt::Latest,
                };
                client.get_offset(at).await.map_err(|e| {
                    self.read_error(partition, format!("cannot read its start offset: {e}"))
                })?
            }
        };
        let fetcher = KafkaFetcher {
            source_name: self.name.clone(),
            topic: self.config.connection.topic.clone(),
            partition,
            client,
            next_offset,
            fetch_max_bytes: self.config.fetch_max_bytes,
            fetch_max_wait: self.config.fetch_max_wait.get(),
            outage: client::Outage::new(self.config.connection.max_outage.get()),
            on_undecodable: self.config.on_undecodable,
        };
        let (sender, fetched) = mpsc::channel(FETCHES_AHEAD);
        let fetching = tokio::spawn(fetcher.run(sender));
        Ok(KafkaReader {
            source_name: self.name.clone(),
            partition,
            fetched,
            fetching,
            next_offset,
            high_watermark: None,
            buffered: VecDeque::new(),
            stop_at_end: self.config.stop_at_end,
            ended: false,
        })
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        self.partitions
    }

    fn partitions_open_independently(&self) -> bool {
        true
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let mut readers: Vec<Box<dyn PartitionReader>> = Vec::with_capacity(starts.len());
        for start in starts {
            readers.push(Box::new(self.open_one(start).await?));
        }
        Ok(readers)
    }
}

/// Fetches the reader's partition ahead of it wants, so that the broker's answer and its decoding
/// overlap the pipeline's work on the records before them.
const FETCHES_AHEAD: usize = 2;

/// Reads one Kafka partition: what its fetching task fetched, in order.
struct KafkaReader {
    source_name: String,
    partition: PartitionId,
    /// What the fetching task fetched (its first failure ends it).
    fetched: mpsc::Receiver<Result<Fetched, SourceError>>,
    /// The fetching task, stopped with the reader.
    fetching: tokio::task::JoinHandle<()>,
    /// The offset after the last record received from the fetching task.
    next_offset: i64,
    /// The partition's end as of the last fetch received.
    high_watermark: Option<i64>,
    /// Fetched records not handed out yet (a fetch returns bytes, not a count).
    buffered: VecDeque<Event>,
    stop_at_end: bool,
    /// The fetching task stopped after a failure that was reported.
    ended: bool,
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.fetching.abort();
    }
}

/// One answer of the fetching task.
enum Fetched {
    /// The records of one fetch (none when the partition had nothing new within the wait).
    Records {
        events: Vec<Event>,
        /// The partition's end as this fetch saw it.
        high_watermark: i64,
        /// The offset the next fetch starts at.
        next_offset: i64,
    },
    /// A batch that cannot be decoded, set aside (`on_undecodable = "dead_letter"`).
    Undecodable(ReadOutcome),
}

/// Fetches one Kafka partition from `next_offset` on, for its [`KafkaReader`].
struct KafkaFetcher {
    source_name: String,
    topic: String,
    partition: PartitionId,
    client: PartitionClient,
    /// The offset of the next record to fetch.
    next_offset: i64,
    fetch_max_bytes: i32,
    fetch_max_wait: Duration,
    /// Fetches failed in a row (the broker is away).
    outage: client::Outage,
    on_undecodable: KafkaUndecodable,
}

/// Bytes a probe fetch asks for: the broker still sends the first batch whole (KIP-74), and
/// only that one, so that the probe decodes or fails on that batch alone.
const PROBE_MAX_BYTES: i32 = 1;

impl KafkaFetcher {
    /// Fetches until the reader is gone or a fetch fails beyond retrying (that failure is the
    /// last thing it hands over).
    async fn run(mut self, fetched: mpsc::Sender<Result<Fetched, SourceError>>) {
        loop {
            let answer = match self.fetch().await {
                Ok(None) => continue,
                Ok(Some(answer)) => Ok(answer),
                Err(error) => Err(error),
            };
            let failed = answer.is_err();
            if fetched.send(answer).await.is_err() || failed {
                return;
            }
        }
    }

    fn error(&self, reason: impl Into<String>) -> SourceError {
        self.error_of(SourceErrorKind::Unavailable, reason)
    }

    fn error_of(&self, kind: SourceErrorKind, reason: impl Into<String>) -> SourceError {
        SourceError::read(kind, &self.source_name, self.partition, reason)
    }

    /// Fetches from `next_offset`: the records, or a batch set aside; `None` after a failure
    /// that was waited out (the next fetch tries again from the same offset).
    async fn fetch(&mut self) -> Result<Option<Fetched>, SourceError> {
        let wait_ms = i32::try_from(self.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        let fetched = self
            .client
            .fetch_records(self.next_offset, 1..self.fetch_max_bytes, wait_ms)
            .await;
        let (records, high_watermark) = match fetched {
            Ok(fetched) => fetched,
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => return self.recover_out_of_range().await.map(|()| None),
            Err(e) => return self.fetch_failed(e).await,
        };
        if let Some((lasted, failures)) = self.outage.succeeded() {
            tracing::info!(
                source = %self.source_name, partition = self.partition,
                offset = self.next_offset, failures, outage_ms = lasted.as_millis() as u64,
                "Kafka broker reachable again; reading on"
            );
        }
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            // A compressed batch may start before the requested offset.
            if record.offset < self.next_offset {
                continue;
            }
            self.next_offset = record.offset + 1;
            let Ok(position) = Position::try_from(record.offset) else {
                continue;
            };
            let record = record.record;
            events.push(Event {
                partition: self.partition,
                position,
                source: crate::event::no_source(),
                key: record.key.map(Bytes::from),
                event_time: None,
                enqueued_time: record.timestamp.timestamp_millis(),
                properties: record
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect(),
                body: record.value.map(Bytes::from).unwrap_or_default(),
            });
        }
        Ok(Some(Fetched::Records {
            events,
            high_watermark,
            next_offset: self.next_offset,
        }))
    }

    /// A fetch failed after rskafka's retries: an outage is retried (see [`Self::back_off`]);
    /// a fault that retrying cannot fix stops the partition, or for a batch that cannot be
    /// decoded with `on_undecodable = "dead_letter"`, is skipped and handed out as such.
    async fn fetch_failed(&mut self, error: KafkaError) -> Result<Option<Fetched>, SourceError> {
        let fault = client::classify(&error);
        match fault {
            client::Fault::Outage => self.back_off(error).await.map(|()| None),
            client::Fault::Undecodable if self.on_undecodable == KafkaUndecodable::DeadLetter => {
                self.skip_undecodable(error).await
            }
            _ => Err(self.error(self.fault_reason(fault, &error))),
        }
    }

    /// Names the topic, partition, offset and cause of a fault retrying cannot fix.
    fn fault_reason(&self, fault: client::Fault, error: &KafkaError) -> String {
        let hint = match fault {
            client::Fault::Undecodable => {
                " (set `on_undecodable = \"dead_letter\"` to set such batches aside and read on)"
            }
            _ => "",
        };
        format!(
            "cannot read topic `{}` partition {} at offset {}: {fault}, which retrying cannot fix: {error}{hint}",
            self.topic, self.partition, self.next_offset
        )
    }

    /// The batch at `next_offset` cannot be decoded: finds where it ends, by probing fetches of
    /// one batch each (a doubling step, then bisection: every offset of the batch fails the
    /// same way, the first offset after it decodes), and moves on past it.
    async fn skip_undecodable(
        &mut self,
        error: KafkaError,
    ) -> Result<Option<Fetched>, SourceError> {
        let first = self.next_offset;
        // `bad` fails to decode; `good` decodes (or lies at or beyond the partition's end).
        let (mut bad, mut step) = (first, 1i64);
        let mut good = loop {
            let probe = bad.saturating_add(step);
            match self.probe(probe).await {
                Ok(true) => break probe,
                Ok(false) => (bad, step) = (probe, step.saturating_mul(2)),
                Err(e) => return self.back_off(e).await.map(|()| None),
            }
        };
        while good - bad > 1 {
            let mid = bad + (good - bad) / 2;
            match self.probe(mid).await {
                Ok(true) => good = mid,
                Ok(false) => bad = mid,
                Err(e) => return self.back_off(e).await.map(|()| None),
            }
        }
        let reason = format!(
            "cannot read topic `{}` partition {} at offsets {first}..={bad}: {}: {error}; set aside",
            self.topic,
            self.partition,
            client::Fault::Undecodable
        );
        tracing::warn!(
            source = %self.source_name, topic = %self.topic, partition = self.partition,
            first, last = bad, %reason,
            "Kafka record batch cannot be decoded; dead-lettering it and reading on"
        );
        let (Ok(first), Ok(last)) = (Position::try_from(first), Position::try_from(bad)) else {
            return Err(self.error(reason));
        };
        self.next_offset = good;
        Ok(Some(Fetched::Undecodable(ReadOutcome::Undecodable {
            first,
            last,
            reason,
        })))
    }

    /// Whether the batch holding `offset` decodes; an error other than an undecodable batch is
    /// returned as such. A fetch of one byte gets exactly that batch from Kafka (KIP-74); a
    /// broker that answers such a fetch with nothing (tansu) is asked again for a full fetch,
    /// whose answer may also hold the batches after it.
    async fn probe(&self, offset: i64) -> Result<bool, KafkaError> {
        // tansu answers a fetch that may not wait with no topic at all; the data is there, so
        // a waiting fetch returns at once all the same.
        let wait_ms = i32::try_from(self.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        for max_bytes in [PROBE_MAX_BYTES, self.fetch_max_bytes.max(PROBE_MAX_BYTES)] {
            match self
                .client
                .fetch_records(offset, 1..max_bytes.saturating_add(1), wait_ms)
                .await
            {
                Ok((records, _)) if !records.is_empty() => return Ok(true),
                // Nothing for so few bytes: ask for more.
                Ok(_) | Err(KafkaError::InvalidResponse(_)) if max_bytes == PROBE_MAX_BYTES => {}
                // The end of the partition lies before `offset`: nothing there to decode.
                Ok(_)
                | Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                }) => return Ok(true),
                Err(e) if client::classify(&e) == client::Fault::Undecodable => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// A fetch failed after rskafka's retries: waits before the next attempt (which reconnects
    /// and fetches from the same offset, so nothing is skipped or read twice), or fails the
    /// partition once the broker has been away longer than `max_outage`.
    async fn back_off(&mut self, error: KafkaError) -> Result<(), SourceError> {
        let reason = format!("fetch at offset {} failed: {error}", self.next_offset);
        match self.outage.failed() {
            Ok((backoff, attempt)) => {
                tracing::warn!(
                    source = %self.source_name, partition = self.partition, %reason, attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    "Kafka fetch failed; reconnecting and fetching from the same offset"
                );
                tokio::time::sleep(backoff).await;
                Ok(())
            }
            Err(gave_up) => Err(self.error(format!("{reason}; {gave_up}"))),
        }
    }

    /// The offset to read is no longer (retention) or not yet (a recreated topic) on the broker.
    async fn recover_out_of_range(&mut self) -> Result<(), SourceError> {
        let earliest = self
            .client
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| self.error(format!("cannot read the earliest offset: {e}")))?;
        if self.next_offset < earliest {
            tracing::warn!(
                source = %self.source_name, partition = self.partition,
                wanted = self.next_offset, earliest,
                "records were deleted by retention before they were read; skipping to the earliest offset"
            );
            self.next_offset = earliest;
            return Ok(());
        }
        let latest = self
            .client
            .get_offset(OffsetAt::Latest)
            .await
            .map_err(|e| self.error(format!("cannot read the latest offset: {e}")))?;
        Err(self.error_of(
            SourceErrorKind::Unreadable,
            format!(
                "offset {} lies beyond the partition's end ({latest}): was the topic recreated? Remove the pipeline's checkpoints to start over",
                self.next_offset
            ),
        ))
    }
}

impl KafkaReader {
    /// Takes the fetching task's next answer, waiting at most `wait`: `None` when none came.
    async fn receive(&mut self, wait: Duration) -> Result<Option<ReadOutcome>, SourceError> {
        let answer = match tokio::time::timeout(wait, self.fetched.recv()).await {
            Err(_) => return Ok(Some(ReadOutcome::Idle)),
            Ok(Some(answer)) => answer,
            Ok(None) => {
                return Err(SourceError::read(
                    SourceErrorKind::Unavailable,
                    &self.source_name,
                    self.partition,
                    "the partition's fetching task stopped",
                ));
            }
        };
        match answer {
            Err(error) => {
                self.ended = true;
                Err(error)
            }
            Ok(Fetched::Undecodable(outcome)) => Ok(Some(outcome)),
            Ok(Fetched::Records {
                events,
                high_watermark,
                next_offset,
            }) => {
                self.high_watermark = Some(high_watermark);
                self.next_offset = next_offset;
                self.buffered.extend(events);
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl PartitionReader for KafkaReader {
    fn partition(&self) -> PartitionId {
        self.partition
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<ReadOutcome, SourceError> {
        if self.ended {
            return Err(SourceError::read(
                SourceErrorKind::Unavailable,
                &self.source_name,
                self.partition,
                "the partition's reading failed before",
            ));
        }
        if self.buffered.is_empty()
            && let Some(outcome) = self.receive(wait).await?
        {
            return Ok(outcome);
        }
        if self.buffered.is_empty() {
            // A fetch found nothing: the end, if the partition ends at its end.
            let at_end = self
                .high_watermark
                .is_some_and(|end| self.next_offset >= end);
            return Ok(if self.stop_at_end && at_end {
                ReadOutcome::End
            } else {
                ReadOutcome::Idle
            });
        }
        let take = max.max(1).min(self.buffered.len());
        Ok(ReadOutcome::Events(self.buffered.drain(..take).collect()))
    }

    fn lag(&self) -> Option<u64> {
        let end = self.high_watermark?;
        let unread = end.saturating_sub(self.next_offset).max(0);
        u64::try_from(unread)
            .ok()
            .map(|n| n + self.buffered.len() as u64)
    }

    /// A Kafka offset is the position itself; naming it keeps the `offset` metadata of a Blob
    /// checkpoint in the Azure SDKs' layout (which requires it) for a Kafka source too.
    fn source_offset(&self, position: Position) -> Option<String> {
        Some(position.to_string())
    }
}
