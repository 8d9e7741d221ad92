//! The typed configuration of a Weir process: sources, sinks and pipelines in one TOML file.
//!
//! Every struct denies unknown fields, so a typo is refused at start with the file, the line, the
//! key and what was expected (see [`load`]). Relative paths are resolved against the directory of
//! the configuration file.

mod duration;
mod env;
mod load;
mod stage;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::event::ConsumerScope;

pub use crate::connectors::azure_blob::config::AzureBlobCheckpointConfig;
pub use crate::connectors::delta::config::{ColumnType, ColumnValue, DeltaColumn, DeltaSinkConfig};
pub use crate::connectors::eventhubs::config::{
    EventHubsConnectionConfig, EventHubsRouting, EventHubsSinkConfig, EventHubsSourceConfig,
    StartPosition,
};
pub use crate::connectors::file::config::{FileSinkConfig, FileSourceConfig};
pub use crate::connectors::http::config::{EntraConfig, HttpSourceConfig, IngestAuthConfig};
pub use crate::connectors::kafka::config::{
    KafkaCompression, KafkaConnection, KafkaPartitioning, KafkaSasl, KafkaSinkConfig,
    KafkaSourceConfig, KafkaStart, KafkaTls, KafkaUndecodable, SaslMechanism,
};
pub use crate::connectors::stdout::config::StdoutSinkConfig;
pub use crate::connectors::webhook::config::WebhookSinkConfig;
pub use crate::generators::bookings::config::BookingsSourceConfig;
pub use crate::generators::telemetry::config::SimulatorSourceConfig;
pub use duration::ConfigDuration;
pub use env::expand_env;
pub(crate) use load::Document;
pub use load::{ConfigError, LoadedConfig, load, load_str};
use stage::StageTable;
pub use stage::{
    DedupConfig, Destinations, JoinConfig, PluginStage, ReferenceFormat, ReferenceTableConfig,
    StageConfig, StageKind, UnmatchedPolicy, WindowConfig, WindowKind, WindowSemantics,
    check_case_timing,
};

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where checkpoints are kept and how often they are written.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Defaults for every Wasm stage; a stage may override them.
    #[serde(default)]
    pub plugins: PluginDefaults,
    /// Event sources, by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Sinks, by name. Pipelines route stage outputs and dead letters to them.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Pipelines, by name: one source, a chain of stages, routes to sinks.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// The admin HTTP API (health, readiness, metrics, pipelines, plugins, upload and rollback);
    /// absent: no admin server.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Health alerts on consumer lag, error rate and throughput drop; absent: none.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// How the process behaves as a service.
    #[serde(default)]
    pub service: ServiceConfig,
    /// Where keyed state too large for memory goes.
    #[serde(default)]
    pub state: StateConfig,
}

/// Keyed state larger than memory: a transform stage's state is a *base* (its whole state as of
/// its last compaction, looked up in place) and the keys changed since; a base larger than
/// `spill_above_bytes` is kept in a file of `spill_dir` mapped into memory, so the kernel pages
/// it in as keys are looked up and drops pages when memory is short, instead of the process
/// holding it all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the spill files (relative paths are relative to the configuration file). Put
    /// it on a disk, not on a memory file system such as `/tmp` on some systems. Files are
    /// unlinked as they are created: the directory looks empty, and a crash leaves nothing.
    #[serde(default = "default_spill_dir")]
    pub spill_dir: PathBuf,
    /// A base larger than this many bytes is spilled; 0 spills every base. Each spill writes the
    /// base to the spill directory once per compaction (besides its checkpoint file).
    #[serde(default = "default_spill_above_bytes")]
    pub spill_above_bytes: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            spill_dir: default_spill_dir(),
            spill_above_bytes: default_spill_above_bytes(),
        }
    }
}

fn default_spill_dir() -> PathBuf {
    PathBuf::from("data/state-spill")
}

/// 64 MiB: about 750,000 keys of the anomaly rule's state.
fn default_spill_above_bytes() -> u64 {
    64 << 20
}

impl Config {
    /// The consumer scope of every pipeline: its source's namespace and stream, and its consumer
    /// group.
    pub fn consumer_scopes(&self) -> std::collections::HashMap<String, ConsumerScope> {
        self.pipelines
            .iter()
            .map(|(name, pipeline)| {
                // A pipeline with several sources keeps its checkpoints and claims under its
                // first source's scope: a claim covers every source of the partition.
                let first = pipeline.sources.first().map_or("", String::as_str);
                let scope = match self.sources.get(first) {
                    Some(source) => source.consumer_scope(first, name),
                    None => ConsumerScope::local(first, name),
                };
                (name.clone(), scope)
            })
            .collect()
    }
}

/// The admin HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port, logged at start).
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Bearer token that uploads and rollbacks require. Absent: the `WEIR_ADMIN_TOKEN` environment
    /// variable; with neither, uploads and rollbacks are refused.
    #[serde(default)]
    pub token: Option<String>,
    /// Largest plugin upload accepted, in bytes.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: usize,
    /// Bearer token that reads (`/metrics`, `/pipelines`, `/plugins`) require; the write token
    /// is accepted too. Absent: the `WEIR_ADMIN_READ_TOKEN` environment variable; with neither,
    /// reads are open. `/healthz` and `/readyz` stay open for probes.
    #[serde(default)]
    pub read_token: Option<String>,
    /// TLS of the admin API (certificate and key files, read again when they change).
    #[serde(default)]
    pub tls: Option<crate::net::TlsConfig>,
    /// Serve plain HTTP on an address other than loopback (tokens in the clear).
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn default_admin_address() -> String {
    "127.0.0.1:9464".to_owned()
}

fn default_max_upload_bytes() -> usize {
    64 * 1024 * 1024
}

/// Health alerts: each threshold, when crossed, emits an alert event to `sink`, and a `resolved`
/// event when it is no longer crossed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Sink that receives the alert events (JSON objects).
    pub sink: String,
    /// How often the thresholds are evaluated; rates are measured over this interval.
    #[serde(default = "default_health_interval")]
    pub interval: ConfigDuration,
    /// Alert when a partition's consumer lag (in its source's units) is above this.
    #[serde(default)]
    pub max_lag: Option<u64>,
    /// Alert when a pipeline's dead letters over its events in, over one interval, are above this
    /// fraction.
    #[serde(default)]
    pub max_error_ratio: Option<f64>,
    /// Alert when a pipeline's events per second over one interval fall below this fraction of
    /// their average over the previous `baseline_intervals` intervals.
    #[serde(default)]
    pub min_throughput_ratio: Option<f64>,
    /// Intervals averaged into the throughput baseline.
    #[serde(default = "default_baseline_intervals")]
    pub baseline_intervals: usize,
}

fn default_health_interval() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}

fn default_baseline_intervals() -> usize {
    6
}

/// How the process behaves as a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// On SIGTERM or SIGINT, the longest the process waits for its workers to drain, commit and
    /// checkpoint before it gives up and exits with an error.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: ConfigDuration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            stop_timeout: default_stop_timeout(),
        }
    }
}

fn default_stop_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(30_000)
}

/// The checkpoint store and its cadence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the local checkpoint store (one file per pipeline and partition).
    #[serde(default = "default_checkpoint_dir")]
    pub dir: PathBuf,
    /// How often each partition flushes its sinks and writes a checkpoint.
    #[serde(default = "default_checkpoint_interval")]
    pub interval: ConfigDuration,
    /// Keep checkpoints and ownership claims in Azure Blob Storage instead of `dir`, in the Azure
    /// SDKs' event-processor layout (so several processes, and EventProcessorClients, share them).
    #[serde(default)]
    pub azure_blob: Option<AzureBlobCheckpointConfig>,
    /// How processes share the partitions of Kafka and Event Hubs sources.
    #[serde(default)]
    pub ownership: OwnershipConfig,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: default_checkpoint_dir(),
            interval: default_checkpoint_interval(),
            azure_blob: None,
            ownership: OwnershipConfig::default(),
        }
    }
}

/// Partition ownership: each process claims partitions in the checkpoint store, renews its claims
/// and takes over those of a process that stopped renewing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipConfig {
    /// A claim not renewed within this long is free for another process to take: the longest a
    /// killed process's partitions wait. The Azure SDKs use 60 to 120 s.
    #[serde(default = "default_ownership_expiry")]
    pub expiry: ConfigDuration,
    /// How often claims are renewed and partitions rebalanced; defaults to a third of `expiry`.
    #[serde(default)]
    pub renew_interval: Option<ConfigDuration>,
    /// This process's owner id in the claims; defaults to a new random id at every start.
    #[serde(default)]
    pub owner_id: Option<String>,
}

impl Default for OwnershipConfig {
    fn default() -> Self {
        OwnershipConfig {
            expiry: default_ownership_expiry(),
            renew_interval: None,
            owner_id: None,
        }
    }
}

fn default_ownership_expiry() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}

fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("data/checkpoints")
}

fn default_checkpoint_interval() -> ConfigDuration {
    ConfigDuration::from_millis(5_000)
}

/// Sandbox limits applied to every plugin instance unless a stage sets its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDefaults {
    /// Largest linear memory one instance may grow to, in bytes.
    #[serde(default = "default_max_memory_bytes")]
    pub max_memory_bytes: u64,
    /// Longest a single call into a plugin (one batch) may run before it is interrupted.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: ConfigDuration,
    /// Watch each stage's plugin file and load it as a new version when it changes.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How long a changed plugin file must stay unchanged before it is loaded.
    #[serde(default = "default_watch_settle")]
    pub watch_settle: ConfigDuration,
    /// Directory of the version store: every version by content hash, each stage's version
    /// history, and the compiled forms (so that a restart does not recompile).
    #[serde(default = "default_store_dir")]
    pub store_dir: PathBuf,
    /// When a new version is rolled back by itself.
    #[serde(default)]
    pub rollback: RollbackConfig,
    /// Ed25519 public keys (base64): when any is set, a component runs only if signed by one of
    /// them (at start, from the plugins directory and by upload alike). Empty: any component.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

impl Default for PluginDefaults {
    fn default() -> Self {
        PluginDefaults {
            max_memory_bytes: default_max_memory_bytes(),
            call_timeout: default_call_timeout(),
            watch: true,
            watch_settle: default_watch_settle(),
            store_dir: default_store_dir(),
            rollback: RollbackConfig::default(),
            trusted_keys: Vec::new(),
        }
    }
}

fn default_watch_settle() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}

fn default_store_dir() -> PathBuf {
    PathBuf::from("data/plugins")
}

/// The probation of a new plugin version: over its first `probation_events` events (all
/// partitions together), it is rolled back to the version it replaced if more than
/// `max_trap_ratio` of them trap, or more than `max_error_ratio` trap or are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    /// Events a new version is watched for.
    #[serde(default = "default_probation_events")]
    pub probation_events: u64,
    /// Largest tolerated share of trapping events.
    #[serde(default = "default_max_trap_ratio")]
    pub max_trap_ratio: f64,
    /// Largest tolerated share of trapping or rejected events.
    #[serde(default = "default_max_error_ratio")]
    pub max_error_ratio: f64,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        RollbackConfig {
            probation_events: default_probation_events(),
            max_trap_ratio: default_max_trap_ratio(),
            max_error_ratio: default_max_error_ratio(),
        }
    }
}

fn default_probation_events() -> u64 {
    1000
}

fn default_max_trap_ratio() -> f64 {
    0.05
}

fn default_max_error_ratio() -> f64 {
    0.5
}

fn default_max_memory_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_call_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(5_000)
}

/// One event source. `kind` selects the connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// The built-in IoT telemetry simulator.
    Simulator(SimulatorSourceConfig),
    /// Replay of a JSON Lines file.
    File(FileSourceConfig),
    /// An HTTP endpoint that accepts JSON events.
    Http(HttpSourceConfig),
    /// An Azure Event Hub (or IoT Hub's Event Hubs-compatible endpoint).
    #[serde(rename = "eventhubs")]
    EventHubs(EventHubsSourceConfig),
    /// The built-in booking platform simulator: bookings and their payments.
    Bookings(BookingsSourceConfig),
    /// A Kafka topic (or Event Hubs' Kafka endpoint).
    Kafka(KafkaSourceConfig),
}

impl SourceConfig {
    /// The number of partitions the source is split into, when the configuration says (a broker's
    /// topic knows its own).
    pub fn partitions(&self) -> Option<u32> {
        match self {
            SourceConfig::Simulator(c) => Some(c.partitions),
            SourceConfig::File(c) => Some(c.partitions),
            SourceConfig::Http(c) => Some(c.partitions),
            SourceConfig::EventHubs(c) => c.partitions,
            SourceConfig::Bookings(c) => Some(c.partitions),
            SourceConfig::Kafka(_) => None,
        }
    }

    /// How `pipeline`, reading this source (named `source`), is known in the checkpoint store:
    /// brokers say their own scope, other sources are in Weir's namespace.
    pub fn consumer_scope(&self, source: &str, pipeline: &str) -> ConsumerScope {
        match self {
            SourceConfig::Kafka(kafka) => kafka.consumer_scope(pipeline),
            SourceConfig::EventHubs(eventhubs) => eventhubs.consumer_scope(),
            _ => ConsumerScope::local(source, pipeline),
        }
    }
}

/// One sink. `kind` selects the connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// A Delta Lake table.
    Delta(DeltaSinkConfig),
    /// JSON Lines files, one per pipeline and partition.
    File(FileSinkConfig),
    /// Standard output, one JSON document per line.
    Stdout(StdoutSinkConfig),
    /// A Kafka topic (or Event Hubs' Kafka endpoint).
    Kafka(KafkaSinkConfig),
    /// JSON POSTs to an HTTP endpoint.
    Webhook(WebhookSinkConfig),
    /// An Azure Event Hub, at least once.
    #[serde(rename = "eventhubs")]
    EventHubs(EventHubsSinkConfig),
}

/// A pipeline: events of one source through a chain of stages into sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name of the source of a pipeline with one (`source = "x"`); a pipeline with several names
    /// them in `sources` instead. Read through [`PipelineConfig::sources`].
    #[serde(default, rename = "source")]
    one_source: Option<String>,
    /// Names of the sources of a pipeline with several (`sources = ["bookings", "payments"]`).
    /// They must be co-partitioned (the same partition count and key hashing): pipeline partition
    /// *i* reads partition *i* of each, in one worker. Read through [`PipelineConfig::sources`].
    #[serde(default, rename = "sources")]
    source_list: Option<Vec<String>>,
    /// The pipeline's sources in order: its `source`, or its `sources`. Filled by [`load`].
    #[serde(skip)]
    pub sources: Vec<String>,
    /// The pipeline's first source: its only one when it names one with `source = ".."`. Filled
    /// by [`load`]; code that handles several sources reads `sources`.
    #[serde(skip)]
    pub source: String,
    /// Where each source's events enter the stages, by source name: the stages that name it as
    /// their `input` or as a join's `left` or `right`, else the first stage. Filled by [`load`].
    #[serde(skip)]
    pub source_entries: BTreeMap<String, Vec<SourceEntry>>,
    /// Where event time comes from; absent uses the time the event was enqueued or received.
    #[serde(default)]
    pub event_time: Option<EventTimeConfig>,
    /// Sink that receives rejected and undecodable events with the reason.
    pub dead_letter: String,
    /// Events larger than this many bytes go to the dead-letter sink unprocessed.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How events are grouped into batches for the stages.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The `[[pipelines.<name>.stages]]` tables as written: loading checks them and resolves
    /// them into `stages` (and empties this).
    #[serde(rename = "stages")]
    stage_tables: Vec<StageTable>,
    /// The stages, in order: source events enter the first one; each stage routes its outputs to
    /// sinks or to later stages. Filled by [`load`] from the file's stage tables.
    #[serde(skip)]
    pub stages: Vec<StageConfig>,
}

/// Where a source's events enter a pipeline's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceEntry {
    /// Index of the stage.
    pub stage: usize,
    /// Whether they enter the stage's second input (a join's `right`).
    pub right: bool,
}

impl PipelineConfig {
    /// The pipeline's sources for people and metric labels: its one source, or its sources
    /// joined by `+` (`bookings+payments`).
    pub fn source_label(&self) -> String {
        self.sources.join("+")
    }

    /// The event-time settings of `source`: the pipeline's `event_time`, with what its
    /// `event_time.sources.<source>` table sets instead.
    pub fn event_time_of(&self, source: &str) -> Option<EventTimeConfig> {
        let shared = self.event_time.as_ref()?;
        Some(match shared.sources.get(source) {
            Some(own) => own.over(shared),
            None => EventTimeConfig {
                sources: BTreeMap::new(),
                ..shared.clone()
            },
        })
    }
}

fn default_max_event_bytes() -> usize {
    1024 * 1024
}

/// Where an event's time comes from, and how out-of-order and late events are handled (Azure
/// Stream Analytics' event-ordering settings). See [`crate::time`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// Top-level JSON field holding the event time (RFC 3339 text, or epoch milliseconds), like
    /// ASA's `TIMESTAMP BY`; absent: the time the event was enqueued or received.
    #[serde(default)]
    pub field: Option<String>,
    /// How far an event may fall behind the newest event time of its partition and still be
    /// processed in event-time order: events wait in a per-partition reorder buffer until the
    /// partition's watermark (newest event time minus this tolerance) passes them. An event
    /// further behind is adjusted to the watermark or dropped, as `policy` says.
    #[serde(default)]
    pub out_of_order: Option<TolerancePolicy>,
    /// How long after its event time an event may be enqueued: an event whose enqueued time is
    /// later than its event time plus this tolerance is adjusted (its time becomes enqueued time
    /// minus the tolerance) or dropped. Absent: no limit.
    #[serde(default)]
    pub late_arrival: Option<TolerancePolicy>,
    /// A partition without events for this long stops holding the pipeline's watermark back, and
    /// advances its own watermark to the pipeline's so that its windows and joins close. Under
    /// `stream_analytics` semantics, once every partition is idle the watermark follows the wall
    /// clock less the late-arrival tolerance. Absent: partitions are never considered idle.
    #[serde(default)]
    pub idle_timeout: Option<ConfigDuration>,
    /// The share of a partition's events, from 0 to 1, that may arrive behind its watermark (and
    /// be adjusted or dropped by the out-of-order policy) before Weir warns: such events miss the
    /// windows and joins they belong to. Over it, the run logs a warning naming the pipeline,
    /// source, partition and share, counts it in `weir_out_of_order_warnings_total`, and its
    /// summary says it. Absent: 0.01 (1%); 1 never warns.
    #[serde(default)]
    pub max_out_of_order_share: Option<f64>,
    /// A pipeline with several sources: each source's own settings, by source name, with the
    /// keys above (`[pipelines.<name>.event_time.sources.bookings]`, `field = "booking_time"`);
    /// a key a source's table leaves out is the pipeline's.
    #[serde(default)]
    pub sources: BTreeMap<String, EventTimeConfig>,
    /// Whose time semantics the pipeline follows: Weir's own (`weir`, the default) or Azure
    /// Stream Analytics' (`stream_analytics`). Under `stream_analytics`, an absent
    /// `late_arrival` is ASA's default (5 s, `adjust`), an absent `out_of_order` is ASA's (0 s,
    /// `adjust`), the pipeline's window stages default to `stream_analytics` windows, and when
    /// every partition has been idle for `idle_timeout` the watermark follows the wall clock
    /// less the late-arrival tolerance (see [`crate::time::quiet_watermark`]).
    #[serde(default)]
    pub semantics: Option<WindowSemantics>,
}

impl EventTimeConfig {
    /// These settings, with `shared`'s where these set none.
    fn over(&self, shared: &EventTimeConfig) -> EventTimeConfig {
        EventTimeConfig {
            field: self.field.clone().or_else(|| shared.field.clone()),
            out_of_order: self.out_of_order.or(shared.out_of_order),
            late_arrival: self.late_arrival.or(shared.late_arrival),
            idle_timeout: self.idle_timeout.or(shared.idle_timeout),
            max_out_of_order_share: self
                .max_out_of_order_share
                .or(shared.max_out_of_order_share),
            sources: BTreeMap::new(),
            semantics: self.semantics.or(shared.semantics),
        }
    }

    /// Whether the pipeline asks for event ordering (a reorder buffer and late-event policies).
    pub fn orders_events(&self) -> bool {
        self.out_of_order.is_some() || self.late_arrival.is_some() || self.is_stream_analytics()
    }

    /// Whether the pipeline follows Stream Analytics' time semantics (`semantics =
    /// "stream_analytics"`): ASA's event-ordering defaults and a watermark that follows the wall
    /// clock when every partition is idle.
    pub fn is_stream_analytics(&self) -> bool {
        self.semantics == Some(WindowSemantics::StreamAnalytics)
    }
}

/// A tolerance and what happens to events beyond it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TolerancePolicy {
    /// How far an event may be off.
    pub tolerance: ConfigDuration,
    /// What happens to an event beyond the tolerance; every such event is counted.
    #[serde(default)]
    pub policy: LatePolicy,
}

/// What happens to an event beyond a tolerance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Its event time is set to the tolerance's bound, and it is processed.
    #[default]
    Adjust,
    /// It goes to the dead-letter sink with the kind `late`.
    Drop,
}

/// Batching of events for the stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one batch.
    #[serde(default = "default_batch_max_events")]
    pub max_events: usize,
    /// Longest wait for a first event before the partition reports itself idle.
    #[serde(default = "default_batch_max_wait")]
    pub max_wait: ConfigDuration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_batch_max_events(),
            max_wait: default_batch_max_wait(),
        }
    }
}

fn default_batch_max_events() -> usize {
    1024
}
fn default_batch_max_wait() -> ConfigDuration {
    ConfigDuration::from_millis(100)
}

fn default_true() -> bool {
    true
}
