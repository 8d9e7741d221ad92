//! Running pipelines: build sources, sinks and stages from a configuration, restore each partition
//! from its checkpoint, and run one worker task per partition.

mod dead_letter;
mod event_time;
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

pub use dead_letter::{DeadLetterKind, DeadLetterOrigin, dead_letter};
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
    let engine = PluginEngine::new()
        .map_err(StartError::Engine)?
        .with_cache(&store.compiled_dir());
    let checkpoints: Arc<dyn CheckpointStore> = crate::connectors::checkpoint_store(loaded)?;
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
        let (source, tasks) = start_pipeline(loaded, &shared, pipeline_name, pipeline).await?;
        sources.push(source);
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
                let sink = crate::sink::build(&name, sink_config, loaded).await?;
                sinks.insert(name, sink);
            }
        }
    }
    Ok(sinks)
}

/// Builds the source and context of one pipeline and starts its tasks: an ownership manager
/// for a source whose partitions open one by one, else one worker per partition. Returns the
/// source with the tasks: the caller keeps it alive as long as they run.
async fn start_pipeline(
    loaded: &LoadedConfig,
    shared: &Shared,
    pipeline_name: &str,
    pipeline: &PipelineConfig,
) -> Result<(Arc<dyn Source>, Vec<WorkerTask>), StartError> {
    let source_config = loaded.config.sources.get(&pipeline.source).ok_or_else(|| {
        crate::source::SourceError::start(
            crate::source::SourceErrorKind::Misconfigured,
            &pipeline.source,
            "not defined",
        )
    })?;
    let source: Arc<dyn Source> = crate::source::build(
        &pipeline.source,
        source_config,
        loaded,
        shared.checkpoints.clone(),
    )
    .await?;
    let partitions = source.partition_count();
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
    if source.partitions_open_independently() {
        // Brokers: partitions are claimed in the checkpoint store and opened one by one, so
        // that several processes share them (see `ownership`).
        let manager = ownership::OwnershipManager::new(
            context,
            source.clone(),
            &loaded.config.checkpoint.ownership,
            shared.shutdown.clone(),
        );
        tracing::info!(
            pipeline = %pipeline_name, source = %pipeline.source, partitions,
            owner = %manager.owner(), store = %shared.checkpoints.describe(),
            "pipeline started; partitions are claimed through the checkpoint store"
        );
        return Ok((source, vec![tokio::spawn(manager.run())]));
    }
    let workers = start_partitions(&context, source.as_ref(), shared).await?;
    tracing::info!(pipeline = %pipeline_name, source = %pipeline.source, partitions, "pipeline started");
    Ok((source, workers))
}

/// Opens every partition of `source` after its checkpoint and starts its worker.
async fn start_partitions(
    context: &PipelineContext,
    source: &dyn Source,
    shared: &Shared,
) -> Result<Vec<WorkerTask>, StartError> {
    let partitions = source.partition_count();
    let mut restored = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        restored.push(shared.checkpoints.load(&context.name, partition).await?);
    }
    let starts = restored
        .iter()
        .enumerate()
        .map(|(partition, checkpoint)| PartitionStart {
            partition: u32::try_from(partition).unwrap_or(u32::MAX),
            after: checkpoint.as_ref().and_then(|c| c.position),
        })
        .collect();
    let readers = source.open(starts).await?;
    let mut workers = Vec::with_capacity(readers.len());
    for reader in readers {
        let partition = reader.partition();
        let checkpoint = restored
            .get(partition as usize)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let worker = build_worker(context, reader, checkpoint, shared.shutdown.clone()).await?;
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
                    .any(|c| c.value == Some(crate::config::ColumnValue::PluginVersion))
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
    let settings = ClockSettings::from_config(pipeline.event_time.as_ref());
    let clock = match checkpoint.stages.get(event_time::EVENT_TIME_STATE) {
        Some(bytes) => EventClock::restore(settings, bytes).map_err(|e| StartError::Restore {
            pipeline: pipeline_name.to_owned(),
            partition,
            stage: event_time::EVENT_TIME_STATE.to_owned(),
            reason: e.to_string(),
        })?,
        None => EventClock::new(settings),
    };
    let partition_label = partition.to_string();
    metrics.declare(
        crate::metrics::names::OUT_OF_ORDER_WARNINGS,
        &[
            ("pipeline", pipeline_name),
            ("source", &pipeline.source),
            ("partition", &partition_label),
        ],
    );
    let handle = watermarks.register(partition);
    handle.publish(clock.watermark(), false);
    Ok(event_time::PartitionTime {
        clock,
        handle,
        idle_timeout: pipeline
            .event_time
            .as_ref()
            .and_then(|t| t.idle_timeout)
            .map(|d| d.get()),
        last_event_at: tokio::time::Instant::now(),
        admitted: crate::time::Admitted::default(),
        metrics: metrics.clone(),
        pipeline: pipeline_name.into(),
        source: pipeline.source.as_str().into(),
        partition,
        disorder: crate::time::DisorderWatch::from_config(pipeline.event_time.as_ref()),
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
    reader: Box<dyn crate::source::PartitionReader>,
    checkpoint: crate::checkpoint::Checkpoint,
    shutdown: watch::Receiver<bool>,
) -> Result<PartitionWorker, StartError> {
    let pipeline = &context.pipeline;
    let pipeline_name: &str = &context.name;
    let partition = reader.partition();
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
    Ok(PartitionWorker {
        settings: worker_settings(context),
        partition,
        reader,
        stages: stage_slots,
        sinks: sink_slots,
        dead_letter_sink,
        checkpoints: context.checkpoints.clone(),
        metrics: context.metrics.clone(),
        position: checkpoint.position,
        checkpointed: checkpoint.position,
        checkpointed_offset: checkpoint.source_offset.clone(),
        time,
        state_dirty: false,
        right_inputs: vec![Vec::new(); pipeline.stages.len()],
        shutdown,
        status: context
            .status
            .partition(pipeline_name, &pipeline.source, partition),
        max_event_time: None,
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
        let writer = sink.open_writer(&scope, checkpoint.sinks.get(name)).await?;
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
        source: pipeline.source.as_str().into(),
        event_time_field: pipeline.event_time.as_ref().and_then(|t| t.field.clone()),
        max_event_bytes: pipeline.max_event_bytes,
        batch_max_events: pipeline.batch.max_events,
        batch_max_wait: pipeline.batch.max_wait.get(),
        checkpoint_interval: context.loaded.config.checkpoint.interval.get(),
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
