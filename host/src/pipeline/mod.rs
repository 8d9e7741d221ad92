//! Running pipelines: build sources, sinks and stages from a configuration, restore each partition
//! from its checkpoint, and run one worker task per partition.

mod dead_letter;
mod event_time;
mod inputs;
mod ownership;
mod stages;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::checkpoint::CheckpointStore;
use crate::config::{LoadedConfig, PipelineConfig};
use crate::metrics::Metrics;
use crate::plugin::slot::SlotSetup;
use crate::plugin::store::VersionStore;
use crate::plugin::{
    Plugin, PluginEngine, PluginError, PluginKind, PluginRegistry, PluginSlot, RollbackPolicy,
};
use crate::sink::{Sink, WriterScope};
use crate::source::{PartitionStart, Source};
use crate::stage::StageTelemetry;
use crate::status::ServiceStatus;
use crate::time::{ClockSettings, EventClock, PipelineWatermarks};

pub use dead_letter::{DeadLetterKind, DeadLetterOrigin, LetterPlugin, dead_letter};
pub use stages::plugin_kind;
use worker::{Destination, PartitionWorker, SinkSlot, StageSlot, WorkerSettings};
pub use worker::{WorkerError, WorkerReport};

/// Why Weir could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A plugin was refused.
    #[error("{configured_at}: pipeline `{pipeline}`, stage `{stage}`: {source}")]
    Plugin {
        /// Where the configuration names the plugin (`file:line:column`).
        configured_at: String,
        /// Pipeline name.
        pipeline: String,
        /// Stage name.
        stage: String,
        /// Why (boxed: the other variants are small).
        source: Box<PluginError>,
    },
    /// A source could not start.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// A sink could not start.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// The checkpoint store failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A checkpointed stage state could not be read.
    #[error("pipeline `{pipeline}`, partition {partition}, stage `{stage}`: {reason}")]
    Restore {
        /// Pipeline name.
        pipeline: String,
        /// Partition.
        partition: u32,
        /// Stage name.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The plugin engine could not be created.
    #[error(transparent)]
    Engine(PluginError),
    /// A stage's reference table could not be loaded.
    #[error("pipeline `{pipeline}`, stage `{stage}`: {source}")]
    Reference {
        /// Pipeline name.
        pipeline: String,
        /// Stage name.
        stage: String,
        /// Why.
        source: crate::reference::ReferenceError,
    },
}

/// Why a run ended with an error.
#[derive(Debug, thiserror::Error)]
#[error("pipeline `{pipeline}`: {source}")]
pub struct RunError {
    /// Pipeline name.
    pub pipeline: String,
    /// What stopped its worker.
    pub source: WorkerError,
}

/// What a finished run did, per pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Per pipeline, one report per partition worker.
    pub pipelines: BTreeMap<String, Vec<WorkerReport>>,
}

/// Asks running pipelines to stop: workers finish their batch, checkpoint and end.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Requests the stop.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// What a running process shares between its pipelines, the admin API and the health alerts.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Counters, gauges and histograms.
    pub metrics: Metrics,
    /// Pipelines and partitions with their positions and lag.
    pub status: ServiceStatus,
    /// Every stage's plugin slot.
    pub plugins: PluginRegistry,
}

/// A plugin compiled at start, with the bytes it was compiled from (its version slot stores them).
type CompiledPlugin = (Arc<Plugin>, Arc<[u8]>);

/// A task that ends with the reports of the partition workers it ran.
type WorkerTask = JoinHandle<Result<Vec<WorkerReport>, WorkerError>>;

/// Pipelines that are running.
pub struct Running {
    /// Per pipeline, tasks that end with the reports of the workers they ran: one worker each for
    /// pipelines whose partitions all open at start, an ownership manager for the others.
    workers: Vec<(String, WorkerTask)>,
    /// Every pipeline's source, held until the workers have ended: some sources serve their input
    /// only while they live (the HTTP source's server stops when it is dropped).
    sources: Vec<Arc<dyn Source>>,
    shutdown: ShutdownHandle,
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    metrics: Metrics,
    services: Services,
    checkpoints: Arc<dyn CheckpointStore>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// A handle that stops the pipelines.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The sinks in use, by name.
    pub fn sinks(&self) -> &BTreeMap<String, Arc<dyn Sink>> {
        &self.sinks
    }

    /// What the pipelines share with the admin API and the health alerts.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The checkpoint store.
    pub fn checkpoints(&self) -> &Arc<dyn CheckpointStore> {
        &self.checkpoints
    }

    /// Waits for every worker. The first failure stops the others, which checkpoint and end.
    pub async fn wait(self) -> Result<RunReport, RunError> {
        let mut report = RunReport::default();
        let mut first_error = None;
        let mut workers = self.workers;
        // Dropped only when every worker has ended (see `sources`).
        let _sources = self.sources;
        while !workers.is_empty() {
            // Poll whichever finishes first, so a failure stops the rest promptly.
            let handles = workers.iter_mut().map(|(_, handle)| handle);
            let (result, index, _) = futures::future::select_all(handles).await;
            let (pipeline, _) = workers.swap_remove(index);
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(join_error) => Err(WorkerError::Stage(crate::stage::StageError::worker_task(
                    pipeline.as_str().into(),
                    0,
                    &join_error,
                ))),
            };
            match outcome {
                Ok(worker_reports) => report
                    .pipelines
                    .entry(pipeline)
                    .or_default()
                    .extend(worker_reports),
                Err(source) => {
                    tracing::error!(pipeline = %pipeline, error = %source, "partition worker failed; stopping");
                    self.shutdown.shutdown();
                    if first_error.is_none() {
                        first_error = Some(RunError { pipeline, source });
                    }
                }
            }
        }
        for reports in report.pipelines.values_mut() {
            reports.sort_by_key(|r| r.partition);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

/// Builds everything `loaded` describes and starts one worker per partition.
pub async fn start(loaded: &LoadedConfig, metrics: Metrics) -> Result<Running, StartError> {
    start_with(
        loaded,
        Services {
            metrics,
            ..Services::default()
        },
    )
    .await
}

/// Where the configuration names the plugin of stage `index` of `pipeline`.
pub fn stage_plugin_location(loaded: &LoadedConfig, pipeline: &str, index: usize) -> String {
    loaded.location(&[
        "pipelines",
        pipeline,
        "stages",
        &index.to_string(),
        "plugin",
    ])
}

/// Like [`start`], sharing `services` (the admin API and the health alerts read them).
pub async fn start_with(loaded: &LoadedConfig, services: Services) -> Result<Running, StartError> {
    let config = &loaded.config;
    let store = VersionStore::new(loaded.resolve(&config.plugins.store_dir));
    // Keys were checked when the configuration was loaded.
    let trusted = crate::plugin::signature::TrustedKeys::parse(&config.plugins.trusted_keys)
        .unwrap_or_default();
    let engine = PluginEngine::new()
        .map_err(StartError::Engine)?
        .with_cache(&store.compiled_dir())
        .with_trusted_keys(trusted);
    let checkpoints: Arc<dyn CheckpointStore> =
        crate::connectors::open_checkpoint_store(loaded).await?;
    let (shutdown_sender, shutdown) = watch::channel(false);

    // Every plugin is compiled and checked against its world before anything is created, so a
    // refused plugin leaves no table or file behind.
    let plugins = compile_plugins(loaded, &engine, &services).await?;
    let slots = open_slots(loaded, &plugins, &engine, &store, &services).await?;
    let shared = Shared {
        sinks: build_sinks(loaded).await?,
        plugins,
        slots,
        checkpoints,
        metrics: services.metrics.clone(),
        status: services.status.clone(),
        shutdown,
    };
    for sink in shared.sinks.values() {
        sink.attach_metrics(&shared.metrics);
    }

    let mut workers = Vec::new();
    let mut sources = Vec::with_capacity(config.pipelines.len());
    for (pipeline_name, pipeline) in &config.pipelines {
        let (built, tasks) = start_pipeline(loaded, &shared, pipeline_name, pipeline).await?;
        sources.extend(built);
        workers.extend(tasks.into_iter().map(|task| (pipeline_name.clone(), task)));
    }
    services.status.set_ready(true);
    Ok(Running {
        workers,
        sources,
        shutdown: ShutdownHandle(Arc::new(shutdown_sender)),
        sinks: shared.sinks,
        metrics: shared.metrics,
        services,
        checkpoints: shared.checkpoints,
    })
}

/// What the pipelines of a process share, built once at start.
struct Shared {
    /// Every stage plugin, by file and kind, compiled once.
    plugins: HashMap<(PathBuf, PluginKind), CompiledPlugin>,
    /// Every stage's plugin slot, by pipeline and stage name.
    slots: HashMap<(String, String), Arc<PluginSlot<Plugin>>>,
    /// Every sink any pipeline uses, by name.
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    checkpoints: Arc<dyn CheckpointStore>,
    metrics: Metrics,
    status: ServiceStatus,
    shutdown: watch::Receiver<bool>,
}

/// Compiles each stage plugin once (per file and kind), off the async threads.
async fn compile_plugins(
    loaded: &LoadedConfig,
    engine: &PluginEngine,
    services: &Services,
) -> Result<HashMap<(PathBuf, PluginKind), CompiledPlugin>, StartError> {
    let mut plugins: HashMap<(PathBuf, PluginKind), CompiledPlugin> = HashMap::new();
    for (pipeline_name, pipeline) in &loaded.config.pipelines {
        for (index, stage) in pipeline.stages.iter().enumerate() {
            let (Some(plugin), Some(kind)) = (stage.plugin(), plugin_kind(stage)) else {
                continue;
            };
            let path = loaded.resolve(&plugin.path);
            if plugins.contains_key(&(path.clone(), kind)) {
                continue;
            }
            // How the file looked before it was read: the watcher compares later changes to it.
            services
                .plugins
                .note_file_read(&path, crate::plugin::watch::fingerprint(&path));
            let refused = |source: PluginError| StartError::Plugin {
                configured_at: stage_plugin_location(loaded, pipeline_name, index),
                pipeline: pipeline_name.clone(),
                stage: stage.name.clone(),
                source: Box::new(source),
            };
            let compiled = compile_plugin(engine.clone(), path.clone(), kind)
                .await
                .map_err(refused)?;
            // With the crate's name and version when `weir plugin build` recorded them.
            match compiled.0.package() {
                Some(package) => tracing::info!(
                    pipeline = %pipeline_name, stage = %stage.name, plugin = %compiled.0.name(),
                    version = %compiled.0.version(), path = %path.display(),
                    name = %package.name, crate_version = %package.version, "plugin loaded"
                ),
                None => tracing::info!(
                    pipeline = %pipeline_name, stage = %stage.name, plugin = %compiled.0.name(),
                    version = %compiled.0.version(), path = %path.display(), "plugin loaded"
                ),
            }
            plugins.insert((path, kind), compiled);
        }
    }
    Ok(plugins)
}

/// Reads and compiles the plugin at `path` on a blocking thread.
async fn compile_plugin(
    engine: PluginEngine,
    path: PathBuf,
    kind: PluginKind,
) -> Result<CompiledPlugin, PluginError> {
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|source| PluginError::Read {
            path: path.clone(),
            source,
        })?;
        let plugin = engine.from_bytes(&path, &bytes, kind)?;
        Ok::<_, PluginError>((plugin, Arc::<[u8]>::from(bytes)))
    })
    .await
    .map_err(|e| PluginError::Engine(format!("compilation task failed: {e}")))?
}

/// One plugin slot per stage with a plugin (per-event transforms, window aggregates and joins):
/// the version that runs, swapped at batch boundaries.
async fn open_slots(
    loaded: &LoadedConfig,
    plugins: &HashMap<(PathBuf, PluginKind), CompiledPlugin>,
    engine: &PluginEngine,
    store: &VersionStore,
    services: &Services,
) -> Result<HashMap<(String, String), Arc<PluginSlot<Plugin>>>, StartError> {
    let config = &loaded.config;
    let policy = RollbackPolicy {
        probation_events: config.plugins.rollback.probation_events,
        max_trap_ratio: config.plugins.rollback.max_trap_ratio,
        max_error_ratio: config.plugins.rollback.max_error_ratio,
    };
    let mut slots: HashMap<(String, String), Arc<PluginSlot<Plugin>>> = HashMap::new();
    for (pipeline_name, pipeline) in &config.pipelines {
        for stage in &pipeline.stages {
            let (Some(plugin), Some(kind)) = (stage.plugin(), plugin_kind(stage)) else {
                continue;
            };
            let path = loaded.resolve(&plugin.path);
            let Some((plugin, bytes)) = plugins.get(&(path.clone(), kind)).cloned() else {
                continue;
            };
            let setup = SlotSetup {
                pipeline: pipeline_name.as_str().into(),
                stage: stage.name.as_str().into(),
                file: path,
                engine: engine.clone(),
                store: Some(store.clone()),
                policy,
                metrics: services.metrics.clone(),
            };
            let slot = tokio::task::spawn_blocking(move || PluginSlot::open(setup, plugin, &bytes))
                .await
                .map_err(|e| StartError::Plugin {
                    configured_at: loaded.path.display().to_string(),
                    pipeline: pipeline_name.clone(),
                    stage: stage.name.clone(),
                    source: Box::new(PluginError::Engine(format!("plugin slot task failed: {e}"))),
                })?;
            services.plugins.register(slot.clone());
            slots.insert((pipeline_name.clone(), stage.name.clone()), slot);
        }
    }
    Ok(slots)
}

/// The sinks used by any pipeline, built once and shared.
async fn build_sinks(loaded: &LoadedConfig) -> Result<BTreeMap<String, Arc<dyn Sink>>, StartError> {
    let config = &loaded.config;
    let mut sinks: BTreeMap<String, Arc<dyn Sink>> = BTreeMap::new();
    for pipeline in config.pipelines.values() {
        for name in used_sinks(loaded, pipeline) {
            if !sinks.contains_key(&name)
                && let Some(sink_config) = config.sinks.get(&name)
            {
                let sink = crate::sink::build(&name, sink_config, loaded)
                    .await
                    .map_err(|e| e.used_by(&pipelines_using(loaded, &name)))?;
                sinks.insert(name, sink);
            }
        }
    }
    Ok(sinks)
}

/// The pipelines that write to sink `sink` (an error while it opens names them).
fn pipelines_using<'a>(loaded: &'a LoadedConfig, sink: &str) -> Vec<&'a str> {
    loaded
        .config
        .pipelines
        .iter()
        .filter(|(_, pipeline)| used_sinks(loaded, pipeline).iter().any(|n| n == sink))
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Builds the sources and context of one pipeline and starts its tasks: an ownership manager
/// when every source's partitions open one by one, else one worker per partition. Returns the
/// sources with the tasks: the caller keeps them alive as long as they run.
async fn start_pipeline(
    loaded: &LoadedConfig,
    shared: &Shared,
    pipeline_name: &str,
    pipeline: &PipelineConfig,
) -> Result<(Vec<Arc<dyn Source>>, Vec<WorkerTask>), StartError> {
    let mut sources: Vec<Arc<dyn Source>> = Vec::with_capacity(pipeline.sources.len());
    for name in &pipeline.sources {
        let source_config = loaded.config.sources.get(name).ok_or_else(|| {
            crate::source::SourceError::start(
                crate::source::SourceErrorKind::Misconfigured,
                name,
                "not defined",
            )
        })?;
        sources.push(
            crate::source::build(
                name,
                source_config,
                loaded,
                shared.checkpoints.clone(),
                &shared.metrics,
                pipeline
                    .event_time_of(name)
                    .and_then(|t| t.field)
                    .as_deref(),
            )
            .await?,
        );
    }
    check_co_partitioned(loaded, pipeline_name, &sources)?;
    let partitions = sources.first().map_or(0, |s| s.partition_count());
    let source_label = pipeline.source_label();
    let references =
        stages::load_references(loaded, pipeline_name, pipeline, &shared.metrics).await?;
    let context = Arc::new(PipelineContext {
        name: pipeline_arc_of(pipeline_name),
        pipeline: pipeline.clone(),
        loaded: loaded.clone(),
        sinks: shared.sinks.clone(),
        plugins: shared
            .plugins
            .iter()
            .map(|(key, (plugin, _))| (key.clone(), plugin.clone()))
            .collect(),
        references,
        watermarks: PipelineWatermarks::new(),
        slots: shared
            .slots
            .iter()
            .filter(|((p, _), _)| p == pipeline_name)
            .map(|((_, stage), slot)| (stage.clone(), slot.clone()))
            .collect(),
        checkpoints: shared.checkpoints.clone(),
        metrics: shared.metrics.clone(),
        status: shared.status.clone(),
        label_versions: records_plugin_versions(loaded, pipeline),
    });
    if sources.iter().all(|s| s.partitions_open_independently()) {
        // Brokers: partitions are claimed in the checkpoint store and opened one by one, so
        // that several processes share them (see `ownership`); a claim covers partition i of
        // every source of the pipeline.
        let manager = ownership::OwnershipManager::new(
            context,
            sources.clone(),
            &loaded.config.checkpoint.ownership,
            shared.shutdown.clone(),
        );
        tracing::info!(
            pipeline = %pipeline_name, source = %source_label, partitions,
            owner = %manager.owner(), store = %shared.checkpoints.describe(),
            "pipeline started; partitions are claimed through the checkpoint store"
        );
        return Ok((sources, vec![tokio::spawn(manager.run())]));
    }
    let workers = start_partitions(&context, &sources, shared).await?;
    tracing::info!(pipeline = %pipeline_name, source = %source_label, partitions, "pipeline started");
    Ok((sources, workers))
}

/// The sources of a pipeline are co-partitioned, as Stream Analytics requires of the inputs of a
/// parallel join: the same partition count, and keys spread over partitions the same way (by
/// Weir for the inputs it dispatches, by the producers for brokers).
fn check_co_partitioned(
    loaded: &LoadedConfig,
    pipeline_name: &str,
    sources: &[Arc<dyn Source>],
) -> Result<(), StartError> {
    let Some(first) = sources.first() else {
        return Ok(());
    };
    let at = || loaded.location(&["pipelines", pipeline_name, "sources"]);
    let refused = |reason: String| {
        crate::source::SourceError::start(
            crate::source::SourceErrorKind::Misconfigured,
            first.name(),
            reason,
        )
    };
    for other in &sources[1..] {
        if other.partition_count() != first.partition_count() {
            return Err(refused(format!(
                "{}: `pipelines.{pipeline_name}.sources`: the sources of pipeline `{pipeline_name}` must be co-partitioned: `{}` has {} partitions, `{}` has {}",
                at(),
                first.name(),
                first.partition_count(),
                other.name(),
                other.partition_count()
            ))
            .into());
        }
        if other.partitions_open_independently() != first.partitions_open_independently() {
            return Err(refused(format!(
                "{}: `pipelines.{pipeline_name}.sources`: the sources of pipeline `{pipeline_name}` must spread keys over partitions the same way: `{}` is partitioned by {}, `{}` by {}",
                at(),
                first.name(),
                key_hashing(first.as_ref()),
                other.name(),
                key_hashing(other.as_ref())
            ))
            .into());
        }
    }
    Ok(())
}

/// Who decides a key's partition in `source`, for people.
fn key_hashing(source: &dyn Source) -> &'static str {
    if source.partitions_open_independently() {
        "its producers (a broker's partitions)"
    } else {
        "Weir (FNV-1a of the key)"
    }
}

/// Opens every partition of every source after its checkpoint and starts each partition's
/// worker, which reads partition i of each source.
async fn start_partitions(
    context: &PipelineContext,
    sources: &[Arc<dyn Source>],
    shared: &Shared,
) -> Result<Vec<WorkerTask>, StartError> {
    let partitions = sources.first().map_or(0, |s| s.partition_count());
    let mut restored = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        restored.push(
            shared
                .checkpoints
                .load(&context.name, partition)
                .await?
                .unwrap_or_default(),
        );
    }
    // Per partition, its reader of each source, in the pipeline's order of its sources.
    let mut readers: Vec<Vec<Box<dyn crate::source::PartitionReader>>> =
        (0..partitions).map(|_| Vec::new()).collect();
    for source in sources {
        let starts = restored
            .iter()
            .enumerate()
            .map(|(partition, checkpoint)| PartitionStart {
                partition: u32::try_from(partition).unwrap_or(u32::MAX),
                after: inputs::resume_after(checkpoint, sources.len(), source.name()),
            })
            .collect();
        for reader in source.open(starts).await? {
            if let Some(slot) = readers.get_mut(reader.partition() as usize) {
                slot.push(reader);
            }
        }
    }
    let mut workers = Vec::with_capacity(readers.len());
    for (partition, checkpoint) in readers.into_iter().zip(restored) {
        if partition.is_empty() {
            continue;
        }
        let worker = build_worker(context, partition, checkpoint, shared.shutdown.clone()).await?;
        workers.push(tokio::spawn(async move {
            worker.run().await.map(|report| vec![report])
        }));
    }
    Ok(workers)
}

/// Whether a sink of `pipeline` records which plugin version produced each record (a Delta
/// column with `value = "plugin_version"`): only then do stages label their records.
fn records_plugin_versions(loaded: &LoadedConfig, pipeline: &PipelineConfig) -> bool {
    used_sinks(loaded, pipeline).iter().any(|name| {
        matches!(
            loaded.config.sinks.get(name),
            Some(crate::config::SinkConfig::Delta(delta))
                if delta
                    .columns
                    .iter()
                    .any(|c| matches!(
                        c.value,
                        Some(
                            crate::config::ColumnValue::PluginVersion
                                | crate::config::ColumnValue::PluginVersions
                        )
                    ))
        )
    })
}

/// The stage input a route names: a stage, or one of a join's inputs (`<stage>.left`,
/// `<stage>.right`).
fn stage_destination(pipeline: &PipelineConfig, name: &str) -> Option<Destination> {
    let position = |stage: &str| pipeline.stages.iter().position(|s| s.name == stage);
    match name.rsplit_once('.') {
        Some((stage, "left")) if position(stage).is_some() => {
            position(stage).map(Destination::Stage)
        }
        Some((stage, "right")) if position(stage).is_some() => {
            position(stage).map(Destination::StageRight)
        }
        _ => position(name).map(Destination::Stage),
    }
}

/// Where the events of `source` enter the stages (see [`PipelineConfig::source_entries`]).
fn source_destinations(pipeline: &PipelineConfig, source: &str) -> Vec<Destination> {
    let entries = pipeline.source_entries.get(source);
    let first = [crate::config::SourceEntry {
        stage: 0,
        right: false,
    }];
    entries
        .map_or(&first[..], Vec::as_slice)
        .iter()
        .map(|entry| match entry.right {
            true => Destination::StageRight(entry.stage),
            false => Destination::Stage(entry.stage),
        })
        .collect()
}

/// A partition's event time: its clock restored from the checkpoint, registered in the
/// pipeline's watermarks.
fn partition_time(
    pipeline_name: &str,
    pipeline: &PipelineConfig,
    partition: u32,
    checkpoint: &crate::checkpoint::Checkpoint,
    watermarks: &Arc<PipelineWatermarks>,
    metrics: &Metrics,
) -> Result<event_time::PartitionTime, StartError> {
    let restore_error = |entry: &str, e: crate::codec::DecodeError| StartError::Restore {
        pipeline: pipeline_name.to_owned(),
        partition,
        stage: entry.to_owned(),
        reason: e.to_string(),
    };
    let source_label = pipeline.source_label();
    let settings = ClockSettings::from_config(pipeline.event_time.as_ref());
    let mut clock = match checkpoint.stages.get(event_time::EVENT_TIME_STATE) {
        Some(bytes) => EventClock::restore(settings, bytes)
            .map_err(|e| restore_error(event_time::EVENT_TIME_STATE, e))?,
        None => EventClock::new(settings),
    };
    clock.set_source(&Arc::from(source_label.as_str()));
    let sources = (pipeline.sources.len() > 1)
        .then(|| sources_time(pipeline, checkpoint))
        .transpose()
        .map_err(|e| restore_error(event_time::SOURCES_TIME_STATE, e))?;
    let partition_label = partition.to_string();
    metrics.declare(
        crate::metrics::names::OUT_OF_ORDER_WARNINGS,
        &[
            ("pipeline", pipeline_name),
            ("source", &source_label),
            ("partition", &partition_label),
        ],
    );
    let handle = watermarks.register(partition);
    let watermark = match &sources {
        Some(sources) => sources.merge.watermark(),
        None => clock.watermark(),
    };
    handle.publish(watermark, false);
    Ok(event_time::PartitionTime {
        sources,
        clock,
        handle,
        idle_timeout: pipeline
            .event_time
            .as_ref()
            .and_then(|t| t.idle_timeout)
            .map(|d| d.get()),
        quiet_late_arrival: pipeline
            .event_time
            .as_ref()
            .is_some_and(crate::config::EventTimeConfig::is_stream_analytics)
            .then(|| settings.late_arrival.map_or(0, |late| late.millis)),
        last_event_at: tokio::time::Instant::now(),
        admitted: crate::time::Admitted::default(),
        metrics: metrics.clone(),
        pipeline: pipeline_name.into(),
        source: source_label.as_str().into(),
        partition,
        disorder: crate::time::DisorderWatch::from_config(pipeline.event_time.as_ref()),
    })
}

/// The merge of a partition's sources, each with its own event-time settings, restored from the
/// checkpoint when it holds one.
fn sources_time(
    pipeline: &PipelineConfig,
    checkpoint: &crate::checkpoint::Checkpoint,
) -> Result<event_time::SourcesTime, crate::codec::DecodeError> {
    let own: Vec<Option<crate::config::EventTimeConfig>> = pipeline
        .sources
        .iter()
        .map(|s| pipeline.event_time_of(s))
        .collect();
    let settings: Vec<ClockSettings> = own
        .iter()
        .map(|c| ClockSettings::from_config(c.as_ref()))
        .collect();
    let names: Vec<Arc<str>> = pipeline.sources.iter().map(|s| s.as_str().into()).collect();
    let merge = match checkpoint.stages.get(event_time::SOURCES_TIME_STATE) {
        Some(bytes) => crate::time::SourceMerge::restore(&settings, &names, bytes)?,
        None => crate::time::SourceMerge::new(&settings),
    };
    Ok(event_time::SourcesTime {
        merge,
        idle_timeouts: own
            .iter()
            .map(|c| c.as_ref().and_then(|t| t.idle_timeout).map(|d| d.get()))
            .collect(),
        last_event_at: vec![tokio::time::Instant::now(); names.len()],
    })
}

fn pipeline_arc_of(name: &str) -> Arc<str> {
    name.into()
}

/// What every partition worker of one pipeline is built from.
pub(crate) struct PipelineContext {
    /// The pipeline's name.
    pub(crate) name: Arc<str>,
    /// Its configuration.
    pub(crate) pipeline: PipelineConfig,
    /// The whole configuration (paths, plugin defaults, checkpoint cadence).
    pub(crate) loaded: LoadedConfig,
    /// Every sink of the process, by name.
    pub(crate) sinks: BTreeMap<String, Arc<dyn Sink>>,
    /// Compiled plugins, by resolved path and the world they are used as (the version each
    /// stage starts with).
    pub(crate) plugins: HashMap<(PathBuf, PluginKind), Arc<Plugin>>,
    /// Reference tables, by stage name (loaded once per pipeline, shared by its partitions).
    pub(crate) references: HashMap<String, crate::reference::ReferenceTables>,
    /// The pipeline's watermark: every partition's clock registers here.
    pub(crate) watermarks: Arc<PipelineWatermarks>,
    /// Each plugin stage's version slot, by stage name: workers started at any time run the
    /// version active then and swap with the others.
    pub(crate) slots: HashMap<String, Arc<PluginSlot<Plugin>>>,
    /// The checkpoint store.
    pub(crate) checkpoints: Arc<dyn CheckpointStore>,
    /// The process's metrics.
    pub(crate) metrics: Metrics,
    /// Where workers report their partition's state (admin API, health alerts).
    pub(crate) status: ServiceStatus,
    /// Whether stages label their records with the plugin version (see
    /// [`records_plugin_versions`]).
    pub(crate) label_versions: bool,
}

/// Builds the worker of one partition of `context`'s pipeline: its sink writers (resumed from the
/// checkpoint's sink progress), its stages (with the checkpointed state) and its routes. Every
/// worker, started at launch or when a partition is acquired later, is built here.
pub(crate) async fn build_worker(
    context: &PipelineContext,
    readers: Vec<Box<dyn crate::source::PartitionReader>>,
    checkpoint: crate::checkpoint::Checkpoint,
    shutdown: watch::Receiver<bool>,
) -> Result<PartitionWorker, StartError> {
    let pipeline = &context.pipeline;
    let pipeline_name: &str = &context.name;
    let partition = readers.first().map_or(0, |r| r.partition());
    if let Some(position) = checkpoint.position {
        tracing::info!(pipeline = %pipeline_name, partition, position, "resuming from checkpoint");
    }
    let sink_slots = open_sink_writers(context, partition, &checkpoint).await?;
    let dead_letter_sink = sink_index(&sink_slots, &pipeline.dead_letter).unwrap_or(0);
    let stage_slots = build_stages(context, partition, &checkpoint, &sink_slots)?;
    let time = event_time::needs_clock(pipeline)
        .then(|| {
            partition_time(
                pipeline_name,
                pipeline,
                partition,
                &checkpoint,
                &context.watermarks,
                &context.metrics,
            )
        })
        .transpose()?;
    declare_dead_letter_kinds(&context.metrics, pipeline_name, partition);
    let several = pipeline.sources.len() > 1;
    let source_routes = if several {
        pipeline
            .sources
            .iter()
            .map(|source| source_destinations(pipeline, source))
            .collect()
    } else {
        Vec::new()
    };
    let inputs = readers
        .into_iter()
        .zip(&pipeline.sources)
        .map(|(reader, name)| inputs::Input {
            name: name.as_str().into(),
            event_time_decoded: reader.event_time_decoded(),
            reader,
            event_time_field: pipeline.event_time_of(name).and_then(|t| t.field),
            position: checkpoint.sources.get(name).and_then(|s| s.position),
            offset: checkpoint.sources.get(name).and_then(|s| s.offset.clone()),
            ended: false,
        })
        .collect();
    Ok(PartitionWorker {
        settings: worker_settings(context),
        partition,
        inputs: inputs::Inputs::new(inputs),
        source_routes,
        stages: stage_slots,
        sinks: sink_slots,
        dead_letter_sink,
        checkpoints: context.checkpoints.clone(),
        metrics: context.metrics.clone(),
        position: checkpoint.position,
        checkpointed: checkpoint.position,
        incremental: crate::checkpoint::IncrementalState::new(&checkpoint),
        checkpointed_offset: checkpoint.source_offset.clone(),
        time,
        state_dirty: false,
        right_inputs: vec![Vec::new(); pipeline.stages.len()],
        shutdown,
        status: context
            .status
            .partition(pipeline_name, &pipeline.source_label(), partition),
        max_event_time: None,
        pending_idle_advance: event_time::pending_idle_advance(&checkpoint),
        in_flight: None,
    })
}

/// Opens a writer of `partition` on every sink the pipeline uses, resumed from the progress
/// `checkpoint` holds for it.
async fn open_sink_writers(
    context: &PipelineContext,
    partition: u32,
    checkpoint: &crate::checkpoint::Checkpoint,
) -> Result<Vec<SinkSlot>, StartError> {
    let sink_names = used_sinks(&context.loaded, &context.pipeline);
    let mut sink_slots = Vec::with_capacity(sink_names.len());
    let scope = WriterScope {
        pipeline: context.name.clone(),
        partition,
    };
    for name in &sink_names {
        let Some(sink) = context.sinks.get(name) else {
            continue;
        };
        let mut progress = checkpoint.sinks.get(name).cloned();
        if event_time::pending_idle_advance(checkpoint).is_some()
            && let Some(serde_json::Value::Object(fields)) = &mut progress
        {
            fields.insert(
                crate::sink::IDLE_ADVANCE_PENDING.to_owned(),
                serde_json::Value::Bool(true),
            );
        }
        let writer = sink.open_writer(&scope, progress.as_ref()).await?;
        sink_slots.push(SinkSlot {
            name: name.as_str().into(),
            writer,
            pending: Vec::new(),
        });
    }
    Ok(sink_slots)
}

/// The index in `sink_slots` of the sink named `name`.
fn sink_index(sink_slots: &[SinkSlot], name: &str) -> Option<usize> {
    sink_slots.iter().position(|s| &*s.name == name)
}

/// Builds the pipeline's stages for `partition`, with their checkpointed state and the routes of
/// their outputs to `sink_slots` or later stages.
fn build_stages(
    context: &PipelineContext,
    partition: u32,
    checkpoint: &crate::checkpoint::Checkpoint,
    sink_slots: &[SinkSlot],
) -> Result<Vec<StageSlot>, StartError> {
    let pipeline = &context.pipeline;
    let building = stages::StageBuilder {
        loaded: &context.loaded,
        pipeline_name: &context.name,
        pipeline: &context.name,
        partition,
        checkpoint,
        plugins: &context.plugins,
        slots: &context.slots,
        references: &context.references,
        metrics: &context.metrics,
        telemetry: StageTelemetry {
            metrics: context.metrics.clone(),
            label_versions: context.label_versions,
        },
    };
    let mut stage_slots = Vec::with_capacity(pipeline.stages.len());
    for stage in &pipeline.stages {
        let mut routes: HashMap<Arc<str>, Vec<Destination>> = HashMap::new();
        for (output, destinations) in &stage.outputs {
            let resolved = destinations
                .names()
                .iter()
                .filter_map(|name| match sink_index(sink_slots, name) {
                    Some(index) => Some(Destination::Sink(index)),
                    None => stage_destination(pipeline, name),
                })
                .collect();
            routes.insert(output.as_str().into(), resolved);
        }
        let built = building.build(stage)?;
        stage_slots.push(StageSlot {
            stage: built,
            routes,
        });
    }
    Ok(stage_slots)
}

/// Declares the dead-letter counter of every kind for `partition`, so each reads 0 before its
/// first dead letter.
fn declare_dead_letter_kinds(metrics: &Metrics, pipeline_name: &str, partition: u32) {
    let partition_label = partition.to_string();
    for kind in DeadLetterKind::ALL {
        metrics.declare(
            crate::metrics::names::DEAD_LETTERS,
            &[
                ("pipeline", pipeline_name),
                ("partition", &partition_label),
                ("kind", kind.label()),
            ],
        );
    }
}

/// A worker's settings, from its pipeline and the process's checkpoint cadence.
fn worker_settings(context: &PipelineContext) -> WorkerSettings {
    let pipeline = &context.pipeline;
    WorkerSettings {
        pipeline: context.name.clone(),
        source: pipeline.source_label().into(),
        max_event_bytes: pipeline.max_event_bytes,
        batch_max_events: pipeline.batch.max_events,
        batch_max_wait: pipeline.batch.max_wait.get(),
        checkpoint_interval: context.loaded.config.checkpoint.interval.get(),
        // A previous owner notices it lost the partition within an ownership expiry.
        state_sweep_after: context.loaded.config.checkpoint.ownership.expiry.get() * 3,
    }
}

/// Sinks a pipeline writes to: its dead-letter sink first, then every sink its stages route to.
fn used_sinks(loaded: &LoadedConfig, pipeline: &PipelineConfig) -> Vec<String> {
    let mut names = vec![pipeline.dead_letter.clone()];
    for stage in &pipeline.stages {
        for destinations in stage.outputs.values() {
            for name in destinations.names() {
                if loaded.config.sinks.contains_key(name) && !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
    }
    names
}
