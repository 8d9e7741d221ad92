//! Building one partition's stage of each kind from its configuration: a per-event transform, a
//! window aggregate, an interval join or a deduplication, each restored from the partition's
//! checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::StartError;
use crate::checkpoint::Checkpoint;
use crate::config::{LoadedConfig, StageConfig};
use crate::metrics::Metrics;
use crate::plugin::{InstanceSettings, KeyedState, Plugin, PluginKind, PluginScope, PluginSlot};
use crate::stage::{
    DedupStage, JoinSettings, JoinStage, Stage, WasmTransformStage, WindowSettings, WindowStage,
};

/// The kind of plugin (the world) a stage runs; `None` for a stage without a plugin.
pub fn plugin_kind(stage: &StageConfig) -> Option<PluginKind> {
    if stage.dedup.is_some() {
        None
    } else if stage.window.is_some() {
        Some(PluginKind::WindowAggregate)
    } else if stage.join.is_some() {
        Some(PluginKind::JoinEnrichment)
    } else {
        Some(PluginKind::Transform)
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
    pub(crate) metrics: &'a Metrics,
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
        if let Some(dedup) = &stage.dedup {
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
        let plugin = stage
            .plugin
            .as_ref()
            .zip(plugin_kind(stage))
            .and_then(|(path, kind)| self.plugins.get(&(self.loaded.resolve(path), kind)))
            .cloned()
            .ok_or_else(|| restore_error("its plugin was not loaded".to_owned()))?;
        let config = &self.loaded.config;
        let config_json = match &stage.config {
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
            max_memory_bytes: stage
                .max_memory_bytes
                .unwrap_or(config.plugins.max_memory_bytes),
            call_timeout: stage
                .call_timeout
                .unwrap_or(config.plugins.call_timeout)
                .get(),
        });
        if let Some(join) = &stage.join {
            return Ok(Box::new(
                JoinStage::new(
                    stage.name.as_str().into(),
                    JoinSettings::from_config(join),
                    |keyed| PluginSlot::new(plugin, settings, keyed),
                    snapshot,
                    self.metrics.clone(),
                )
                .map_err(|e| restore_error(e.to_string()))?,
            ));
        }
        Ok(match &stage.window {
            Some(window) => Box::new(
                WindowStage::new(
                    stage.name.as_str().into(),
                    WindowSettings::from_config(window),
                    |keyed| PluginSlot::new(plugin, settings, keyed),
                    snapshot,
                    self.metrics.clone(),
                )
                .map_err(|e| restore_error(e.to_string()))?,
            ),
            None => {
                let state = match snapshot {
                    Some(bytes) => {
                        KeyedState::restore(bytes).map_err(|e| restore_error(e.to_string()))?
                    }
                    None => KeyedState::default(),
                };
                Box::new(WasmTransformStage::new(
                    stage.name.as_str().into(),
                    plugin,
                    settings,
                    state,
                ))
            }
        })
    }
}
