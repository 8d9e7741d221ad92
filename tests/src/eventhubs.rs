//! The Event Hubs-compatible test endpoint (`weir-eventhubs-endpoint`), run in the test process on
//! 127.0.0.1, and the telemetry pipeline reading from and writing to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use weir_eventhubs_endpoint::{Endpoint, EndpointConfig, PublishTo, StoredEvent};

/// The endpoint and the runtime its tasks run on; both stop when dropped.
pub struct TestEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    runtime: tokio::runtime::Runtime,
}

impl TestEndpoint {
    /// Starts an endpoint on a free port of 127.0.0.1 serving `hubs` (name, partitions).
    pub fn start(hubs: &[(&str, u32)]) -> TestEndpoint {
        Self::start_with(EndpointConfig::with_hubs(hubs))
    }

    /// Starts an endpoint with `config`.
    pub fn start_with(config: EndpointConfig) -> TestEndpoint {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            // Named so that a profile tells the endpoint's CPU from its clients'.
            .thread_name("eh-endpoint")
            .enable_all()
            .build()
            .expect("runtime");
        let endpoint = runtime
            .block_on(Endpoint::start(config))
            .expect("start the Event Hubs test endpoint");
        TestEndpoint { endpoint, runtime }
    }

    /// Publishes `(DeviceId, JSON)` records with the DeviceId as partition key, as an IoT device
    /// client would (the endpoint hashes the key to a partition).
    pub fn publish_keyed(&self, hub: &str, records: &[(String, String)]) {
        let _guard = self.runtime.enter();
        for (key, body) in records {
            self.endpoint
                .publish(
                    hub,
                    PublishTo::Key(key),
                    body.as_bytes().to_vec(),
                    &[("source", "test")],
                )
                .expect("publish");
        }
    }

    /// Publishes `bodies` to partition `partition` of `hub`, in order.
    pub fn publish_to_partition(&self, hub: &str, partition: usize, bodies: &[String]) {
        let _guard = self.runtime.enter();
        for body in bodies {
            self.endpoint
                .publish(
                    hub,
                    PublishTo::Partition(partition),
                    body.as_bytes().to_vec(),
                    &[],
                )
                .expect("publish");
        }
    }

    /// Every event of `hub`, all partitions.
    pub fn events(&self, hub: &str) -> Vec<StoredEvent> {
        self.endpoint.all_events(hub).expect("events")
    }

    /// The JSON bodies of `hub`'s events, one per message id (the sink is at least once: a
    /// repeat must carry the same id and the same body; panics otherwise).
    pub fn unique_json(&self, hub: &str) -> Vec<Value> {
        let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for event in self.events(hub) {
            let id = event
                .message_id()
                .expect("every event sent by Weir has an id");
            let body = event.body();
            if let Some(previous) = by_id.insert(id.clone(), body.clone()) {
                assert_eq!(previous, body, "two different events share the id {id}");
            }
        }
        by_id
            .values()
            .map(|body| serde_json::from_slice(body).expect("JSON event"))
            .collect()
    }
}

/// Knobs of the telemetry pipeline on Event Hubs.
#[derive(Debug, Clone)]
pub struct EventHubsPipeline {
    /// Connection string of the input hub (with its `EntityPath`).
    pub input_connection: String,
    /// Connection string of the alerts hub.
    pub alerts_connection: String,
    /// `amqp://127.0.0.1:PORT` of the endpoint.
    pub custom_endpoint: String,
    /// End once every partition is read to its end.
    pub stop_at_end: bool,
    /// Most events per batch.
    pub batch_max_events: usize,
    /// Extra lines of the source table.
    pub source_extra: String,
    /// Checkpoint interval, as configuration text.
    pub checkpoint_interval: String,
    /// The `ownership` table of `[checkpoint]`, as configuration text.
    pub ownership: String,
}

impl EventHubsPipeline {
    /// A pipeline from hub `input` to the Delta table, alerts to hub `alerts`.
    pub fn new(endpoint: &TestEndpoint, input: &str, alerts: &str) -> EventHubsPipeline {
        EventHubsPipeline {
            input_connection: endpoint.endpoint.connection_string(input),
            alerts_connection: endpoint.endpoint.connection_string(alerts),
            custom_endpoint: endpoint.endpoint.custom_endpoint(),
            stop_at_end: false,
            batch_max_events: 256,
            source_extra: String::new(),
            checkpoint_interval: "200ms".to_owned(),
            ownership: "{ expiry = \"2s\", renew_interval = \"400ms\" }".to_owned(),
        }
    }

    /// Writes the configuration as `<dir>/weir.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_as(dir, "weir.toml")
    }

    /// Writes the configuration as `<dir>/<file>` and returns its path.
    pub fn write_as(&self, dir: &Path, file: &str) -> PathBuf {
        let plugin = crate::plugin_path("telemetry_anomaly");
        let config = format!(
            r#"
[checkpoint]
dir = "checkpoints"
interval = "{interval}"
ownership = {ownership}

[sources.telemetry]
kind = "eventhubs"
connection_string = "{input}"
custom_endpoint = "{endpoint}"
consumer_group = "$Default"
start_position = "earliest"
prefetch = 300
lag_interval = "200ms"
stop_at_end = {stop_at_end}
{source_extra}

[sinks.raw_telemetry]
kind = "delta"
path = "delta/raw_telemetry"
partition_by = ["EventDate"]
{columns}

[sinks.alerts]
kind = "eventhubs"
connection_string = "{alerts}"
custom_endpoint = "{endpoint}"
partition_by = "key"
key_field = "DeviceId"
send_timeout = "5s"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

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
            input = self.input_connection,
            alerts = self.alerts_connection,
            endpoint = self.custom_endpoint,
            stop_at_end = self.stop_at_end,
            source_extra = self.source_extra,
            columns = crate::telemetry::RAW_TELEMETRY_COLUMNS,
            batch = self.batch_max_events,
            interval = self.checkpoint_interval,
            ownership = self.ownership,
            plugin = plugin.display(),
        );
        let path = dir.join(file);
        std::fs::write(&path, config).expect("write config");
        path
    }
}

/// `(DeviceId, JSON)` of each reading, in order.
pub fn keyed_records(readings: &[crate::telemetry::Reading]) -> Vec<(String, String)> {
    readings
        .iter()
        .map(|r| (r.device.clone(), r.to_json()))
        .collect()
}

/// The rows of a Delta table keyed by EventId, without `IngestionTime` (the one column that
/// differs between two runs); panics on a row written twice.
pub fn rows_by_event(rows: &[Value]) -> BTreeMap<String, Value> {
    let mut by_event = BTreeMap::new();
    for row in rows {
        let id = row["EventId"].as_str().expect("EventId").to_owned();
        let mut row = row.clone();
        if let Some(map) = row.as_object_mut() {
            map.remove("IngestionTime");
        }
        assert!(
            by_event.insert(id.clone(), row).is_none(),
            "row {id} written twice"
        );
    }
    by_event
}
