//! A Kafka topic as a sink: at least once. Records are produced as they are written (a writer's
//! own task sends them, lingering at most `linger` for more when idle; see
//! [`crate::sink::continuous`]) in batches per target partition, and a checkpoint waits until the
//! leader acknowledged every record it covers; after a crash, the replay
//! produces the records after the last checkpoint again. Every record carries a deterministic id
//! header (`weir-id`: pipeline, partition, source position and output index) so that consumers
//! can drop the repeats.
//!
//! A produce request that fails after rskafka's own retries (a broker restart, a network outage)
//! is sent again with backoff, for up to the connection's `max_outage`, before the pipeline fails;
//! a repeat this may cause carries the same id. A refusal that retrying cannot fix (authorization,
//! a topic or partition that does not exist, a codec the broker does not take) fails at once.
//!
//! Record batches are written in the sink's `compression` codec (`none` by default).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::record::Record;
use serde_json::json;
use tokio::sync::Mutex;

use super::client;
use crate::config::{KafkaPartitioning, KafkaSinkConfig, LoadedConfig};
use crate::event::{Event, PartitionId, Position};
use crate::json::top_level_field;
use crate::sink::continuous::{Batching, Continuous, Transport};
use crate::sink::{
    PendingFlush, RefusalKind, Refused, Sink, SinkError, SinkErrorKind, SinkProgress, SinkWriter,
    WriterScope,
};

/// Name of the header holding a record's deterministic id.
pub const ID_HEADER: &str = "weir-id";

/// A Kafka topic.
pub struct KafkaSink {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    config: KafkaSinkConfig,
    client: rskafka::client::Client,
    partitions: u32,
    /// One client per target partition, shared by every writer.
    partition_clients: Mutex<HashMap<u32, Arc<PartitionClient>>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.shared.name)
            .field("topic", &self.shared.config.connection.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Connects to the brokers and reads the topic's partition count.
    pub async fn connect(
        name: &str,
        config: &KafkaSinkConfig,
        loaded: &LoadedConfig,
    ) -> Result<Self, SinkError> {
        let connected = client::connect(&config.connection, loaded)
            .await
            .map_err(|e| {
                let kind = e.kind(SinkErrorKind::Misconfigured, SinkErrorKind::Unavailable);
                SinkError::opening(kind, name, e.reason)
            })?;
        let client = connected.client;
        Ok(KafkaSink {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                config: config.clone(),
                client,
                partitions: connected.partitions,
                partition_clients: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Shared {
    async fn partition_client(&self, partition: u32) -> Result<Arc<PartitionClient>, String> {
        let mut clients = self.partition_clients.lock().await;
        if let Some(client) = clients.get(&partition) {
            return Ok(Arc::clone(client));
        }
        let id = i32::try_from(partition).map_err(|_| format!("bad partition {partition}"))?;
        let client = self
            .client
            .partition_client(
                self.config.connection.topic.clone(),
                id,
                UnknownTopicHandling::Retry,
            )
            .await
            .map_err(|e| format!("cannot reach the leader of partition {partition}: {e}"))?;
        let client = Arc::new(client);
        clients.insert(partition, Arc::clone(&client));
        Ok(client)
    }

    /// The target partition of a record with `key`, written for source `partition`.
    fn target(&self, key: Option<&[u8]>, partition: PartitionId) -> u32 {
        let partitions = self.partitions.max(1);
        match (self.config.partition_by, key) {
            (KafkaPartitioning::Key, Some(key)) => {
                // As Kafka's default partitioner: the positive part of murmur2, modulo the count.
                (murmur2(key) & 0x7fff_ffff) as u32 % partitions
            }
            _ => partition % partitions,
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn describe(&self) -> String {
        format!(
            "Kafka topic `{}` on {}",
            self.shared.config.connection.topic,
            self.shared.config.connection.brokers.join(", ")
        )
    }

    async fn open_writer(
        &self,
        scope: &WriterScope,
        _progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let config = &self.shared.config;
        let batching = Batching {
            linger: config.linger.get(),
            max_batch: config.batch_max_records.max(1),
            max_buffered: MAX_BUFFERED_RECORDS.max(config.batch_max_records),
        };
        let transport = KafkaTransport {
            shared: Arc::clone(&self.shared),
            scope: scope.clone(),
        };
        Ok(Box::new(KafkaWriter {
            shared: Arc::clone(&self.shared),
            scope: scope.clone(),
            sender: Continuous::start(transport, batching, scope, &self.shared.name),
            last_position: None,
            output_index: 0,
            produced: 0,
        }))
    }
}

/// Records a writer holds unacknowledged at most before its `write` waits.
const MAX_BUFFERED_RECORDS: usize = 32_768;

/// The writer of one pipeline partition: records are produced as they are written, by its
/// [`Continuous`] sender; a flush waits for the broker's acknowledgements.
struct KafkaWriter {
    shared: Arc<Shared>,
    scope: WriterScope,
    /// Sends `(target partition, record)` pairs.
    sender: Continuous<(u32, Record)>,
    /// The source position of the last record, and how many records came from it: the output
    /// index in the id header.
    last_position: Option<Position>,
    output_index: u32,
    /// Records handed to the sender since the writer opened (acknowledged at each flush).
    produced: u64,
}

impl KafkaWriter {
    fn record(&mut self, event: &Event) -> Result<Record, String> {
        if self.last_position == Some(event.position) {
            self.output_index += 1;
        } else {
            self.last_position = Some(event.position);
            self.output_index = 0;
        }
        let key = match &self.shared.config.key_field {
            Some(field) => match top_level_field(&event.body, field) {
                Ok(Some(value)) => value.key_bytes(),
                Ok(None) => None,
                Err(reason) => return Err(format!("cannot read key field `{field}`: {reason}")),
            },
            None => event.key.as_ref().map(|k| k.to_vec()),
        };
        let mut headers: BTreeMap<String, Vec<u8>> = event
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        headers.insert(
            ID_HEADER.to_owned(),
            format!(
                "{}/{}/{}/{}",
                self.scope.pipeline, self.scope.partition, event.position, self.output_index
            )
            .into_bytes(),
        );
        let timestamp =
            chrono::DateTime::from_timestamp_millis(event.time()).unwrap_or_else(chrono::Utc::now);
        Ok(Record {
            key,
            value: Some(event.body.to_vec()),
            headers,
            timestamp,
        })
    }
}

/// Produces a writer's records: each target partition's in order, the partitions at once.
struct KafkaTransport {
    shared: Arc<Shared>,
    scope: WriterScope,
}

#[async_trait]
impl Transport for KafkaTransport {
    type Record = (u32, Record);

    async fn send(&mut self, records: Vec<(u32, Record)>) -> Result<(), SinkError> {
        let mut by_target: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        for (target, record) in records {
            by_target.entry(target).or_default().push(record);
        }
        let produces = by_target
            .into_iter()
            .map(|(target, records)| produce(&self.shared, &self.scope, target, records));
        futures::future::try_join_all(produces).await?;
        Ok(())
    }
}

/// Produces `records` to partition `target`, in order, in requests of at most
/// `batch_max_records`; a request that fails for a broker outage is sent again with backoff.
async fn produce(
    shared: &Shared,
    scope: &WriterScope,
    target: u32,
    records: Vec<Record>,
) -> Result<(), SinkError> {
    let error = |reason: String| scope.error(&shared.name, reason);
    let client = shared.partition_client(target).await.map_err(error)?;
    let mut outage = client::Outage::new(shared.config.connection.max_outage.get());
    let compression = client::codec(shared.config.compression);
    for chunk in records.chunks(shared.config.batch_max_records.max(1)) {
        loop {
            match client.produce(chunk.to_vec(), compression).await {
                Ok(_) => break,
                Err(e) => {
                    let reason = format!("produce to partition {target} failed: {e}");
                    let fault = client::classify(&e);
                    if fault != client::Fault::Outage {
                        // Retrying cannot fix it: say so now, not after `max_outage`.
                        return Err(error(format!(
                            "{reason} ({fault}, which retrying cannot fix)"
                        )));
                    }
                    let (backoff, attempt) = outage
                        .failed()
                        .map_err(|gave_up| error(format!("{reason}; {gave_up}")))?;
                    tracing::warn!(
                        sink = %shared.name, pipeline = %scope.pipeline,
                        partition = scope.partition, %reason, attempt,
                        retry_in_ms = backoff.as_millis() as u64,
                        "Kafka produce failed; reconnecting and producing the batch again"
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        if let Some((lasted, failures)) = outage.succeeded() {
            tracing::info!(
                sink = %shared.name, pipeline = %scope.pipeline,
                partition = scope.partition, failures,
                outage_ms = lasted.as_millis() as u64,
                "Kafka broker reachable again; producing on"
            );
        }
    }
    Ok(())
}

#[async_trait]
impl SinkWriter for KafkaWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        let mut refused = Vec::new();
        let mut ready = Vec::with_capacity(records.len());
        for event in records {
            match self.record(&event) {
                Ok(record) => {
                    let target = self
                        .shared
                        .target(record.key.as_deref(), self.scope.partition);
                    ready.push((target, record));
                }
                Err(reason) => refused.push(Refused {
                    record: event,
                    kind: RefusalKind::Malformed,
                    reason,
                }),
            }
        }
        self.produced += ready.len() as u64;
        self.sender.send(ready).await?;
        Ok(refused)
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        self.begin_flush().await?.await
    }

    async fn begin_flush(&mut self) -> Result<PendingFlush, SinkError> {
        self.sender
            .begin_flush(json!({ "produced": self.produced }))
    }
}

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`), so that a key lands on the same
/// partition as with Kafka's own producers.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The length wraps as Java's int does; keys beyond 2 GiB do not occur.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::murmur2;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Test vectors from Apache Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }
}
