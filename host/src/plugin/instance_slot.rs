//! The instance a stage calls, kept between calls: instantiated on first use, discarded after a
//! failed call (an instance that trapped cannot be entered again) and replaced at the next call,
//! keeping the committed keyed state. Every kind of stage calls its plugin through a slot.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CallError, InstanceSettings, KeyedState, Plugin, PluginInstance};

/// A stage's plugin and its current instance in one partition worker.
pub struct InstanceSlot {
    plugin: Arc<Plugin>,
    settings: Arc<InstanceSettings>,
    instance: Option<PluginInstance>,
    /// The keyed state while no instance holds it (before the first call, after a failed call).
    parked_state: KeyedState,
}

impl std::fmt::Debug for InstanceSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSlot")
            .field("plugin", &self.plugin)
            .field("instantiated", &self.instance.is_some())
            .finish_non_exhaustive()
    }
}

impl InstanceSlot {
    /// A slot for `plugin`, starting from `state` (restored from a checkpoint, or empty).
    pub fn new(plugin: Arc<Plugin>, settings: Arc<InstanceSettings>, state: KeyedState) -> Self {
        InstanceSlot {
            plugin,
            settings,
            instance: None,
            parked_state: state,
        }
    }

    /// The plugin the slot runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The instance's settings (scope, limits, configuration).
    pub fn settings(&self) -> &Arc<InstanceSettings> {
        &self.settings
    }

    /// The stage's keyed state (committed writes only).
    pub fn keyed_state(&self) -> &KeyedState {
        match &self.instance {
            Some(instance) => instance.keyed_state(),
            None => &self.parked_state,
        }
    }

    /// Calls `call` on the instance, instantiating it first if needed. The outer error means no
    /// instance could be created (nothing ran); the inner one that the call failed, after which
    /// the instance is discarded (its committed state is kept for the next one).
    pub fn call<R>(
        &mut self,
        call: impl FnOnce(&mut PluginInstance) -> Result<R, CallError>,
    ) -> Result<Result<R, CallError>, CallError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            empty => {
                let state = std::mem::take(&mut self.parked_state);
                match PluginInstance::new(self.plugin.clone(), self.settings.clone(), state.clone())
                {
                    Ok(instance) => empty.insert(instance),
                    Err(e) => {
                        self.parked_state = state;
                        return Err(e);
                    }
                }
            }
        };
        let result = call(instance);
        if result.is_err()
            && let Some(mut instance) = self.instance.take()
        {
            self.parked_state = instance.take_keyed_state();
        }
        Ok(result)
    }

    /// Counters the plugin added to since the last call of this.
    pub fn take_counters(&mut self) -> BTreeMap<String, u64> {
        match &mut self.instance {
            Some(instance) => instance.take_counters(),
            None => BTreeMap::new(),
        }
    }
}
