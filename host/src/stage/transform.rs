//! The per-event transform stage: a batch in, records to named outputs and rejections out.
//!
//! The stage runs whatever version its [`PluginSlot`] holds (see [`super::plugin_stage`]): at the
//! start of each batch it takes the slot's active version if it changed, on an instance made ready
//! off the worker's thread when there is one, with the keyed state it holds. The hot path is one
//! call per batch. A trap never leaves the stage: the instance is replaced and the batch is
//! retried event by event, so that only the poison event goes to the dead letters (or, while the
//! version is on probation, to the version it replaced); each event of that retry counts for the
//! probation, and when the slot rolls back the rest of the batch runs on the version rolled back to.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;

use super::StageError;
use super::StageOutput;
use super::batch::{empty_batch, fill_batch};
use super::plugin_stage::{
    AnswerError, Answers, CallPolicy, PluginCall, PluginCore, PluginStage, Ran, StageKind, Trapped,
    Turn, Units, laid_out,
};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::plugin::bindings::{EventBatch, OutputBatch};
use crate::plugin::columns;
use crate::plugin::shadow::{REJECTED_OUTPUT, ShadowOutputs, ShadowRecord, ShadowRun};
use crate::plugin::{
    CallError, InstanceSettings, InstanceSlot, KeyedState, Plugin, PluginInstance, PluginSlot,
};

/// The record property that names the plugin version that produced a record (when the pipeline
/// asks for it, see [`StageTelemetry::label_versions`]); a Delta column reads it with
/// `value = "plugin_version"`.
pub const PLUGIN_VERSION_PROPERTY: &str = "weir-plugin-version";

/// The record property that names the versions of every plugin stage a record went through, as
/// `stage@crate-version+hash` (or `stage@hash` for a component without a crate version), comma
/// separated, in pipeline order; a Delta column reads it with `value = "plugin_versions"`.
pub const PLUGIN_VERSIONS_PROPERTY: &str = "weir-plugin-versions";

/// The lineage `record` is labelled with ([`PLUGIN_VERSIONS_PROPERTY`]), if it is.
pub fn labelled_lineage(record: &Event) -> Option<&str> {
    record
        .properties
        .iter()
        .rev()
        .find(|(name, _)| name == PLUGIN_VERSIONS_PROPERTY)
        .map(|(_, lineage)| lineage.as_str())
}

/// The lineage of a record made from records of lineages `upstream`: their entries, each once,
/// in order, then `entry`.
pub fn lineage<'a>(upstream: impl IntoIterator<Item = &'a str>, entry: &str) -> String {
    let mut entries: Vec<&str> = Vec::new();
    for part in upstream.into_iter().flat_map(|l| l.split(',')) {
        if !part.is_empty() && part != entry && !entries.contains(&part) {
            entries.push(part);
        }
    }
    entries.push(entry);
    entries.join(",")
}

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

/// The per-event transform kind of [`PluginStage`]: one call per batch, its state is the
/// plugin's keyed state alone.
pub struct Transform {
    /// The batch layout, its buffers reused from batch to batch.
    batch: EventBatch,
    /// A candidate version running in the shadow of the active one on this partition.
    shadow: Option<Shadowing>,
    /// The shadow runs' generation last looked at.
    shadow_generation: u64,
}

/// This partition's part of a shadow run (see [`crate::plugin::shadow`]): the candidate's
/// instance, on its own copy of the keyed state, and how many events it got.
struct Shadowing {
    run: Arc<ShadowRun<Plugin>>,
    partition: u32,
    instance: PluginInstance,
    seen: u64,
    batch: EventBatch,
}

impl Drop for Shadowing {
    fn drop(&mut self) {
        // Gone before its part was done: the partition was handed off, or the stage stopped.
        if self.seen < self.run.events() {
            self.run.leave(self.partition);
        }
    }
}

/// Runs a transform plugin over batches, isolating poison events when a batch traps.
pub type WasmTransformStage = PluginStage<Transform>;

impl PluginStage<Transform> {
    /// A stage running `plugin` for good, starting from `state` (restored from a checkpoint, or
    /// empty).
    pub fn new(
        name: Arc<str>,
        plugin: Arc<Plugin>,
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
        slot: Arc<PluginSlot<Plugin>>,
        settings: Arc<InstanceSettings>,
        state: KeyedState,
        telemetry: Option<StageTelemetry>,
    ) -> Self {
        let plugin = slot.active().plugin;
        let instances =
            InstanceSlot::new(plugin.clone(), settings.for_plugin(&plugin), state).following(slot);
        let label = telemetry.as_ref().is_some_and(|t| t.label_versions);
        let metrics = telemetry.map(|t| t.metrics);
        let core = PluginCore::new(name, instances, metrics, CallPolicy::TRANSFORM);
        PluginStage::from_parts(
            core,
            Transform {
                batch: empty_batch(0),
                shadow: None,
                shadow_generation: 0,
            },
        )
        .with_version_labels(label)
    }
}

impl StageKind for Transform {
    const NAME: &'static str = "WasmTransformStage";

    fn process(&mut self, turn: Turn<'_>, events: &[Event]) -> Result<(), StageError> {
        let Turn { core, out } = turn;
        self.look_for_shadow(core);
        let (emitted, rejected) = (out.emitted.len(), out.rejected.len());
        self.run_active(core, out, events)?;
        if let Some(shadow) = &mut self.shadow
            && shadow.compare(core.partition(), events, out, emitted, rejected)
        {
            self.shadow = None;
        }
        Ok(())
    }

    fn snapshot(&self, keyed: &KeyedState) -> Vec<u8> {
        keyed.snapshot()
    }

    const KEYED_ONLY: bool = true;

    fn describe(&self, _f: &mut std::fmt::DebugStruct<'_, '_>) {}
}

impl Transform {
    /// Starts this partition's part of a shadow run that started since the last batch: the
    /// candidate's instance on a copy of the keyed state as it is now.
    fn look_for_shadow(&mut self, core: &PluginCore) {
        let slot = core.instances();
        let generation = slot.shadow_generation();
        if generation == self.shadow_generation {
            if self.shadow.as_ref().is_some_and(|s| s.run.is_over()) {
                self.shadow = None;
            }
            return;
        }
        self.shadow_generation = generation;
        self.shadow = None;
        let Some(run) = slot.shadow_run() else {
            return;
        };
        let Some(seen) = run.join(core.partition()) else {
            return;
        };
        let plugin = run.plugin().clone();
        let settings = slot.settings().for_plugin(&plugin);
        match PluginInstance::new(plugin, settings, slot.keyed_state().clone()) {
            Ok(instance) => {
                self.shadow = Some(Shadowing {
                    run,
                    partition: core.partition(),
                    instance,
                    seen,
                    batch: empty_batch(0),
                });
            }
            Err(e) => run.fail(
                core.partition(),
                format!("cannot be instantiated: {}", e.kind),
            ),
        }
    }

    /// Runs the active version on `events`.
    fn run_active(
        &mut self,
        core: &mut PluginCore,
        out: &mut StageOutput,
        events: &[Event],
    ) -> Result<(), StageError> {
        let mut events = events;
        // At most a few rounds: a round ends early only when the slot rolls back, after which
        // the version that runs is on no probation.
        for _ in 0..4 {
            if events.is_empty() {
                return Ok(());
            }
            core.refresh();
            let probe = core.probe_now(out);
            let mut call = EventsCall::new(events, &mut self.batch);
            let what = Trapped::Events {
                events: events.len(),
                first_position: events[0].position,
            };
            match core.run(&mut call, what, out)? {
                Ran::Whole => {
                    core.keep_sample(&self.batch, events.len());
                    core.tally(&probe, out, events.len() as u64, 0);
                    return Ok(());
                }
                Ran::Isolated(Some(done)) => events = &events[done..],
                Ran::Isolated(None) => return Ok(()),
            }
        }
        // Still events left after repeated rollbacks: finish them one by one, whatever happens.
        core.refresh();
        let mut call = EventsCall::new(events, &mut self.batch);
        core.isolate(&mut call, events.len(), out)?;
        Ok(())
    }
}

impl Shadowing {
    /// Runs the candidate on the events of `events` it still needs and records what it made
    /// beside what the active version made of them (`out` past `emitted` and `rejected`).
    /// Returns whether this partition's part of the run is over.
    fn compare(
        &mut self,
        partition: u32,
        events: &[Event],
        out: &StageOutput,
        emitted: usize,
        rejected: usize,
    ) -> bool {
        let wanted = self.run.events().saturating_sub(self.seen);
        let count = events
            .len()
            .min(usize::try_from(wanted).unwrap_or(usize::MAX));
        let (Some(first), Some(last)) = (events.first(), events.get(count.wrapping_sub(1))) else {
            return wanted == 0;
        };
        let events = &events[..count];
        fill_batch(&mut self.batch, events);
        let shadow = match self.instance.process(&mut self.batch) {
            Ok(output) => shadow_outputs(output, events),
            Err(e) => {
                self.seen = self.run.events();
                self.run
                    .fail(partition, format!("the candidate trapped: {}", e.kind));
                return true;
            }
        };
        let range = first.position..=last.position;
        let mut active = ShadowOutputs::new();
        for (target, record) in out.emitted.get(emitted..).unwrap_or_default() {
            if range.contains(&record.position) {
                active
                    .entry(target.to_string())
                    .or_default()
                    .push(shadow_record(record.position, &record.body));
            }
        }
        for refused in out.rejected.get(rejected..).unwrap_or_default() {
            if range.contains(&refused.event.position) {
                active
                    .entry(REJECTED_OUTPUT.to_owned())
                    .or_default()
                    .push(shadow_record(
                        refused.event.position,
                        refused.reason.as_bytes(),
                    ));
            }
        }
        self.run.record(partition, count as u64, &active, &shadow);
        self.seen += count as u64;
        if self.seen >= self.run.events() {
            self.run.complete(partition);
            return true;
        }
        self.run.is_over()
    }
}

/// A record of a shadow comparison.
fn shadow_record(position: u64, body: &[u8]) -> ShadowRecord {
    ShadowRecord {
        position,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// What the candidate made of `events`, by output (its rejections under [`REJECTED_OUTPUT`]).
fn shadow_outputs(output: OutputBatch, events: &[Event]) -> ShadowOutputs {
    let mut outputs = ShadowOutputs::new();
    let mut start = 0usize;
    for emitted in columns::emitted(&output.emitted) {
        let end = (emitted.payload_end as usize).clamp(start, output.payloads.len());
        let (Some(event), Some(target)) = (
            events.get(emitted.event as usize),
            output.targets.get(emitted.target as usize),
        ) else {
            start = end;
            continue;
        };
        let body = if emitted.forward {
            &event.body[..]
        } else {
            &output.payloads[start..end]
        };
        start = end;
        outputs
            .entry(target.clone())
            .or_default()
            .push(shadow_record(event.position, body));
    }
    for refused in &output.rejected {
        if let Some(event) = events.get(refused.event as usize) {
            outputs
                .entry(REJECTED_OUTPUT.to_owned())
                .or_default()
                .push(shadow_record(event.position, refused.reason.as_bytes()));
        }
    }
    outputs
}

/// A transform's call: the batch's events, all at once or one by one.
struct EventsCall<'a> {
    events: &'a [Event],
    /// The request laid out last; a cell because a call adds the instance's projection to it.
    batch: RefCell<&'a mut EventBatch>,
    /// The events the request laid out last.
    laid_out: &'a [Event],
}

impl<'a> EventsCall<'a> {
    fn new(events: &'a [Event], batch: &'a mut EventBatch) -> Self {
        EventsCall {
            events,
            batch: RefCell::new(batch),
            laid_out: events,
        }
    }
}

impl PluginCall for EventsCall<'_> {
    type Answer = OutputBatch;

    fn lay_out(&mut self, units: Units) {
        self.laid_out = laid_out(self.events, units);
        fill_batch(self.batch.get_mut(), self.laid_out);
    }

    fn call(&self, instance: &mut PluginInstance) -> Result<OutputBatch, CallError> {
        instance.process(&mut self.batch.borrow_mut())
    }

    fn read(&mut self, answer: OutputBatch, to: &mut Answers<'_>) -> Result<(), AnswerError> {
        decode_output(answer, self.laid_out, to);
        Ok(())
    }

    fn dead_letters(&self, unit: usize) -> Vec<Event> {
        self.events.get(unit).cloned().into_iter().collect()
    }
}

/// Turns a plugin's output (checked by [`crate::plugin::check_output`]) into records and
/// rejections.
fn decode_output(output: OutputBatch, events: &[Event], to: &mut Answers<'_>) {
    let targets: Vec<Arc<str>> = output.targets.into_iter().map(Arc::from).collect();
    let payloads = Bytes::from(output.payloads);
    let mut start = 0usize;
    // Checked when the call returned; skip rather than panic should something not be.
    for emitted in columns::emitted(&output.emitted) {
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
        to.label(&mut properties, labelled_lineage(event));
        to.emit(
            target.clone(),
            Event {
                partition: event.partition,
                position: event.position,
                source: event.source.clone(),
                key: event.key.clone(),
                event_time: event.event_time,
                enqueued_time: event.enqueued_time,
                properties,
                body,
            },
        );
    }
    for rejection in output.rejected {
        if let Some(event) = events.get(rejection.event as usize) {
            to.reject(event.clone(), rejection.reason);
        }
    }
}
