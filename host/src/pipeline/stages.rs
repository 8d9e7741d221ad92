//! Building one partition's stage of each kind from its configuration: a per-event transform, a
//! window aggregate, an interval join or a deduplication, each restored from the partition's
//! checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::StartError;
use crate::checkpoint::Checkpoint;
use crate::config::{LoadedConfig, PipelineConfig, PluginStage, StageConfig, StageKind};
use crate::metrics::Metrics;
use crate::plugin::{
    InstanceSettings, InstanceSlot, KeyedState, Plugin, PluginKind, PluginScope, PluginSlot,
    StateSpill,
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

/// A plugin stage's parts: the version it starts with, its instance settings and the version
/// slot it follows (if it is hot-swappable).
struct PluginParts {
    plugin: Arc<Plugin>,
    settings: Arc<InstanceSettings>,
    slot: Option<Arc<PluginSlot<Plugin>>>,
    /// The keyed state's time-to-live, in milliseconds.
    state_ttl: Option<i64>,
}

impl PluginParts {
    /// A window or join stage's instance slot, from `keyed` (its restored keyed state).
    fn instance_slot(self, mut keyed: KeyedState) -> InstanceSlot {
        keyed.set_stage_ttl(self.state_ttl);
        instance_slot(self.plugin, self.settings, keyed, self.slot)
    }
}

impl StageBuilder<'_> {
    /// The stage `stage` describes, with its state restored from the checkpoint.
    pub(crate) fn build(&self, stage: &StageConfig) -> Result<Box<dyn Stage>, StartError> {
        let name: Arc<str> = stage.name.as_str().into();
        let snapshot = self.checkpoint.stages.get(&stage.name).map(Vec::as_slice);
        let restore_error = |reason: String| self.restore_error(stage, reason);
        let labels = self.telemetry.label_versions;
        Ok(match &stage.kind {
            StageKind::Dedup { dedup } => {
                let horizon = i64::try_from(dedup.horizon.get().as_millis()).unwrap_or(i64::MAX);
                Box::new(
                    DedupStage::new(
                        name,
                        self.pipeline.clone(),
                        self.partition,
                        dedup.id_field.clone(),
                        horizon,
                        snapshot,
                        self.metrics.clone(),
                    )
                    .map_err(|e| restore_error(e.to_string()))?,
                )
            }
            StageKind::Join { plugin, join } => {
                let parts = self.plugin_parts(stage, plugin)?;
                Box::new(
                    JoinStage::new(
                        name,
                        JoinSettings::from_config(join),
                        |keyed| parts.instance_slot(keyed),
                        snapshot,
                        self.metrics.clone(),
                    )
                    .map_err(|e| restore_error(e.to_string()))?
                    .with_version_labels(labels),
                )
            }
            StageKind::Window { plugin, window } => {
                let parts = self.plugin_parts(stage, plugin)?;
                Box::new(
                    WindowStage::new(
                        name,
                        WindowSettings::from_config(window),
                        |keyed| parts.instance_slot(keyed),
                        snapshot,
                        self.metrics.clone(),
                    )
                    .map_err(|e| restore_error(e.to_string()))?
                    .with_version_labels(labels),
                )
            }
            StageKind::Transform { plugin } => {
                let parts = self.plugin_parts(stage, plugin)?;
                let files = self.checkpoint.state_parts.get(&stage.name);
                let mut state = match (files, snapshot) {
                    (Some(files), _) => KeyedState::from_changes(files.iter().cloned())
                        .map_err(|e| restore_error(e.to_string()))?,
                    (None, Some(bytes)) => {
                        KeyedState::restore(bytes).map_err(|e| restore_error(e.to_string()))?
                    }
                    (None, None) => KeyedState::default(),
                };
                state.set_stage_ttl(parts.state_ttl);
                state.set_spill(Some(self.state_spill()));
                match parts.slot {
                    Some(slot) => Box::new(WasmTransformStage::with_slot(
                        name,
                        slot,
                        parts.settings,
                        state,
                        Some(self.telemetry.clone()),
                    )),
                    None => Box::new(WasmTransformStage::new(
                        name,
                        parts.plugin,
                        parts.settings,
                        state,
                    )),
                }
            }
        })
    }

    /// Where a transform stage's keyed state spills a large base (the `[state]` table).
    fn state_spill(&self) -> Arc<StateSpill> {
        let state = &self.loaded.config.state;
        Arc::new(StateSpill {
            dir: self.loaded.resolve(&state.spill_dir),
            above_bytes: state.spill_above_bytes,
        })
    }

    /// Why `stage` could not be restored or built.
    fn restore_error(&self, stage: &StageConfig, reason: String) -> StartError {
        StartError::Restore {
            pipeline: self.pipeline_name.to_owned(),
            partition: self.partition,
            stage: stage.name.clone(),
            reason,
        }
    }

    /// The plugin a plugin stage starts with and its instance settings. A stage with a version
    /// slot starts with the version active now (a worker started after a swap runs the new
    /// version).
    fn plugin_parts(
        &self,
        stage: &StageConfig,
        plugin_stage: &PluginStage,
    ) -> Result<PluginParts, StartError> {
        let slot = self.slots.get(&stage.name).cloned();
        let plugin = match &slot {
            Some(slot) => Some(slot.active().plugin),
            None => plugin_kind(stage)
                .and_then(|kind| {
                    let path = self.loaded.resolve(&plugin_stage.path);
                    self.plugins.get(&(path, kind))
                })
                .cloned(),
        }
        .ok_or_else(|| self.restore_error(stage, "its plugin was not loaded".to_owned()))?;
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
        Ok(PluginParts {
            plugin,
            settings,
            slot,
            state_ttl: plugin_stage
                .state_ttl
                .map(|ttl| i64::try_from(ttl.get().as_millis()).unwrap_or(i64::MAX)),
        })
    }
}
