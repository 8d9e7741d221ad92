//! Configuration of the broker and cloud connectors: Kafka, webhooks and Azure Blob Storage.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigDuration;

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

/// An HTTP endpoint that receives records as JSON POSTs (Logic Apps, Fabric custom endpoints,
/// Teams or Slack incoming webhooks). At least once: a record is retried with backoff and goes to
/// the pipeline's dead letters when every attempt failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// The URL to POST to.
    pub url: String,
    /// Extra request headers (for example `Authorization`); `${NAME}` in a value is replaced by
    /// the environment variable `NAME`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Records per request: 1 posts each record as one JSON object; more posts JSON arrays.
    #[serde(default = "default_webhook_batch")]
    pub batch_max_records: usize,
    /// Longest one request may take.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: ConfigDuration,
    /// Attempts after the first one before the records are dead-lettered.
    #[serde(default = "default_webhook_retries")]
    pub max_retries: u32,
    /// Wait before the first retry; each further retry waits twice as long, up to `max_backoff`.
    /// A `Retry-After` header from the server is honoured up to `max_backoff`.
    #[serde(default = "default_webhook_backoff")]
    pub initial_backoff: ConfigDuration,
    /// Longest wait between two attempts.
    #[serde(default = "default_webhook_max_backoff")]
    pub max_backoff: ConfigDuration,
}

fn default_webhook_batch() -> usize {
    1
}
fn default_webhook_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}
fn default_webhook_retries() -> u32 {
    5
}
fn default_webhook_backoff() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}
fn default_webhook_max_backoff() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}

/// Checkpoints and ownership claims in an Azure Blob Storage container, in the Azure SDKs'
/// event-processor layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobCheckpointConfig {
    /// The storage account (also read from `AZURE_STORAGE_ACCOUNT_NAME`).
    #[serde(default)]
    pub account: Option<String>,
    /// The container (it must exist).
    pub container: String,
    /// The Blob service URL, for emulators and sovereign clouds (for Azurite:
    /// `http://127.0.0.1:10000/devstoreaccount1`); defaults to the public cloud's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Further `object_store` Azure options (`azure_storage_account_key`, `azure_client_id`,
    /// `azure_storage_sas_key`, `azure_allow_http`, …); `${NAME}` in a value is replaced by the
    /// environment variable `NAME`. Without credentials here, the `AZURE_*` environment variables
    /// and managed identity are used.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Replaces every `${NAME}` in `value` by the environment variable `NAME` (empty when unset).
pub fn expand_env(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                out.push_str(&std::env::var(&after[..end]).unwrap_or_default());
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_are_expanded() {
        // PATH is set in every test environment; an unknown variable expands to nothing.
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(expand_env("a${PATH}b"), format!("a{path}b"));
        assert_eq!(expand_env("${WEIR_SURELY_UNSET_VARIABLE}x"), "x");
        assert_eq!(expand_env("no ${ closing"), "no ${ closing");
    }
}
