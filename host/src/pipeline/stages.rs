//! Building one partition's stage of each kind from its configuration: a per-event transform, a
//! window aggregate, an interval join or a deduplication, each restored from the partition's
//! checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::StartError;
use crate::checkpoint::Checkpoint;
use crate::config::{LoadedConfig, PipelineConfig, StageConfig, StageKind};
use crate::metrics::Metrics;
use crate::plugin::{
    InstanceSettings, InstanceSlot, KeyedState, Plugin, PluginKind, PluginScope, PluginSlot,
};
use crate::reference::ReferenceTables;
use crate::stage::{
    DedupStage, JoinSettings, JoinStage, Stage, StageTelemetry, WasmTransformStage, WindowSettings,
    WindowStage,
};

/// The kind of plugin (the world) a stage runs; `None` for a stage without a plugin.
pub fn plugin_kind(stage: &StageConfig) -> Option<PluginKind> {
    match stage.kind {
        StageKind::Transform { .. } => Some(PluginKind::Transform),
        StageKind::Window { .. } => Some(PluginKind::WindowAggregate),
        StageKind::Join { .. } => Some(PluginKind::JoinEnrichment),
        StageKind::Dedup { .. } => None,
    }
}

/// A window or join stage's instance slot, following the stage's version slot when it has one.
fn instance_slot(
    plugin: Arc<Plugin>,
    settings: Arc<InstanceSettings>,
    keyed: KeyedState,
    versions: Option<Arc<PluginSlot<Plugin>>>,
) -> InstanceSlot {
    let slot = InstanceSlot::new(plugin, settings, keyed);
    match versions {
        Some(versions) => slot.following(versions),
        None => slot,
    }
}

/// What every stage of one pipeline partition is built from.
pub(crate) struct StageBuilder<'a> {
    pub(crate) loaded: &'a LoadedConfig,
    pub(crate) pipeline_name: &'a str,
    pub(crate) pipeline: &'a Arc<str>,
    pub(crate) partition: u32,
    pub(crate) checkpoint: &'a Checkpoint,
    pub(crate) plugins: &'a HashMap<(PathBuf, PluginKind), Arc<Plugin>>,
    /// Plugin stages' version slots by stage name (hot swap, probation, rollback).
    pub(crate) slots: &'a HashMap<String, Arc<PluginSlot<Plugin>>>,
    /// Reference tables by stage name.
    pub(crate) references: &'a HashMap<String, ReferenceTables>,
    pub(crate) metrics: &'a Metrics,
    /// Where transform stages report their calls; whether every plugin stage labels its records
    /// with their version.
    pub(crate) telemetry: StageTelemetry,
}

/// Loads the reference tables of every stage of `pipeline` (off the async threads) and starts
/// watching them for changes; by stage name.
pub(crate) async fn load_references(
    loaded: &LoadedConfig,
    pipeline_name: &str,
    pipeline: &PipelineConfig,
    metrics: &Metrics,
) -> Result<HashMap<String, ReferenceTables>, StartError> {
    let mut references = HashMap::new();
    for stage in &pipeline.stages {
        let Some(plugin) = stage.plugin().filter(|p| !p.reference.is_empty()) else {
            continue;
        };
        let configs = plugin.reference.clone();
        let resolver = loaded.clone();
        let error = |reason: String| StartError::Reference {
            pipeline: pipeline_name.to_owned(),
            stage: stage.name.clone(),
            source: crate::reference::ReferenceError {
                table: String::new(),
                path: PathBuf::new(),
                reason,
            },
        };
        let tables = tokio::task::spawn_blocking(move || {
            ReferenceTables::load(&configs, |path| resolver.resolve(path))
        })
        .await
        .map_err(|e| error(format!("the loading task failed: {e}")))?
        .map_err(|source| StartError::Reference {
            pipeline: pipeline_name.to_owned(),
            stage: stage.name.clone(),
            source,
        })?;
        tables.watch(&plugin.reference, (pipeline_name, &stage.name), metrics);
        references.insert(stage.name.clone(), tables);
    }
    Ok(references)
}

impl StageBuilder<'_> {
    /// The stage `stage` describes, with its state restored from the checkpoint.
    pub(crate) fn build(&self, stage: &StageConfig) -> Result<Box<dyn Stage>, StartError> {
        let restore_error = |reason: String| StartError::Restore {
            pipeline: self.pipeline_name.to_owned(),
            partition: self.partition,
            stage: stage.name.clone(),
            reason,
        };
        let snapshot = self.checkpoint.stages.get(&stage.name).map(Vec::as_slice);
        let plugin_stage = match &stage.kind {
            StageKind::Transform { plugin }
            | StageKind::Window { plugin, .. }
            | StageKind::Join { plugin, .. } => plugin,
            StageKind::Dedup { dedup } => {
                let horizon = i64::try_from(dedup.horizon.get().as_millis()).unwrap_or(i64::MAX);
                return Ok(Box::new(
                    DedupStage::new(
                        stage.name.as_str().into(),
                        self.pipeline.clone(),
                        self.partition,
                        dedup.id_field.clone(),
                        horizon,
                        snapshot,
                        self.metrics.clone(),
                    )
                    .map_err(|e| restore_error(e.to_string()))?,
                ));
            }
        };
        let slot = self.slots.get(&stage.name).cloned();
        // A stage with a version slot starts with the version active now (a worker started
        // after a swap runs the new version).
        let plugin = match &slot {
            Some(slot) => Some(slot.active().plugin),
            None => plugin_kind(stage)
                .and_then(|kind| {
                    let path = self.loaded.resolve(&plugin_stage.path);
                    self.plugins.get(&(path, kind))
                })
                .cloned(),
        }
        .ok_or_else(|| restore_error("its plugin was not loaded".to_owned()))?;
        let config = &self.loaded.config;
        let config_json = match &plugin_stage.config {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".to_owned()),
            None => "{}".to_owned(),
        };
        let settings = Arc::new(InstanceSettings {
            scope: PluginScope {
                pipeline: self.pipeline.clone(),
                stage: stage.name.as_str().into(),
                partition: self.partition,
                plugin: plugin.name().clone(),
                version: plugin.version().clone(),
            },
            config_json: config_json.into(),
            max_memory_bytes: plugin_stage
                .max_memory_bytes
                .unwrap_or(config.plugins.max_memory_bytes),
            call_timeout: plugin_stage
                .call_timeout
                .unwrap_or(config.plugins.call_timeout)
                .get(),
            reference: self
                .references
                .get(&stage.name)
                .cloned()
                .unwrap_or_else(ReferenceTables::none),
        });
        if let StageKind::Join { join, .. } = &stage.kind {
            return Ok(Box::new(
                JoinStage::new(
                    stage.name.as_str().into(),
                    JoinSettings::from_config(join),
                    |keyed| instance_slot(plugin, settings, keyed, slot),
                    snapshot,
                    self.metrics.clone(),
                )
                .map_err(|e| restore_error(e.to_string()))?
                .with_version_labels(self.telemetry.label_versions),
            ));
        }
        Ok(match &stage.kind {
            StageKind::Window { window, .. } => Box::new(
                WindowStage::new(
                    stage.name.as_str().into(),
                    WindowSettings::from_config(window),
                    |keyed| instance_slot(plugin, settings, keyed, slot),
                    snapshot,
                    self.metrics.clone(),
                )
                .map_err(|e| restore_error(e.to_string()))?
                .with_version_labels(self.telemetry.label_versions),
            ),
            // A transform: dedup and join stages were built above.
            _ => {
                let state = match snapshot {
                    Some(bytes) => {
                        KeyedState::restore(bytes).map_err(|e| restore_error(e.to_string()))?
                    }
                    None => KeyedState::default(),
                };
                match slot {
                    Some(slot) => Box::new(WasmTransformStage::with_slot(
                        stage.name.as_str().into(),
                        slot,
                        settings,
                        state,
                        Some(self.telemetry.clone()),
                    )),
                    None => Box::new(WasmTransformStage::new(
                        stage.name.as_str().into(),
                        plugin,
                        settings,
                        state,
                    )),
                }
            }
        })
    }
}
