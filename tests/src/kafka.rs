//! A Kafka client for the tests, independent of Weir's connector: rskafka used directly to create
//! topics, produce the input and read outputs back.

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

/// One record read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, as text.
    pub key: Option<String>,
    /// Value, as text.
    pub value: String,
    /// Headers, values as text.
    pub headers: BTreeMap<String, String>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The CA file of a TLS broker, for the helpers' own connections (a test binary talks to one
/// kind of broker: see [`use_tls`]).
static TLS_CA: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Makes the helpers of this test binary connect with TLS, trusting `ca_file`.
pub fn use_tls(ca_file: &std::path::Path) {
    *TLS_CA.lock().expect("lock") = Some(ca_file.to_path_buf());
}

/// The SASL PLAIN user and password of the helpers' own connections (see [`use_sasl_plain`]).
static SASL_PLAIN: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

/// Makes the helpers of this test binary authenticate with SASL PLAIN.
pub fn use_sasl_plain(username: &str, password: &str) {
    *SASL_PLAIN.lock().expect("lock") = Some((username.to_owned(), password.to_owned()));
}

async fn client(broker: &str) -> Client {
    // A deadline: without one, rskafka retries a failing connection forever.
    let mut builder =
        ClientBuilder::new(vec![broker.to_owned()]).backoff_config(rskafka::BackoffConfig {
            deadline: Some(Duration::from_secs(60)),
            ..rskafka::BackoffConfig::default()
        });
    let ca = TLS_CA.lock().expect("lock").clone();
    if let Some(ca) = ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca).expect("CA file") {
            roots.add(cert.expect("certificate")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        builder = builder.tls_config(std::sync::Arc::new(config));
    }
    let sasl = SASL_PLAIN.lock().expect("lock").clone();
    if let Some((username, password)) = sasl {
        builder = builder.sasl_config(rskafka::client::SaslConfig::Plain(
            rskafka::client::Credentials::new(username, password),
        ));
    }
    builder.build().await.expect("connect to the broker")
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(broker: &str, topic: &str, partitions: i32) {
    runtime().block_on(async {
        let client = client(broker).await;
        client
            .controller_client()
            .expect("controller")
            .create_topic(topic, partitions, 1, 10_000)
            .await
            .expect("create topic");
        // Wait until the metadata shows every partition.
        for _ in 0..100 {
            let topics = client.list_topics().await.expect("list topics");
            if topics
                .iter()
                .any(|t| t.name == topic && t.partitions.len() == partitions as usize)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("topic {topic} did not appear");
    });
}

/// Produces `(partition, key, value)` records in order, in batches.
pub fn produce(broker: &str, topic: &str, records: &[(i32, String, String)]) {
    runtime().block_on(async {
        let client = client(broker).await;
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for (partition, key, value) in records {
            by_partition.entry(*partition).or_default().push(Record {
                key: Some(key.clone().into_bytes()),
                value: Some(value.clone().into_bytes()),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            });
        }
        for (partition, records) in by_partition {
            let partition_client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            for chunk in records.chunks(500) {
                partition_client
                    .produce(chunk.to_vec(), Compression::NoCompression)
                    .await
                    .expect("produce");
            }
        }
    });
}

/// The JSON records Weir produced to `topic`, one per `weir-id` header. Kafka outputs are at
/// least once: a repeat must carry the same id and the same payload (panics otherwise).
pub fn unique_json(broker: &str, topic: &str) -> Vec<serde_json::Value> {
    let mut by_id: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for record in read_all(broker, topic) {
        let id = record
            .headers
            .get("weir-id")
            .expect("every record Weir produces has an id")
            .clone();
        if let Some(previous) = by_id.insert(id.clone(), record.value.clone()) {
            assert_eq!(
                previous, record.value,
                "two different records share the id {id}"
            );
        }
    }
    by_id
        .values()
        .map(|v| serde_json::from_str(v).expect("JSON record"))
        .collect()
}

/// Every record of every partition of `topic`.
pub fn read_all(broker: &str, topic: &str) -> Vec<ReadRecord> {
    runtime().block_on(async {
        let client = client(broker).await;
        let topics = client.list_topics().await.expect("list topics");
        let partitions = topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for partition in partitions {
            let partition_client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            let end = partition_client
                .get_offset(OffsetAt::Latest)
                .await
                .expect("latest offset");
            let mut offset = partition_client
                .get_offset(OffsetAt::Earliest)
                .await
                .expect("earliest offset");
            while offset < end {
                let (records, _) = partition_client
                    .fetch_records(offset, 1..4_000_000, 500)
                    .await
                    .expect("fetch");
                for record in records {
                    if record.offset < offset {
                        continue;
                    }
                    offset = record.offset + 1;
                    out.push(ReadRecord {
                        partition,
                        offset: record.offset,
                        key: record
                            .record
                            .key
                            .map(|k| String::from_utf8_lossy(&k).into_owned()),
                        value: String::from_utf8_lossy(&record.record.value.unwrap_or_default())
                            .into_owned(),
                        headers: record
                            .record
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                            .collect(),
                    });
                }
            }
        }
        out
    })
}

/// The latest offset (end) of every partition of `topic`, summed.
pub fn total_records(broker: &str, topic: &str) -> i64 {
    runtime().block_on(async {
        let client = client(broker).await;
        let topics = client.list_topics().await.expect("list topics");
        let partitions = topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        let mut total = 0;
        for partition in partitions {
            let partition_client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            total += partition_client
                .get_offset(OffsetAt::Latest)
                .await
                .expect("latest offset");
        }
        total
    })
}

/// Knobs of the telemetry pipeline reading Kafka.
#[derive(Debug, Clone)]
pub struct KafkaPipeline {
    /// `host:port` of the broker.
    pub broker: String,
    /// Input topic.
    pub topic: String,
    /// Topic the alerts go to; `None` writes them as JSON Lines under `alerts/`.
    pub alerts_topic: Option<String>,
    /// End once every partition is read to its end.
    pub stop_at_end: bool,
    /// Extra lines of the `[checkpoint]` table (its `dir` and `interval` are set).
    pub checkpoint: String,
    /// Where the raw table is: a directory relative to the configuration, or a URL.
    pub raw_table: String,
    /// Extra lines of the raw table's sink (such as `storage_options = {...}`).
    pub raw_table_extra: String,
    /// Most events per batch.
    pub batch_max_events: usize,
    /// Checkpoint interval, as configuration text.
    pub checkpoint_interval: String,
    /// Directory of the dead-letter files, relative to the configuration.
    pub dead_letters: String,
    /// Extra lines of the source (such as `tls = {...}`).
    pub source_extra: String,
    /// Extra lines of the Kafka alerts sink, when `alerts_topic` is set.
    pub sink_extra: String,
}

impl KafkaPipeline {
    /// A pipeline on `topic` of `broker` with the defaults of the tests.
    pub fn new(broker: &str, topic: &str) -> KafkaPipeline {
        KafkaPipeline {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
            alerts_topic: None,
            stop_at_end: false,
            checkpoint: "ownership = { expiry = \"2s\", renew_interval = \"400ms\" }".to_owned(),
            raw_table: "delta/raw_telemetry".to_owned(),
            raw_table_extra: String::new(),
            batch_max_events: 256,
            checkpoint_interval: "200ms".to_owned(),
            dead_letters: "dead_letters".to_owned(),
            source_extra: String::new(),
            sink_extra: String::new(),
        }
    }

    /// Writes the configuration as `<dir>/<file>` and returns its path.
    pub fn write(&self, dir: &std::path::Path, file: &str) -> std::path::PathBuf {
        let plugin = crate::plugin_path("telemetry_anomaly");
        let alerts = match &self.alerts_topic {
            Some(topic) => format!(
                "kind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\nkey_field = \"DeviceId\"\n{}",
                self.broker, self.sink_extra
            ),
            None => "kind = \"file\"\npath = \"alerts\"".to_owned(),
        };
        let config = format!(
            r#"
[checkpoint]
dir = "checkpoints"
interval = "{interval}"
{checkpoint}

[sources.telemetry]
kind = "kafka"
brokers = ["{broker}"]
topic = "{topic}"
stop_at_end = {stop_at_end}
fetch_max_wait = "100ms"
{source_extra}

[sinks.raw_telemetry]
kind = "delta"
path = "{raw_table}"
partition_by = ["EventDate"]
{raw_table_extra}
{columns}

[sinks.alerts]
{alerts}

[sinks.dead_letters]
kind = "file"
path = "{dead_letters}"

[pipelines.telemetry]
source = "telemetry"
event_time = {{ field = "Timestamp" }}
dead_letter = "dead_letters"
batch = {{ max_events = {batch}, max_wait = "50ms" }}

[[pipelines.telemetry.stages]]
name = "anomaly"
plugin = "{plugin}"
outputs = {{ alerts = "alerts", rows = "raw_telemetry" }}
"#,
            interval = self.checkpoint_interval,
            checkpoint = self.checkpoint,
            broker = self.broker,
            topic = self.topic,
            stop_at_end = self.stop_at_end,
            source_extra = self.source_extra,
            raw_table = self.raw_table,
            raw_table_extra = self.raw_table_extra,
            columns = crate::telemetry::RAW_TELEMETRY_COLUMNS,
            dead_letters = self.dead_letters,
            batch = self.batch_max_events,
            plugin = plugin.display(),
        );
        let path = dir.join(file);
        std::fs::write(&path, config).expect("write config");
        path
    }
}

/// `(partition, DeviceId, JSON)` records of `readings`, a device always on the same partition
/// (a byte sum: independent of Weir's own partitioning).
pub fn telemetry_records(
    readings: &[crate::telemetry::Reading],
    partitions: i32,
) -> Vec<(i32, String, String)> {
    readings
        .iter()
        .map(|r| {
            let sum: u32 = r.device.bytes().map(u32::from).sum();
            let partition = i32::try_from(sum % partitions as u32).expect("partition");
            (partition, r.device.clone(), r.to_json())
        })
        .collect()
}
