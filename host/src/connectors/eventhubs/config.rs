//! Configuration of the Azure Event Hubs source and sink (also IoT Hub's Event Hubs-compatible
//! endpoint, which is the same protocol).

use serde::Deserialize;

use crate::config::ConfigDuration;
use crate::connectors::entra::EntraCredential;

/// How to reach an Event Hub, as both the source and the sink configure it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubsConnectionConfig {
    /// Connection string.
    pub connection_string: Option<String>,
    /// Environment variable holding the connection string.
    pub connection_string_env: Option<String>,
    /// Event Hub name.
    pub event_hub: Option<String>,
    /// Address to connect to instead of the namespace.
    pub custom_endpoint: Option<String>,
    /// Fully qualified namespace, for Entra ID sign-in.
    pub namespace: Option<String>,
    /// Entra ID credential, instead of a connection string.
    pub credential: Option<EntraCredential>,
}

/// An Event Hub read partition by partition: each Event Hubs partition is a Weir partition, and
/// an event's position is its sequence number.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsSourceConfig {
    /// Connection string: `Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<policy>;SharedAccessKey=<key>[;EntityPath=<hub>]`.
    #[serde(default)]
    pub connection_string: Option<String>,
    /// Environment variable holding the connection string, to keep the key out of the file.
    #[serde(default)]
    pub connection_string_env: Option<String>,
    /// Event Hub name; may be omitted when the connection string names it (`EntityPath`).
    #[serde(default)]
    pub event_hub: Option<String>,
    /// Connect to this address instead of the namespace (an emulator, a proxy, the test
    /// endpoint): `amqp://127.0.0.1:5672` (plain) or `amqps://host:port` (TLS).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// Fully qualified namespace (`<namespace>.servicebus.windows.net`), with `credential`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Sign in with Microsoft Entra ID instead of a connection string (with `namespace` and
    /// `event_hub`): `{ kind = "managed_identity" | "workload_identity" | "client_secret" |
    /// "client_certificate" | "azure_cli", ... }`.
    #[serde(default)]
    pub credential: Option<EntraCredential>,
    /// Consumer group to read as.
    #[serde(default = "default_consumer_group")]
    pub consumer_group: String,
    /// Where a partition without a checkpoint starts; with a checkpoint, reading resumes after
    /// the checkpointed sequence number.
    #[serde(default)]
    pub start_position: StartPosition,
    /// Whether a `sequence_number`, `offset` or `enqueued_time` start includes the event at
    /// that position.
    #[serde(default = "default_true")]
    pub start_inclusive: bool,
    /// Events the client fetches ahead of the pipeline, per partition (AMQP link credit).
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Owner level (epoch): a reader with an owner level takes its partition from readers with
    /// a lower one (or none), which are disconnected; absent reads without exclusivity.
    #[serde(default)]
    pub owner_level: Option<i64>,
    /// Number of partitions the hub must have; absent: read from the hub at start.
    #[serde(default)]
    pub partitions: Option<u32>,
    /// How often each partition's consumer lag is refreshed from the partition properties.
    #[serde(default = "default_lag_interval")]
    pub lag_interval: ConfigDuration,
    /// End each partition once it has been read up to the last sequence number its properties
    /// reported, instead of waiting for more (for backfills, benchmarks and tests; the pipeline
    /// ends when every partition has).
    #[serde(default)]
    pub stop_at_end: bool,
}

/// Where a partition without a checkpoint starts reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// The oldest event the partition still holds.
    #[default]
    Earliest,
    /// Only events enqueued after the reader attached.
    Latest,
    /// The event with this sequence number (`start_inclusive`), or the one after it.
    SequenceNumber(i64),
    /// The event at this offset (`start_inclusive`), or the one after it.
    Offset(String),
    /// The first event enqueued at (`start_inclusive`) or after this time (RFC 3339).
    EnqueuedTime(String),
}

/// How the Event Hubs sink chooses the partition of each record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventHubsRouting {
    /// By partition key: `key_field` of the record's JSON, else the record's key; records
    /// without one go where the service puts them. All records of one key stay in order.
    #[default]
    Key,
    /// By partition id: the pipeline partition's number (modulo the hub's partitions), which
    /// keeps each pipeline partition's order.
    Partition,
    /// Wherever the service puts them (round robin).
    Any,
}

/// An Event Hub that records are sent to, in batches, at least once: every record carries a
/// deterministic message id (`<pipeline>/<partition>/<position>/<n>`) for consumers to
/// deduplicate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsSinkConfig {
    /// Connection string: `Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<policy>;SharedAccessKey=<key>[;EntityPath=<hub>]`.
    #[serde(default)]
    pub connection_string: Option<String>,
    /// Environment variable holding the connection string, to keep the key out of the file.
    #[serde(default)]
    pub connection_string_env: Option<String>,
    /// Event Hub name; may be omitted when the connection string names it (`EntityPath`).
    #[serde(default)]
    pub event_hub: Option<String>,
    /// Connect to this address instead of the namespace (an emulator, a proxy, the test
    /// endpoint): `amqp://127.0.0.1:5672` (plain) or `amqps://host:port` (TLS).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// Fully qualified namespace (`<namespace>.servicebus.windows.net`), with `credential`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Sign in with Microsoft Entra ID instead of a connection string (with `namespace` and
    /// `event_hub`): `{ kind = "managed_identity" | "workload_identity" | "client_secret" |
    /// "client_certificate" | "azure_cli", ... }`.
    #[serde(default)]
    pub credential: Option<EntraCredential>,
    /// How records are spread over the hub's partitions.
    #[serde(default)]
    pub partition_by: EventHubsRouting,
    /// Top-level JSON field whose value is the partition key (with `partition_by = "key"`);
    /// absent uses the record's key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Longest wait for one batch to be accepted; after it the client is reopened and the batch
    /// sent again.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: ConfigDuration,
    /// Attempts per batch before the pipeline fails (each after a growing pause).
    #[serde(default = "default_send_attempts")]
    pub max_attempts: u32,
    /// Longest an idle writer waits for more records before it sends what it has (records are
    /// sent as they are written, not at checkpoints; default 5 ms).
    #[serde(default = "default_linger")]
    pub linger: ConfigDuration,
}

macro_rules! connection_of {
    ($config:ty) => {
        impl $config {
            /// The connection settings.
            pub fn connection(&self) -> EventHubsConnectionConfig {
                EventHubsConnectionConfig {
                    connection_string: self.connection_string.clone(),
                    connection_string_env: self.connection_string_env.clone(),
                    event_hub: self.event_hub.clone(),
                    custom_endpoint: self.custom_endpoint.clone(),
                    namespace: self.namespace.clone(),
                    credential: self.credential.clone(),
                }
            }
        }
    };
}
connection_of!(EventHubsSourceConfig);
connection_of!(EventHubsSinkConfig);

fn default_consumer_group() -> String {
    "$Default".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_prefetch() -> u32 {
    300
}
fn default_lag_interval() -> ConfigDuration {
    ConfigDuration::from_millis(5_000)
}
fn default_send_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(30_000)
}
fn default_linger() -> ConfigDuration {
    ConfigDuration::from_millis(5)
}
fn default_send_attempts() -> u32 {
    8
}

/// Checks what types cannot: one source of connection string, a plausible custom endpoint.
pub(crate) fn validate_connection(
    doc: &crate::config::Document<'_>,
    at: &[&str],
    connection: &EventHubsConnectionConfig,
) -> Result<(), crate::config::ConfigError> {
    let key = |field: &'static str| {
        let mut keys = at.to_vec();
        keys.push(field);
        keys
    };
    if let Some(credential) = &connection.credential {
        return validate_entra(doc, at, connection, credential);
    }
    if connection.namespace.is_some() {
        return Err(doc.error(
            &key("namespace"),
            "`namespace` goes with a `credential` table (Entra ID sign-in); with a connection string the namespace is its `Endpoint`",
        ));
    }
    match (
        &connection.connection_string,
        &connection.connection_string_env,
    ) {
        (Some(_), Some(_)) => {
            return Err(doc.error(
                &key("connection_string_env"),
                "give either `connection_string` or `connection_string_env`, not both",
            ));
        }
        (None, None) => {
            return Err(doc.error(
                at,
                "expected `connection_string` (or `connection_string_env`, the name of an environment variable holding it), or a `credential` table (Entra ID sign-in) with `namespace`",
            ));
        }
        (Some(text), None) if !text.to_ascii_lowercase().contains("endpoint=") => {
            return Err(doc.error(
                &key("connection_string"),
                "expected `Endpoint=sb://<namespace>/;SharedAccessKeyName=...;SharedAccessKey=...`",
            ));
        }
        _ => {}
    }
    validate_endpoint_and_hub(doc, at, connection)
}

/// With a `credential`: no connection string, a namespace and a hub, a usable credential.
fn validate_entra(
    doc: &crate::config::Document<'_>,
    at: &[&str],
    connection: &EventHubsConnectionConfig,
    credential: &EntraCredential,
) -> Result<(), crate::config::ConfigError> {
    let key = |field: &'static str| {
        let mut keys = at.to_vec();
        keys.push(field);
        keys
    };
    if connection.connection_string.is_some() || connection.connection_string_env.is_some() {
        let field = if connection.connection_string.is_some() {
            "connection_string"
        } else {
            "connection_string_env"
        };
        return Err(doc.error(
            &key(field),
            "give either a connection string or a `credential` table (Entra ID sign-in), not both",
        ));
    }
    match connection.namespace.as_deref() {
        None | Some("") => {
            return Err(doc.error(
                at,
                "expected `namespace` (`<namespace>.servicebus.windows.net`) with a `credential` table",
            ));
        }
        Some(namespace) if namespace.contains("://") || namespace.contains('/') => {
            return Err(doc.error(
                &key("namespace"),
                format!("expected a host name such as `<namespace>.servicebus.windows.net`, found `{namespace}`"),
            ));
        }
        Some(_) => {}
    }
    if connection.event_hub.is_none() {
        return Err(doc.error(at, "expected `event_hub` with a `credential` table"));
    }
    let mut credential_at = at.to_vec();
    credential_at.push("credential");
    crate::connectors::entra::config::validate(doc, &credential_at, credential)?;
    validate_endpoint_and_hub(doc, at, connection)
}

/// A plausible custom endpoint and a non-empty hub name.
fn validate_endpoint_and_hub(
    doc: &crate::config::Document<'_>,
    at: &[&str],
    connection: &EventHubsConnectionConfig,
) -> Result<(), crate::config::ConfigError> {
    let key = |field: &'static str| {
        let mut keys = at.to_vec();
        keys.push(field);
        keys
    };
    if let Some(endpoint) = &connection.custom_endpoint
        && !(endpoint.starts_with("amqp://") || endpoint.starts_with("amqps://"))
    {
        return Err(doc.error(
            &key("custom_endpoint"),
            format!(
                "expected an `amqp://host:port` or `amqps://host:port` URL, found `{endpoint}`"
            ),
        ));
    }
    if connection.event_hub.as_deref() == Some("") {
        return Err(doc.error(
            &key("event_hub"),
            "expected an Event Hub name (or no `event_hub`, when the connection string has `EntityPath`)",
        ));
    }
    Ok(())
}

/// Checks an Event Hubs source.
pub(crate) fn validate_source(
    doc: &crate::config::Document<'_>,
    name: &str,
    config: &EventHubsSourceConfig,
) -> Result<(), crate::config::ConfigError> {
    validate_connection(doc, &["sources", name], &config.connection())?;
    if config.prefetch == 0 {
        return Err(doc.error(
            &["sources", name, "prefetch"],
            "expected at least 1 event (the events fetched ahead per partition), found 0",
        ));
    }
    if config.consumer_group.is_empty() {
        return Err(doc.error(
            &["sources", name, "consumer_group"],
            "expected a consumer group name (the default one is `$Default`)",
        ));
    }
    match &config.start_position {
        StartPosition::EnqueuedTime(time)
            if chrono::DateTime::parse_from_rfc3339(time).is_err() =>
        {
            return Err(doc.error(
                &["sources", name, "start_position", "enqueued_time"],
                format!("expected an RFC 3339 time such as `2026-01-01T00:00:00Z`, found `{time}`"),
            ));
        }
        StartPosition::SequenceNumber(n) if *n < 0 => {
            return Err(doc.error(
                &["sources", name, "start_position", "sequence_number"],
                format!("expected a sequence number of 0 or more, found {n}"),
            ));
        }
        StartPosition::Offset(offset) if offset.is_empty() => {
            return Err(doc.error(
                &["sources", name, "start_position", "offset"],
                "expected an offset (an event's `x-opt-offset`, such as `4294967296`), found an empty string",
            ));
        }
        _ => {}
    }
    if config.lag_interval.get().is_zero() {
        return Err(doc.error(
            &["sources", name, "lag_interval"],
            "expected a duration above zero",
        ));
    }
    Ok(())
}

/// Checks an Event Hubs sink.
pub(crate) fn validate_sink(
    doc: &crate::config::Document<'_>,
    name: &str,
    config: &EventHubsSinkConfig,
) -> Result<(), crate::config::ConfigError> {
    validate_connection(doc, &["sinks", name], &config.connection())?;
    if config.max_attempts == 0 {
        return Err(doc.error(
            &["sinks", name, "max_attempts"],
            "expected at least 1 attempt per batch",
        ));
    }
    Ok(())
}

impl EventHubsSourceConfig {
    /// How a pipeline reading this hub is known in the checkpoint store: the namespace of the
    /// connection string's `Endpoint`, the hub and the consumer group, as the Azure SDKs' event
    /// processors name them, so that checkpoints move between Weir and an EventProcessorClient.
    pub fn consumer_scope(&self) -> crate::event::ConsumerScope {
        let text = match (&self.connection_string, &self.connection_string_env) {
            (Some(text), _) => text.clone(),
            (None, Some(variable)) => std::env::var(variable).unwrap_or_default(),
            (None, None) => String::new(),
        };
        let field = |name: &str| {
            text.split(';').find_map(|part| {
                let (key, value) = part.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let namespace = self
            .namespace
            .clone()
            .or_else(|| field("Endpoint"))
            .map(|endpoint| {
                let host = endpoint
                    .split_once("://")
                    .map_or(endpoint.as_str(), |(_, h)| h);
                host.split(['/', ':']).next().unwrap_or(host).to_owned()
            })
            .unwrap_or_default();
        crate::event::ConsumerScope {
            namespace,
            hub: self
                .event_hub
                .clone()
                .or_else(|| field("EntityPath"))
                .unwrap_or_default(),
            consumer_group: self.consumer_group.clone(),
        }
    }
}
