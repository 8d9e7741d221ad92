//! The instance a stage calls, kept between calls: instantiated on first use, discarded after a
//! failed call (an instance that trapped cannot be entered again) and replaced at the next call,
//! keeping the committed keyed state. Window and join stages call their plugin through one.
//!
//! An instance slot may follow a stage's version manager ([`PluginSlot`]): at
//! [`InstanceSlot::refresh`] (a batch boundary) it takes the version active there, handing the
//! committed keyed state to the new version's instance, and it reports what each batch did for
//! the new version's probation ([`InstanceSlot::tally`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::slot::CallTally;
use super::{
    CallError, InstanceSettings, KeyedState, Plugin, PluginInstance, PluginScope, PluginSlot,
};

/// A stage's plugin and its current instance in one partition worker.
pub struct InstanceSlot {
    plugin: Arc<Plugin>,
    settings: Arc<InstanceSettings>,
    instance: Option<PluginInstance>,
    /// The keyed state while no instance holds it (before the first call, after a failed call).
    parked_state: KeyedState,
    /// The stage's version manager, when the stage follows one.
    versions: Option<Versions>,
}

/// The version manager an instance slot follows, and what it has seen of it.
struct Versions {
    slot: Arc<PluginSlot<Plugin>>,
    /// The manager's generation the running version was taken at.
    generation: u64,
    /// Calls that failed since the last [`InstanceSlot::tally`].
    failed_calls: u64,
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
            versions: None,
        }
    }

    /// The same slot following `versions`: it runs the version active there now, and switches at
    /// each [`InstanceSlot::refresh`] when another becomes active.
    pub fn following(mut self, versions: Arc<PluginSlot<Plugin>>) -> Self {
        self.versions = Some(Versions {
            slot: versions,
            generation: 0,
            failed_calls: 0,
        });
        self.refresh();
        self
    }

    /// At a batch boundary: takes the version the version manager holds now, if it changed. The
    /// committed keyed state moves to the new version's instance (created at the next call);
    /// what the stage holds itself (windows, buffered join sides) is untouched.
    pub fn refresh(&mut self) {
        let Some(versions) = &mut self.versions else {
            return;
        };
        if versions.slot.generation() == versions.generation {
            return;
        }
        let active = versions.slot.active();
        versions.generation = active.generation;
        versions.failed_calls = 0;
        if Arc::ptr_eq(&active.plugin, &self.plugin) {
            return;
        }
        tracing::debug!(
            pipeline = %self.settings.scope.pipeline, stage = %self.settings.scope.stage,
            partition = self.settings.scope.partition, from = %self.plugin.version(),
            to = %active.plugin.version(), "switching plugin version at the batch boundary"
        );
        if let Some(mut instance) = self.instance.take() {
            self.parked_state = instance.take_keyed_state();
        }
        let mut settings = (*self.settings).clone();
        settings.scope = PluginScope {
            plugin: active.plugin.name().clone(),
            version: active.plugin.version().clone(),
            ..settings.scope
        };
        self.settings = Arc::new(settings);
        self.plugin = active.plugin;
    }

    /// Reports a batch of `events` events, `rejected` of them refused by the plugin, for the
    /// probation of the running version (the calls that failed since the last tally count as
    /// trapped events). True when this made the version manager roll back; the stage switches
    /// at its next [`InstanceSlot::refresh`].
    pub fn tally(&mut self, events: u64, rejected: u64) -> bool {
        let Some(versions) = &mut self.versions else {
            return false;
        };
        let trapped = std::mem::take(&mut versions.failed_calls);
        if events == 0 && rejected == 0 && trapped == 0 {
            return false;
        }
        versions.slot.record(
            versions.generation,
            CallTally {
                events: events.max(trapped),
                rejected,
                trapped,
            },
        )
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
        if result.is_err() {
            if let Some(versions) = &mut self.versions {
                versions.failed_calls += 1;
            }
            if let Some(mut instance) = self.instance.take() {
                self.parked_state = instance.take_keyed_state();
            }
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
