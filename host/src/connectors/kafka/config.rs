//! Configuration of the Kafka source and sink.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigDuration, ConfigError, Document, LoadedConfig};
use crate::event::ConsumerScope;

/// How to reach a Kafka cluster (or a Kafka-compatible endpoint such as Event Hubs' or Redpanda).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnection {
    /// Bootstrap brokers, `host:port` each (Event Hubs: `<namespace>.servicebus.windows.net:9093`).
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
    /// TLS to the brokers; absent connects in plain text.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication; absent connects without.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Longest wait for a broker's answer before the request is retried or fails.
    #[serde(default = "default_kafka_timeout")]
    pub timeout: ConfigDuration,
    /// Longest the brokers may stay unreachable (a restart, a network outage) while the source
    /// reconnects and the sink retries, with backoff, before the pipeline fails.
    #[serde(default = "default_kafka_max_outage")]
    pub max_outage: ConfigDuration,
}

fn default_kafka_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(30_000)
}
fn default_kafka_max_outage() -> ConfigDuration {
    ConfigDuration::from_millis(300_000)
}

/// TLS settings of a Kafka connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM file of the certificate authorities to trust, instead of the system's roots (a private
    /// CA, or a test broker's self-signed certificate).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// SASL settings of a Kafka connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// The mechanism: `plain` (what Event Hubs' Kafka endpoint uses, with TLS), `scram-sha-256`
    /// or `scram-sha-512`.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// User name (Event Hubs: `$ConnectionString`).
    pub username: String,
    /// Password (Event Hubs: the connection string). `${NAME}` is replaced by the environment
    /// variable `NAME`, so secrets need not be in the file.
    pub password: String,
}

/// SASL mechanisms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaslMechanism {
    /// PLAIN: user name and password, in the clear (use it with TLS).
    #[default]
    Plain,
    /// SCRAM-SHA-256 (`kebab-case` alone would spell it `scram-sha256`).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

/// A Kafka topic read partition by partition, with positions in Weir's checkpoint store (Weir
/// does not use Kafka consumer groups: processes share partitions through ownership claims).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Brokers, topic, TLS and SASL.
    #[serde(flatten)]
    pub connection: KafkaConnection,
    /// Where a partition without a checkpoint starts: `earliest` or `latest`.
    #[serde(default)]
    pub start: KafkaStart,
    /// Name of this reader in the checkpoint store (`<namespace>/<topic>/<consumer_group>/…`);
    /// defaults to the pipeline's name.
    #[serde(default)]
    pub consumer_group: Option<String>,
    /// First part of the checkpoint store's layout; defaults to the first broker's host.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Most bytes one fetch asks a broker for.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: i32,
    /// Longest a broker holds a fetch open waiting for new records.
    #[serde(default = "default_fetch_max_wait")]
    pub fetch_max_wait: ConfigDuration,
    /// End each partition once it has been read to its end, instead of waiting for more (for
    /// backfills, benchmarks and tests; the pipeline ends when every partition has).
    #[serde(default)]
    pub stop_at_end: bool,
    /// What a record batch that cannot be decoded (a corrupt batch, a codec the client does not
    /// know) does: `stop` the partition's reading with an error naming the topic, partition,
    /// offset and cause (the default), or `dead_letter` what can be identified of it (topic,
    /// partition, offset range, cause) and read on after it.
    #[serde(default)]
    pub on_undecodable: KafkaUndecodable,
}

impl KafkaSourceConfig {
    /// How `pipeline`, reading this topic, is known in the checkpoint store: `namespace` (by
    /// default the first broker's host), the topic, and `consumer_group` (by default the
    /// pipeline's name).
    pub fn consumer_scope(&self, pipeline: &str) -> ConsumerScope {
        ConsumerScope {
            namespace: self.namespace.clone().unwrap_or_else(|| {
                let first = self
                    .connection
                    .brokers
                    .first()
                    .map_or("kafka", String::as_str);
                first
                    .rsplit_once(':')
                    .map_or(first, |(host, _)| host)
                    .to_owned()
            }),
            hub: self.connection.topic.clone(),
            consumer_group: self
                .consumer_group
                .clone()
                .unwrap_or_else(|| pipeline.to_owned()),
        }
    }
}

fn default_fetch_max_bytes() -> i32 {
    4 * 1024 * 1024
}
fn default_fetch_max_wait() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}

/// Where a Kafka partition without a checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaStart {
    /// The oldest record the broker still has.
    #[default]
    Earliest,
    /// Only records produced after the partition is opened.
    Latest,
}

/// What the Kafka source does with a record batch it cannot decode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaUndecodable {
    /// Stop reading the partition, naming the topic, partition, offset and cause.
    #[default]
    Stop,
    /// Write the batch's topic, partition, offset range and cause to the dead letters and read
    /// on after it.
    DeadLetter,
}

/// A Kafka topic written to; at least once, every record carrying a deterministic id header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Brokers, topic, TLS and SASL.
    #[serde(flatten)]
    pub connection: KafkaConnection,
    /// Top-level JSON field of the record whose value is the Kafka key (records keep their own
    /// key otherwise).
    #[serde(default)]
    pub key_field: Option<String>,
    /// Which partition a record goes to: `key` (Kafka's murmur2 of the key, as the Java client
    /// does; records without a key go to their source partition modulo the topic's partitions)
    /// or `source_partition` (the pipeline partition it came from, modulo the topic's).
    #[serde(default)]
    pub partition_by: KafkaPartitioning,
    /// Records sent in one produce request per partition, at most.
    #[serde(default = "default_kafka_batch")]
    pub batch_max_records: usize,
    /// The codec of the record batches written: `none`, `gzip`, `snappy`, `lz4` or `zstd`
    /// (default `none`; the source reads all five).
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Longest an idle writer waits for more records before it produces what it has (records
    /// are produced as they are written, not at checkpoints; default 5 ms).
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
}

fn default_linger() -> ConfigDuration {
    ConfigDuration::from_millis(5)
}

/// A Kafka record batch codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy (Kafka's framing, as the Java client writes it).
    Snappy,
    /// LZ4 (frame format).
    Lz4,
    /// Zstandard.
    Zstd,
}

fn default_kafka_batch() -> usize {
    1000
}

/// How the Kafka sink picks a record's partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaPartitioning {
    /// By key, as Kafka's own producers do.
    #[default]
    Key,
    /// The same partition number as the record's source partition.
    SourcePartition,
}

/// Checks what types cannot in a Kafka connection at `at`: SASL credentials, the CA file, the
/// brokers and the topic.
pub(crate) fn validate_connection(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    at: &[&str],
    connection: &KafkaConnection,
) -> Result<(), ConfigError> {
    let key = |k: &'static str| {
        let mut keys = at.to_vec();
        keys.push(k);
        keys
    };
    let nested = |table: &'static str, k: &'static str| {
        let mut keys = at.to_vec();
        keys.extend([table, k]);
        keys
    };
    if let Some(sasl) = &connection.sasl {
        if sasl.username.trim().is_empty() {
            return Err(doc.error(
                &nested("sasl", "username"),
                "expected a user name (Event Hubs: `$ConnectionString`)",
            ));
        }
        if sasl.password.is_empty() {
            return Err(doc.error(
                &nested("sasl", "password"),
                "expected a password (Event Hubs: the connection string, or `${NAME}` for an environment variable)",
            ));
        }
    }
    if let Some(ca_file) = connection.tls.as_ref().and_then(|tls| tls.ca_file.as_ref())
        && !loaded.resolve(ca_file).is_file()
    {
        return Err(doc.error(
            &nested("tls", "ca_file"),
            format!(
                "expected a PEM file of certificate authorities, found no file at {}",
                loaded.resolve(ca_file).display()
            ),
        ));
    }
    if connection.brokers.is_empty() {
        return Err(doc.error(&key("brokers"), "expected at least one `host:port`"));
    }
    for broker in &connection.brokers {
        let port = broker.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(doc.error(
                &key("brokers"),
                format!("expected `host:port`, found `{broker}`"),
            ));
        }
    }
    if connection.topic.trim().is_empty() {
        return Err(doc.error(&key("topic"), "expected a topic name"));
    }
    Ok(())
}

/// Checks a Kafka source.
pub(crate) fn validate_source(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    name: &str,
    kafka: &KafkaSourceConfig,
) -> Result<(), ConfigError> {
    validate_connection(loaded, doc, &["sources", name], &kafka.connection)?;
    if kafka.fetch_max_bytes < 1024 {
        return Err(doc.error(
            &["sources", name, "fetch_max_bytes"],
            format!("expected at least 1024, found {}", kafka.fetch_max_bytes),
        ));
    }
    Ok(())
}

/// Checks a Kafka sink.
pub(crate) fn validate_sink(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    name: &str,
    kafka: &KafkaSinkConfig,
) -> Result<(), ConfigError> {
    validate_connection(loaded, doc, &["sinks", name], &kafka.connection)?;
    if kafka.batch_max_records == 0 {
        return Err(doc.error(&["sinks", name, "batch_max_records"], "expected at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{SinkConfig, SourceConfig, load_str};

    const KAFKA: &str = r#"
[sources.in]
kind = "kafka"
brokers = ["127.0.0.1:9092"]
topic = "in"
SOURCE

[sinks.out]
kind = "kafka"
brokers = ["127.0.0.1:9092"]
topic = "out"
SINK

[pipelines.p]
source = "in"
dead_letter = "out"

[[pipelines.p.stages]]
name = "s"
plugin = "p.wasm"
outputs = { alerts = "out" }
"#;

    fn load(source: &str, sink: &str) -> Result<LoadedConfig, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        let text = KAFKA.replace("SOURCE", source).replace("SINK", sink);
        load_str(&text, Path::new("weir.toml"), dir.path()).map_err(|e| e.to_string())
    }

    fn settings(loaded: &LoadedConfig) -> (KafkaUndecodable, KafkaCompression) {
        let SourceConfig::Kafka(source) = &loaded.config.sources["in"] else {
            panic!("a Kafka source");
        };
        let SinkConfig::Kafka(sink) = &loaded.config.sinks["out"] else {
            panic!("a Kafka sink");
        };
        (source.on_undecodable, sink.compression)
    }

    #[test]
    fn codecs_and_the_undecodable_policy_load_with_their_defaults() {
        let loaded = load("", "").expect("valid");
        assert_eq!(
            settings(&loaded),
            (KafkaUndecodable::Stop, KafkaCompression::None)
        );
        for (name, codec) in [
            ("none", KafkaCompression::None),
            ("gzip", KafkaCompression::Gzip),
            ("snappy", KafkaCompression::Snappy),
            ("lz4", KafkaCompression::Lz4),
            ("zstd", KafkaCompression::Zstd),
        ] {
            let loaded = load(
                "on_undecodable = \"dead_letter\"",
                &format!("compression = \"{name}\""),
            )
            .expect("valid");
            assert_eq!(settings(&loaded), (KafkaUndecodable::DeadLetter, codec));
        }
    }

    #[test]
    fn unknown_codecs_and_policies_are_refused_with_line_and_key() {
        let err = load("", "compression = \"brotli\"").expect_err("unknown codec");
        assert!(err.starts_with("weir.toml:12:"), "{err}");
        assert!(err.contains("`sinks.out.compression`"), "{err}");
        assert!(err.contains("unknown variant `brotli`"), "{err}");
        assert!(
            err.contains("`none`, `gzip`, `snappy`, `lz4`, `zstd`"),
            "{err}"
        );
        let err = load("on_undecodable = \"skip\"", "").expect_err("unknown policy");
        assert!(err.starts_with("weir.toml:6:"), "{err}");
        assert!(err.contains("`sources.in.on_undecodable`"), "{err}");
        assert!(err.contains("expected `stop` or `dead_letter`"), "{err}");
    }
}
