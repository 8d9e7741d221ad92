//! The per-event transform stage: a batch in, records to named outputs and rejections out.
//!
//! The stage runs whatever version its [`PluginSlot`] holds: at the start of each batch (the
//! worker's batch boundary) it compares the slot's generation with the one it runs, and on a
//! change drops its instance and instantiates the new version with the keyed state it holds. A
//! trap never leaves the stage: the instance is replaced and the batch is retried event by event,
//! so that only the poison event goes to the dead letters (or, while the version is on probation,
//! to the version it replaced).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::batch::{empty_batch, fill_batch};
use super::{Rejected, Stage, StageError, StageOutput};
use crate::event::Event;
use crate::metrics::{Metrics, names};
use crate::plugin::bindings::{EventBatch, OutputBatch};
use crate::plugin::retire::retire;
use crate::plugin::slot::{Active, CallTally};
use crate::plugin::standby::{Prepare, SampleClock, Standby};
use crate::plugin::{
    CallError, InstanceSettings, KeyedState, PluginSlot, TransformInstance, TransformPlugin,
};

/// The record property that names the plugin version that produced a record (when the pipeline
/// asks for it, see [`StageTelemetry::label_versions`]); a Delta column reads it with
/// `value = "plugin_version"`.
pub const PLUGIN_VERSION_PROPERTY: &str = "weir-plugin-version";

/// The plugin version `record` is labelled with ([`PLUGIN_VERSION_PROPERTY`]), if it is.
pub fn labelled_version(record: &Event) -> Option<&str> {
    record
        .properties
        .iter()
        .rev()
        .find(|(name, _)| name == PLUGIN_VERSION_PROPERTY)
        .map(|(_, version)| version.as_str())
}

/// Where a stage reports its calls, and whether it labels its records with their version.
#[derive(Debug, Clone)]
pub struct StageTelemetry {
    /// The process's metrics.
    pub metrics: Metrics,
    /// Add the [`PLUGIN_VERSION_PROPERTY`] to every record (costs an allocation per record, so
    /// only done when a sink reads it).
    pub label_versions: bool,
}

/// One version's instance, created on first use and dropped after a trap.
struct Runner {
    plugin: Arc<TransformPlugin>,
    settings: Arc<InstanceSettings>,
    instance: Option<TransformInstance>,
    /// Whether the instance was made ready off the worker's thread (see `plugin::standby`).
    prepared: bool,
}

impl Runner {
    fn new(plugin: Arc<TransformPlugin>, base: &InstanceSettings) -> Self {
        Runner {
            settings: base.for_plugin(&plugin),
            plugin,
            instance: None,
            prepared: false,
        }
    }

    /// Calls the plugin on `batch` with `state`; the state comes back whatever happens (with the
    /// call's writes only if it succeeded).
    fn call(
        &mut self,
        batch: &EventBatch,
        state: &mut KeyedState,
    ) -> Result<OutputBatch, CallError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => {
                let instance = TransformInstance::new(
                    self.plugin.clone(),
                    self.settings.clone(),
                    KeyedState::default(),
                )?;
                self.instance.insert(instance)
            }
        };
        instance.put_keyed_state(std::mem::take(state));
        let result = instance.process(batch);
        *state = instance.take_keyed_state();
        if result.is_err() {
            // After a trap the instance cannot be entered again.
            self.instance = None;
        }
        result
    }

    fn version(&self) -> &Arc<str> {
        self.plugin.version()
    }
}

/// Runs a transform plugin over batches, isolating poison events when a batch traps.
pub struct WasmTransformStage {
    name: Arc<str>,
    base: Arc<InstanceSettings>,
    slot: Arc<PluginSlot<TransformPlugin>>,
    generation: u64,
    primary: Runner,
    /// The version the primary replaced, while the primary is on probation.
    fallback: Option<Runner>,
    /// The keyed state between calls (instances hold it only during a call).
    state: KeyedState,
    telemetry: Option<StageTelemetry>,
    batch: EventBatch,
    /// Where the slot leaves a ready instance of the next version (see `plugin::standby`).
    standby: Arc<Standby>,
    sample_clock: SampleClock,
}

impl std::fmt::Debug for WasmTransformStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmTransformStage")
            .field("name", &self.name)
            .field("plugin", &self.primary.plugin)
            .finish_non_exhaustive()
    }
}

impl WasmTransformStage {
    /// A stage running `plugin` for good, starting from `state` (restored from a checkpoint, or
    /// empty).
    pub fn new(
        name: Arc<str>,
        plugin: Arc<TransformPlugin>,
        settings: Arc<InstanceSettings>,
        state: KeyedState,
    ) -> Self {
        let slot = PluginSlot::fixed(settings.scope.pipeline.clone(), name.clone(), plugin);
        Self::with_slot(name, slot, settings, state, None)
    }

    /// A stage running whatever version `slot` holds, switching at batch boundaries. `settings`
    /// gives the scope and limits (its plugin name and version are replaced by each version's).
    pub fn with_slot(
        name: Arc<str>,
        slot: Arc<PluginSlot<TransformPlugin>>,
        settings: Arc<InstanceSettings>,
        state: KeyedState,
        telemetry: Option<StageTelemetry>,
    ) -> Self {
        let standby = Standby::new(settings.clone());
        let prepare: Arc<dyn Prepare<TransformPlugin>> = standby.clone();
        slot.add_standby(Arc::downgrade(&prepare));
        let Active {
            generation,
            plugin,
            fallback,
        } = slot.active();
        WasmTransformStage {
            primary: Runner::new(plugin, &settings),
            standby,
            sample_clock: SampleClock::default(),
            fallback: fallback.map(|f| Runner::new(f, &settings)),
            name,
            base: settings,
            slot,
            generation,
            state,
            telemetry,
            batch: empty_batch(0),
        }
    }

    /// The plugin version the stage runs now.
    pub fn plugin(&self) -> &Arc<TransformPlugin> {
        &self.primary.plugin
    }

    /// Whether the version the stage runs started on an instance made ready before the switch
    /// (see `plugin::standby`), rather than one instantiated at its first batch.
    pub fn started_prepared(&self) -> bool {
        self.primary.prepared
    }

    /// The stage's keyed state.
    pub fn keyed_state(&self) -> &KeyedState {
        &self.state
    }

    /// Takes the slot's active version if it changed since the last batch.
    fn refresh(&mut self) {
        if self.slot.generation() == self.generation {
            return;
        }
        let Active {
            generation,
            plugin,
            fallback,
        } = self.slot.active();
        self.generation = generation;
        if !Arc::ptr_eq(&plugin, &self.primary.plugin) {
            tracing::debug!(
                pipeline = %self.base.scope.pipeline, stage = %self.name,
                partition = self.base.scope.partition, from = %self.primary.version(),
                to = %plugin.version(), "switching plugin version at the batch boundary"
            );
            // The slot may have made an instance ready off this thread (see `plugin::standby`).
            let mut primary = Runner::new(plugin, &self.base);
            primary.instance = self.standby.take(&primary.plugin);
            primary.prepared = primary.instance.is_some();
            // The old version's instance may become the fallback: keep it warm. Replaced
            // instances are freed off this thread (see `plugin::retire`).
            let old = std::mem::replace(&mut self.primary, primary);
            let fallback = match fallback {
                Some(f) if Arc::ptr_eq(&f, &old.plugin) => Some(old),
                Some(f) => {
                    retire(old);
                    Some(Runner::new(f, &self.base))
                }
                None => {
                    retire(old);
                    None
                }
            };
            if let Some(replaced) = std::mem::replace(&mut self.fallback, fallback) {
                retire(replaced);
            }
        } else {
            self.fallback = match (fallback, self.fallback.take()) {
                (Some(f), Some(runner)) if Arc::ptr_eq(&f, &runner.plugin) => Some(runner),
                (f, replaced) => {
                    if let Some(replaced) = replaced {
                        retire(replaced);
                    }
                    f.map(|f| Runner::new(f, &self.base))
                }
            };
        }
    }

    fn call(&mut self, events: &[Event], fallback: bool) -> Result<OutputBatch, CallError> {
        fill_batch(&mut self.batch, events);
        let runner = match (fallback, &mut self.fallback) {
            (true, Some(runner)) => runner,
            _ => &mut self.primary,
        };
        let started = Instant::now();
        let result = runner.call(&self.batch, &mut self.state);
        if let Some(telemetry) = &self.telemetry {
            let labels = [
                ("pipeline", &*self.base.scope.pipeline),
                ("stage", &*self.name),
            ];
            telemetry.metrics.observe(
                names::PLUGIN_CALL_SECONDS,
                &labels,
                started.elapsed().as_secs_f64(),
            );
            if let Err(error) = &result {
                telemetry.metrics.add(
                    names::PLUGIN_TRAPS,
                    &[labels[0], labels[1], ("version", &error.version)],
                    1,
                );
            }
        }
        result
    }

    fn label_versions(&self) -> bool {
        self.telemetry.as_ref().is_some_and(|t| t.label_versions)
    }

    /// Counts a call of the primary for its probation; true when the slot rolled back.
    fn tally(&mut self, tally: CallTally) -> bool {
        self.fallback.is_some() && self.slot.record(self.generation, tally)
    }

    /// Runs `events` one by one after their batch trapped: each event that traps again goes to
    /// the fallback (during probation) or to the dead letters. Returns how many events it handled
    /// before the slot rolled back, if it did.
    fn isolate(&mut self, events: &[Event], out: &mut StageOutput) -> Option<usize> {
        let label = self.label_versions();
        for (index, event) in events.iter().enumerate() {
            let single = std::slice::from_ref(event);
            match self.call(single, false) {
                Ok(output) => {
                    let rejected_before = out.rejected.len();
                    decode_output(output, single, self.primary.version(), label, out);
                    let rejected = (out.rejected.len() - rejected_before) as u64;
                    if self.tally(CallTally {
                        events: 1,
                        rejected,
                        trapped: 0,
                    }) {
                        return Some(index + 1);
                    }
                }
                Err(trap) => {
                    let rolled_back = self.tally(CallTally {
                        events: 1,
                        rejected: 0,
                        trapped: 1,
                    });
                    self.after_trap(event, trap, out);
                    if rolled_back {
                        return Some(index + 1);
                    }
                }
            }
        }
        None
    }

    /// The event the primary trapped on: to the fallback if there is one, else a dead letter.
    fn after_trap(&mut self, event: &Event, trap: CallError, out: &mut StageOutput) {
        let single = std::slice::from_ref(event);
        let reason = if self.fallback.is_some() {
            match self.call(single, true) {
                Ok(output) => {
                    let version = self
                        .fallback
                        .as_ref()
                        .map_or_else(|| self.primary.version().clone(), |f| f.version().clone());
                    decode_output(output, single, &version, self.label_versions(), out);
                    return;
                }
                Err(second) => format!(
                    "plugin trapped: {}; the previous version {} trapped too: {}",
                    trap.reason, second.version, second.reason
                ),
            }
        } else {
            format!("plugin trapped: {}", trap.reason)
        };
        out.rejected.push(Rejected {
            event: event.clone(),
            reason,
            plugin_version: Some(trap.version.clone()),
        });
    }
}

impl Stage for WasmTransformStage {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn running_version(&self) -> Option<Arc<str>> {
        Some(self.primary.version().clone())
    }

    fn process(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        let mut events = events;
        // At most a few rounds: a round ends early only when the slot rolls back, after which
        // the version that runs is on no probation.
        for _ in 0..4 {
            if events.is_empty() {
                return Ok(());
            }
            self.refresh();
            match self.call(events, false) {
                Ok(output) => {
                    if self.sample_clock.due(events.len()) {
                        self.standby.keep_sample(&self.batch, &self.state);
                    }
                    let rejected_before = out.rejected.len();
                    decode_output(
                        output,
                        events,
                        self.primary.version(),
                        self.label_versions(),
                        out,
                    );
                    let rejected = (out.rejected.len() - rejected_before) as u64;
                    self.tally(CallTally {
                        events: events.len() as u64,
                        rejected,
                        trapped: 0,
                    });
                    return Ok(());
                }
                Err(trap) => {
                    tracing::warn!(
                        pipeline = %self.base.scope.pipeline, stage = %self.name,
                        partition = self.base.scope.partition, events = events.len(),
                        first_position = events[0].position, version = %trap.version,
                        reason = %trap.reason,
                        "plugin trapped on a batch; retrying it event by event"
                    );
                    match self.isolate(events, out) {
                        Some(done) => events = &events[done..],
                        None => return Ok(()),
                    }
                }
            }
        }
        // Still events left after repeated rollbacks: finish them one by one, whatever happens.
        self.refresh();
        self.isolate(events, out);
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.snapshot()
    }

    fn take_counters(&mut self) -> Vec<(String, u64)> {
        let mut counters: Vec<(String, u64)> = Vec::new();
        for runner in std::iter::once(&mut self.primary).chain(self.fallback.as_mut()) {
            if let Some(instance) = &mut runner.instance {
                counters.extend(instance.take_counters());
            }
        }
        counters
    }
}

/// Turns a plugin's output (checked by [`crate::plugin::check_output`]) into records and
/// rejections.
fn decode_output(
    output: OutputBatch,
    events: &[Event],
    version: &Arc<str>,
    label_versions: bool,
    out: &mut StageOutput,
) {
    let targets: Vec<Arc<str>> = output.targets.into_iter().map(Arc::from).collect();
    let payloads = Bytes::from(output.payloads);
    let mut start = 0usize;
    for emitted in output.emitted {
        // Indices were checked when the call returned; skip rather than panic should one not be.
        let (Some(event), Some(target)) = (
            events.get(emitted.event as usize),
            targets.get(emitted.target as usize),
        ) else {
            continue;
        };
        let end = (emitted.payload_end as usize).clamp(start, payloads.len());
        let body = if emitted.forward {
            event.body.clone()
        } else {
            payloads.slice(start..end)
        };
        start = end;
        let mut properties = event.properties.clone();
        if label_versions {
            properties.retain(|(name, _)| name != PLUGIN_VERSION_PROPERTY);
            properties.push((PLUGIN_VERSION_PROPERTY.to_owned(), version.to_string()));
        }
        out.emitted.push((
            target.clone(),
            Event {
                partition: event.partition,
                position: event.position,
                key: event.key.clone(),
                event_time: event.event_time,
                enqueued_time: event.enqueued_time,
                properties,
                body,
            },
        ));
    }
    for rejection in output.rejected {
        let Some(event) = events.get(rejection.event as usize) else {
            continue;
        };
        out.rejected.push(Rejected {
            event: event.clone(),
            reason: rejection.reason,
            plugin_version: Some(version.clone()),
        });
    }
}
