//! The instance a stage calls, kept between calls: instantiated on first use, discarded after a
//! failed call (an instance that trapped cannot be entered again) and replaced at the next call,
//! keeping the committed keyed state. Every plugin stage (transform, window, join) calls its
//! plugin through one (see `stage::plugin_stage`).
//!
//! An instance slot may follow a stage's version manager ([`PluginSlot`]): at
//! [`InstanceSlot::refresh`] (a batch boundary of the partition worker) it takes the version
//! active there, handing the committed keyed state to the new version's instance. While that
//! version is on probation, the version it replaced stays at hand as the *fallback*
//! ([`InstanceSlot::call_fallback`]): the stage calls it again with the very request the new
//! version trapped on. The stage reports what each call did for the probation
//! ([`InstanceSlot::tally`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::EventBatch;
use super::slot::CallTally;
use super::standby::{Prepare, SampleClock, Standby};
use super::{CallError, InstanceSettings, KeyedState, Plugin, PluginInstance, PluginSlot};

/// A stage's plugin and its current instance in one partition worker.
pub struct InstanceSlot {
    plugin: Arc<Plugin>,
    settings: Arc<InstanceSettings>,
    instance: Option<PluginInstance>,
    /// The keyed state while no instance holds it (before the first call, after a failed call).
    parked_state: KeyedState,
    /// The stage's version manager, when the stage follows one.
    versions: Option<Versions>,
    /// The version the running one replaced, while the running one is on probation.
    fallback: Option<Fallback>,
    /// Where the version manager leaves an instance of the next version, made ready before it
    /// is activated (see `plugin::standby`), rehearsed on the sample the stage keeps there (see
    /// [`InstanceSlot::keep_sample`]).
    standby: Option<Arc<Standby>>,
    /// When the stage last handed the standby a sample.
    sample_clock: SampleClock,
    /// Whether the running version started on an instance the standby made ready.
    prepared: bool,
}

/// The version manager an instance slot follows, and what it has seen of it.
struct Versions {
    slot: Arc<PluginSlot<Plugin>>,
    /// The manager's generation the running version was taken at.
    generation: u64,
}

/// The previous version during a probation, with its instance (kept warm between calls, without
/// keyed state: the state moves in for each call and back out).
struct Fallback {
    plugin: Arc<Plugin>,
    settings: Arc<InstanceSettings>,
    instance: Option<PluginInstance>,
}

impl std::fmt::Debug for InstanceSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSlot")
            .field("plugin", &self.plugin)
            .field("instantiated", &self.instance.is_some())
            .field(
                "fallback",
                &self.fallback.as_ref().map(|f| f.plugin.version().clone()),
            )
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
            fallback: None,
            standby: None,
            sample_clock: SampleClock::default(),
            prepared: false,
        }
    }

    /// The same slot following `versions`: it runs the version active there now, and switches at
    /// each [`InstanceSlot::refresh`] when another becomes active.
    pub fn following(mut self, versions: Arc<PluginSlot<Plugin>>) -> Self {
        let standby = Standby::new(self.settings.clone());
        let prepare: Arc<dyn Prepare<Plugin>> = standby.clone();
        versions.add_standby(Arc::downgrade(&prepare));
        self.standby = Some(standby);
        self.versions = Some(Versions {
            slot: versions,
            generation: 0,
        });
        self.refresh();
        self
    }

    /// At a batch boundary (or right after an automatic rollback): takes the version the version
    /// manager holds now, and its fallback, if they changed. The committed keyed state moves to
    /// the new version's instance (made ready by the version manager, or created at the next
    /// call); what the stage holds itself
    /// (windows, buffered join sides) is untouched. Between two refreshes the slot runs one
    /// version, whatever the manager does meanwhile.
    pub fn refresh(&mut self) {
        let Some(versions) = &mut self.versions else {
            return;
        };
        if versions.slot.generation() == versions.generation {
            return;
        }
        let active = versions.slot.active();
        versions.generation = active.generation;
        let previous = if Arc::ptr_eq(&active.plugin, &self.plugin) {
            None
        } else {
            tracing::debug!(
                pipeline = %self.settings.scope.pipeline, stage = %self.settings.scope.stage,
                partition = self.settings.scope.partition, from = %self.plugin.version(),
                to = %active.plugin.version(), "switching plugin version at the batch boundary"
            );
            let mut instance = self.instance.take();
            if let Some(instance) = &mut instance {
                self.parked_state = instance.take_keyed_state();
            }
            let settings = self.settings.for_plugin(&active.plugin);
            let plugin = std::mem::replace(&mut self.plugin, active.plugin);
            let settings = std::mem::replace(&mut self.settings, settings);
            self.prepared = false;
            if let Some(mut ready) = self.standby.as_ref().and_then(|s| s.take(&self.plugin)) {
                ready.put_keyed_state(std::mem::take(&mut self.parked_state));
                self.instance = Some(ready);
                self.prepared = true;
            }
            // The replaced version may become the fallback: its instance stays warm.
            Some(Fallback {
                plugin,
                settings,
                instance,
            })
        };
        // The wanted fallback is the replaced version or the one kept so far; the other
        // instances are freed off this thread (see `plugin::retire`).
        let mut candidates: Vec<Fallback> = [previous, self.fallback.take()]
            .into_iter()
            .flatten()
            .collect();
        self.fallback = active.fallback.map(|wanted| {
            match candidates
                .iter()
                .position(|f| Arc::ptr_eq(&f.plugin, &wanted))
            {
                Some(found) => candidates.swap_remove(found),
                None => Fallback {
                    settings: self.settings.for_plugin(&wanted),
                    plugin: wanted,
                    instance: None,
                },
            }
        });
        for replaced in candidates {
            super::retire::retire(replaced);
        }
    }

    /// Reports what calls of the running version did, for its probation: `tally.events` events
    /// (or windows, or pairs) handed to it, of which it rejected `tally.rejected` and trapped on
    /// `tally.trapped`. When this makes the version manager roll back, the slot switches at once
    /// (the version it falls back to is the one that ran before, so nothing is mixed within a
    /// batch that was not already) and this returns true.
    pub fn tally(&mut self, tally: CallTally) -> bool {
        if self.fallback.is_none() || tally == CallTally::default() {
            return false;
        }
        let Some(versions) = &self.versions else {
            return false;
        };
        let rolled_back = versions.slot.record(
            versions.generation,
            CallTally {
                events: tally.events.max(tally.trapped),
                ..tally
            },
        );
        if rolled_back {
            self.refresh();
        }
        rolled_back
    }

    /// The plugin the slot runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Whether the running version started on an instance made ready before the switch (see
    /// `plugin::standby`), rather than one instantiated at its first call.
    pub fn started_prepared(&self) -> bool {
        self.prepared
    }

    /// Hands the standby `batch` (of `events` events, just run) and the keyed state now as the
    /// sample the next version rehearses on, when the [`SampleClock`] says it is time. Only
    /// per-event transforms rehearse (see `plugin::standby`).
    pub fn keep_sample(&mut self, batch: &EventBatch, events: usize) {
        if let Some(standby) = &self.standby
            && self.sample_clock.due(events)
        {
            let state = match &self.instance {
                Some(instance) => instance.keyed_state(),
                None => &self.parked_state,
            };
            standby.keep_sample(batch, state);
        }
    }

    /// The version a call the running version traps on is given to, during its probation.
    pub fn fallback_version(&self) -> Option<&Arc<str>> {
        self.fallback.as_ref().map(|f| f.plugin.version())
    }

    /// The generation of the version slot's shadow runs (0 without a version slot): it changes
    /// when a run starts.
    pub fn shadow_generation(&self) -> u64 {
        self.versions
            .as_ref()
            .map_or(0, |v| v.slot.shadows().generation())
    }

    /// The version slot's current shadow run, if any (see [`super::shadow`]).
    pub fn shadow_run(&self) -> Option<Arc<super::shadow::ShadowRun<Plugin>>> {
        self.versions.as_ref()?.slot.shadows().current()
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

    /// The stage's keyed state, to take its changes or expire keys (between calls).
    pub fn keyed_state_mut(&mut self) -> &mut KeyedState {
        match &mut self.instance {
            Some(instance) => instance.keyed_state_mut(),
            None => &mut self.parked_state,
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
                // The state moves in after instantiation, so that a failed one keeps it here
                // without a copy.
                let mut instance = PluginInstance::new(
                    self.plugin.clone(),
                    self.settings.clone(),
                    KeyedState::default(),
                )?;
                instance.put_keyed_state(std::mem::take(&mut self.parked_state));
                empty.insert(instance)
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

    /// Calls `call` on the fallback version, with the stage's keyed state (the same committed
    /// state the running version's failed call started from: a failed call commits nothing).
    /// `None` when there is no fallback (no probation); otherwise like [`InstanceSlot::call`].
    pub fn call_fallback<R>(
        &mut self,
        call: impl FnOnce(&mut PluginInstance) -> Result<R, CallError>,
    ) -> Option<Result<Result<R, CallError>, CallError>> {
        let fallback = self.fallback.as_mut()?;
        let state = match &mut self.instance {
            Some(instance) => instance.take_keyed_state(),
            None => std::mem::take(&mut self.parked_state),
        };
        let instance = match &mut fallback.instance {
            Some(instance) => {
                instance.put_keyed_state(state);
                instance
            }
            empty => match PluginInstance::new(
                fallback.plugin.clone(),
                fallback.settings.clone(),
                KeyedState::default(),
            ) {
                Ok(mut instance) => {
                    instance.put_keyed_state(state);
                    empty.insert(instance)
                }
                Err(e) => {
                    self.return_state(state);
                    return Some(Err(e));
                }
            },
        };
        let result = call(instance);
        let state = instance.take_keyed_state();
        if result.is_err() {
            fallback.instance = None;
        }
        self.return_state(state);
        Some(Ok(result))
    }

    /// Puts the keyed state back where [`InstanceSlot::call_fallback`] took it from.
    fn return_state(&mut self, state: KeyedState) {
        match &mut self.instance {
            Some(instance) => instance.put_keyed_state(state),
            None => self.parked_state = state,
        }
    }

    /// Counters the plugin (and its fallback) added to since the last call of this.
    pub fn take_counters(&mut self) -> BTreeMap<String, u64> {
        let mut counters = match &mut self.instance {
            Some(instance) => instance.take_counters(),
            None => BTreeMap::new(),
        };
        if let Some(instance) = self.fallback.as_mut().and_then(|f| f.instance.as_mut()) {
            for (name, count) in instance.take_counters() {
                *counters.entry(name).or_default() += count;
            }
        }
        counters
    }
}
