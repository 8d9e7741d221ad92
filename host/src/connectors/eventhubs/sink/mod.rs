//! Azure Event Hubs sink: records sent in batches, by partition key or partition id, at least
//! once.
//!
//! Each pipeline partition has its own producer (one AMQP connection). Records are sent as they
//! are written (a writer's own task sends them, lingering at most `linger` for more when idle;
//! see [`crate::sink::continuous`]), grouped by destination (a key, a partition, or none) in
//! record order, in batches as large as the hub accepts; a checkpoint waits until the hub
//! accepted every record it covers. A batch that fails or is not
//! accepted within `send_timeout` is sent again on a new connection; a crash replays from the
//! last checkpoint. Either way a record can arrive twice, so every record carries a
//! deterministic message id, `<pipeline>/<partition>/<position>/<n>` (the n-th record the
//! input event at that position produced), for consumers to deduplicate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient};
use serde_json::json;

use crate::config::{EventHubsRouting, EventHubsSinkConfig};
use crate::connectors::eventhubs::connection::{self, Connection};
use crate::event::{Event, Position};
use crate::json::top_level_field;
use crate::sink::continuous::{Batching, Continuous, Transport};
use crate::sink::{
    PendingFlush, RefusalKind, Refused, Sink, SinkError, SinkErrorKind, SinkProgress, SinkWriter,
    WriterScope,
};

/// The longest pause between two attempts at a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The largest event the service accepts on its smallest tier (1 MiB less the batch envelope);
/// larger records are refused up front, to the dead letters, instead of failing their batch.
const MAX_RECORD_BYTES: usize = 1024 * 1024 - 8 * 1024;

/// An Event Hub that pipelines send records to.
#[derive(Debug)]
pub struct EventHubsSink {
    name: String,
    connection: Connection,
    config: EventHubsSinkConfig,
    partition_ids: Arc<Vec<String>>,
}

impl EventHubsSink {
    /// Connects to the hub once, to check the configuration and learn its partitions.
    pub async fn open(name: &str, config: &EventHubsSinkConfig) -> Result<Self, SinkError> {
        let fail = |reason: String| SinkError::opening(SinkErrorKind::Unavailable, name, reason);
        // The connection string and hub name come from the configuration alone.
        let connection = Connection::resolve(&config.connection())
            .map_err(|reason| SinkError::opening(SinkErrorKind::Misconfigured, name, reason))?;
        let producer = connection.producer().await.map_err(fail)?;
        let properties =
            tokio::time::timeout(connection::OPEN_TIMEOUT, producer.get_eventhub_properties())
                .await;
        // Closing waits for the service's answers: nothing here needs them.
        tokio::spawn(connection::close_producer(producer));
        let partition_ids = match properties {
            Ok(Ok(properties)) => properties.partition_ids,
            Ok(Err(e)) => {
                return Err(fail(format!(
                    "cannot read the properties of {}: {e}",
                    connection.describe()
                )));
            }
            Err(_) => {
                return Err(fail(format!(
                    "no answer from {} within {:?}",
                    connection.describe(),
                    connection::OPEN_TIMEOUT
                )));
            }
        };
        if partition_ids.is_empty() {
            return Err(fail(format!(
                "{} reports no partitions",
                connection.describe()
            )));
        }
        Ok(EventHubsSink {
            name: name.to_owned(),
            connection,
            config: config.clone(),
            partition_ids: Arc::new(partition_ids),
        })
    }
}

/// The sent count a checkpoint recorded.
fn recorded_sent(progress: Option<&SinkProgress>) -> u64 {
    progress
        .and_then(|p| p.get("sent"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

#[async_trait]
impl Sink for EventHubsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        self.connection.describe()
    }

    async fn open_writer(
        &self,
        scope: &WriterScope,
        progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let transport = EventHubsTransport {
            sink: self.name.clone(),
            scope: scope.clone(),
            connection: self.connection.clone(),
            config: self.config.clone(),
            partition_ids: self.partition_ids.clone(),
            producer: None,
        };
        let batching = Batching {
            linger: self.config.linger.get(),
            max_batch: MAX_BATCH_RECORDS,
            max_buffered: MAX_BUFFERED_RECORDS,
        };
        Ok(Box::new(EventHubsWriter {
            scope: scope.clone(),
            sender: Continuous::start(transport, batching, scope, &self.name),
            sent: recorded_sent(progress),
        }))
    }
}

/// Records sent at once by an idle writer, without lingering (a batch the hub takes holds about
/// this many telemetry records).
const MAX_BATCH_RECORDS: usize = 1024;
/// Records a writer holds unacknowledged at most before its `write` waits.
const MAX_BUFFERED_RECORDS: usize = 32_768;

/// Where a group of records goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Destination {
    Key(String),
    Partition(String),
    Any,
}

/// The writer of one pipeline partition: records are sent as they are written, by its
/// [`Continuous`] sender; a flush waits until the hub accepted them.
struct EventHubsWriter {
    scope: WriterScope,
    /// Sends records with their message ids.
    sender: Continuous<(String, Event)>,
    /// Records sent by this pipeline partition since it started writing here (acknowledged at
    /// each flush).
    sent: u64,
}

/// Sends a writer's records over its own producer (one AMQP connection).
struct EventHubsTransport {
    sink: String,
    scope: WriterScope,
    connection: Connection,
    config: EventHubsSinkConfig,
    partition_ids: Arc<Vec<String>>,
    producer: Option<ProducerClient>,
}

impl EventHubsTransport {
    fn error(&self, reason: impl Into<String>) -> SinkError {
        self.scope.error(&self.sink, reason)
    }

    fn destination(&self, record: &Event) -> Destination {
        match self.config.partition_by {
            EventHubsRouting::Any => Destination::Any,
            EventHubsRouting::Partition => {
                let index = self.scope.partition as usize % self.partition_ids.len();
                Destination::Partition(self.partition_ids[index].clone())
            }
            EventHubsRouting::Key => {
                let key = match &self.config.key_field {
                    // Strings as they are, numbers as text; no field, no key.
                    Some(field) => top_level_field(&record.body, field)
                        .ok()
                        .flatten()
                        .and_then(|value| value.key_bytes())
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
                    None => record
                        .key
                        .as_ref()
                        .map(|key| String::from_utf8_lossy(key).into_owned()),
                };
                key.map_or(Destination::Any, Destination::Key)
            }
        }
    }

    async fn producer(&mut self) -> Result<&ProducerClient, String> {
        if self.producer.is_none() {
            self.producer = Some(self.connection.producer().await?);
        }
        self.producer
            .as_ref()
            .ok_or_else(|| "no producer".to_owned())
    }

    async fn reopen(&mut self) {
        if let Some(producer) = self.producer.take() {
            connection::close_producer(producer).await;
        }
    }

    /// Sends one batch from the front of `records`; returns how many it held.
    async fn send_one_batch(
        &mut self,
        destination: &Destination,
        records: &[(String, Event)],
    ) -> Result<usize, String> {
        let timeout = self.config.send_timeout.get();
        let options = match destination {
            Destination::Key(key) => EventDataBatchOptions {
                partition_key: Some(key.clone()),
                ..EventDataBatchOptions::default()
            },
            Destination::Partition(id) => EventDataBatchOptions {
                partition_id: Some(id.clone()),
                ..EventDataBatchOptions::default()
            },
            Destination::Any => EventDataBatchOptions::default(),
        };
        let producer = self.producer().await?;
        let batch = tokio::time::timeout(timeout, producer.create_batch(Some(options)))
            .await
            .map_err(|_| format!("no batch within {timeout:?}"))?
            .map_err(|e| format!("cannot create a batch: {e}"))?;
        let mut count = 0;
        for (message_id, record) in records {
            let added = batch
                .try_add_event_data(to_event_data(message_id, record), None)
                .map_err(|e| format!("cannot add a record to the batch: {e}"))?;
            if !added {
                break;
            }
            count += 1;
        }
        if count == 0 {
            return Err(format!(
                "record {} ({} bytes) does not fit in an empty batch",
                records[0].0,
                records[0].1.body.len()
            ));
        }
        match tokio::time::timeout(timeout, producer.send_batch(batch, None)).await {
            Ok(Ok(())) => Ok(count),
            Ok(Err(e)) => Err(format!("batch of {count} records not accepted: {e}")),
            Err(_) => Err(format!(
                "batch of {count} records not settled within {timeout:?}"
            )),
        }
    }

    /// Sends `records` (one destination's, in order), retrying failed batches.
    async fn send_group(
        &mut self,
        destination: &Destination,
        records: &[(String, Event)],
    ) -> Result<(), SinkError> {
        let mut next = 0;
        let mut failures = 0u32;
        while next < records.len() {
            match self.send_one_batch(destination, &records[next..]).await {
                Ok(count) => {
                    next += count;
                    failures = 0;
                }
                Err(reason) => {
                    failures += 1;
                    if failures >= self.config.max_attempts {
                        return Err(self.error(format!(
                            "{reason}; gave up after {failures} attempts (to {destination:?} of {})",
                            self.connection.describe()
                        )));
                    }
                    let backoff = Duration::from_millis(200u64 << failures.min(6)).min(MAX_BACKOFF);
                    tracing::warn!(
                        sink = %self.sink, pipeline = %self.scope.pipeline,
                        partition = self.scope.partition, %reason, attempt = failures,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Event Hubs batch failed; reconnecting and sending it again"
                    );
                    // A connection that failed once may be half dead: start afresh.
                    self.reopen().await;
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        Ok(())
    }
}

/// A record as an Event Hubs event: its body, its properties (minus the `x-opt-*` ones the
/// service sets), and its deterministic message id.
fn to_event_data(message_id: &str, record: &Event) -> EventData {
    let mut builder = EventData::builder()
        .with_body(record.body.to_vec())
        .with_message_id(message_id.to_owned());
    for (name, value) in &record.properties {
        if !name.starts_with("x-opt-") {
            builder = builder.add_property(name.clone(), value.clone());
        }
    }
    builder.build()
}

#[async_trait]
impl SinkWriter for EventHubsWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        let mut refused = Vec::new();
        let mut accepted = Vec::with_capacity(records.len());
        // The n-th record of the input event at a position: outputs of one input event arrive
        // in one write, in order, so the numbering is the same when a replay produces them again.
        let mut ordinal: HashMap<Position, u32> = HashMap::new();
        for record in records {
            let n = ordinal.entry(record.position).or_insert(0);
            let message_id = format!(
                "{}/{}/{}/{}",
                self.scope.pipeline, self.scope.partition, record.position, n
            );
            *n += 1;
            if record.body.len() > MAX_RECORD_BYTES {
                let reason = format!(
                    "record of {} bytes exceeds the {MAX_RECORD_BYTES} bytes an Event Hubs event may hold",
                    record.body.len()
                );
                refused.push(Refused {
                    record,
                    kind: RefusalKind::TooLarge,
                    reason,
                });
                continue;
            }
            accepted.push((message_id, record));
        }
        self.sent += accepted.len() as u64;
        self.sender.send(accepted).await?;
        Ok(refused)
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        self.begin_flush().await?.await
    }

    async fn begin_flush(&mut self) -> Result<PendingFlush, SinkError> {
        self.sender.begin_flush(json!({ "sent": self.sent }))
    }
}

#[async_trait]
impl Transport for EventHubsTransport {
    type Record = (String, Event);

    async fn send(&mut self, records: Vec<(String, Event)>) -> Result<(), SinkError> {
        // Group by destination, keeping record order within each group.
        let mut order: Vec<Destination> = Vec::new();
        let mut groups: HashMap<Destination, Vec<(String, Event)>> = HashMap::new();
        for entry in records {
            let destination = self.destination(&entry.1);
            let group = groups.entry(destination.clone()).or_insert_with(|| {
                order.push(destination);
                Vec::new()
            });
            group.push(entry);
        }
        for destination in order {
            if let Some(records) = groups.remove(&destination) {
                self.send_group(&destination, &records).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
