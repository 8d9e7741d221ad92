//! The one plugin-stage core: what every stage that runs a plugin (per-event transform, window
//! aggregate, interval join) does the same way.
//!
//! - **Instances and hot swap**: the stage's [`InstanceSlot`] holds the running version's
//!   instance, takes the version its version slot holds at batch boundaries (a standby-prepared
//!   instance when there is one), and moves the keyed state to it.
//! - **Trap isolation**: a call that traps is retried one unit at a time (an event, a window, a
//!   pair), so that only the unit the plugin traps on goes to the dead letters.
//! - **Fallback and probation**: while a new version is on probation, a unit it traps on is given
//!   to the version it replaced, with the very same request (see below); what the running version
//!   did is reported to the version slot, which rolls back when the version fails its probation
//!   (the instance slot switches at once).
//! - **Telemetry**: failed calls are counted by version (`weir_plugin_traps_total`), calls are
//!   timed where the stage asks for it (`weir_plugin_call_seconds`), and a trapped batch is
//!   logged once.
//!
//! Each stage kind ([`StageKind`]) keeps only what is its own: how it lays out a call and reads
//! the answer ([`PluginCall`]), and its own state.
//!
//! The same request is safe to make twice: a call that traps commits nothing (the keyed-state
//! writes it made are discarded, see [`crate::plugin::KeyedState`]) and a stage applies what a
//! call returns (records, new accumulators) only when it returns. So an event is handled once, by
//! whichever version succeeded, and a window fires once.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Rejected, RejectionKind, Stage, StageError, StageFailure, StageOutput};
use crate::codec::{DecodeError, Reader, Writer};
use crate::event::{Event, Position};
use crate::metrics::{Metrics, names};
use crate::plugin::bindings::{EventBatch, OutputBatch};
use crate::plugin::shadow::{REJECTED_OUTPUT, ShadowOutputs, ShadowRecord, ShadowRun};
use crate::plugin::slot::CallTally;
use crate::plugin::{
    BaseWrite, CallError, InstanceSlot, KeyedState, Plugin, PluginInstance, ReplacedLayers,
};
use crate::time::{END_OF_INPUT, Mark};

/// What is particular to one kind of plugin stage: its state and how it runs a batch, with the
/// shared [`PluginCore`] for every plugin call.
pub trait StageKind: Send {
    /// The kind's name in debug output, such as `WindowStage`.
    const NAME: &'static str;

    /// Processes one batch of the stage's (first) input; see [`Stage::process`].
    fn process(&mut self, turn: Turn<'_>, events: &[Event]) -> Result<(), StageError>;

    /// Processes one batch of the stage's second input; see [`Stage::process_right`].
    fn process_right(&mut self, turn: Turn<'_>, events: &[Event]) -> Result<(), StageError> {
        self.process(turn, events)
    }

    /// The watermark advanced; see [`Stage::watermarks`].
    fn watermarks(&mut self, _turn: Turn<'_>, _marks: &[Mark]) -> Result<(), StageError> {
        Ok(())
    }

    /// The stage's state with the plugin's `keyed` state, for the checkpoint.
    fn snapshot(&self, keyed: &KeyedState) -> Vec<u8>;

    /// A copy of the kind's state for a shadow run (see [`crate::plugin::shadow`]): the candidate
    /// runs on it beside the active version. `None`: the kind runs its shadow runs itself (the
    /// per-event transform, on a copy of the keyed state alone).
    fn shadow_copy(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Whether the kind's state is the plugin's keyed state alone, so that its checkpoints can
    /// hold only what changed (see [`Stage::take_state_changes`]).
    const KEYED_ONLY: bool = false;

    /// What the debug output shows of the kind's state.
    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>);
}

/// What a kind works with in one call of its stage: the shared core, and where what the stage
/// produces goes.
pub struct Turn<'a> {
    /// The plugin-stage core, for every plugin call.
    pub core: &'a mut PluginCore,
    /// The stage's records and rejections.
    pub out: &'a mut StageOutput,
}

impl Turn<'_> {
    /// Runs `work`, which gives the running version units (returning how many), and reports what
    /// it did to the probation: those units (all it trapped on, if `work` failed), what it
    /// rejected and what it trapped on.
    pub(super) fn counted(
        self,
        work: impl FnOnce(&mut PluginCore, &mut StageOutput) -> Result<u64, StageError>,
    ) -> Result<(), StageError> {
        let Turn { core, out } = self;
        let probe = core.probe(out);
        let result = work(core, out);
        core.report(&probe, out, result.as_ref().ok().copied());
        result.map(|_| ())
    }
}

/// A stage running a plugin: the shared core and what its kind adds.
pub struct PluginStage<K> {
    core: PluginCore,
    kind: K,
    /// This partition's part of a shadow run, for kinds that copy their state for it
    /// ([`StageKind::shadow_copy`]).
    shadow: Option<KindShadow<K>>,
    /// The shadow runs' generation last looked at.
    shadow_generation: u64,
}

/// This partition's part of a shadow run of a window or join stage: the candidate's core and a
/// copy of the kind's state, fed the same events and watermarks as the active version.
struct KindShadow<K> {
    run: Arc<ShadowRun<Plugin>>,
    core: PluginCore,
    kind: K,
    /// Events of the run this partition got so far.
    seen: u64,
}

impl<K> Drop for KindShadow<K> {
    fn drop(&mut self) {
        // Gone before its part was done: the partition was handed off, or the stage stopped.
        if self.seen < self.run.events() {
            self.run.leave(self.core.partition());
        }
    }
}

/// Which of a stage's calls a shadow run follows.
#[derive(Clone, Copy)]
enum ShadowedCall<'a> {
    Left(&'a [Event]),
    Right(&'a [Event]),
    Marks(&'a [Mark]),
}

impl<K: StageKind> std::fmt::Debug for PluginStage<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct(K::NAME);
        d.field("name", &self.core.name);
        self.kind.describe(&mut d);
        d.finish_non_exhaustive()
    }
}

impl<K> PluginStage<K> {
    /// A stage of kind `kind` calling its plugin through `core`.
    pub(super) fn from_parts(core: PluginCore, kind: K) -> Self {
        PluginStage {
            core,
            kind,
            shadow: None,
            shadow_generation: 0,
        }
    }

    /// The kind's own part.
    pub(super) fn kind(&self) -> &K {
        &self.kind
    }

    /// The same stage, adding the [`super::PLUGIN_VERSION_PROPERTY`] (the version that made it)
    /// to every record when `label` is set.
    pub fn with_version_labels(mut self, label: bool) -> Self {
        self.core.label_versions = label;
        self
    }

    /// The plugin version the stage runs now (it follows its version slot at batch boundaries).
    pub fn plugin(&self) -> &Arc<Plugin> {
        self.core.slot.plugin()
    }

    /// The plugin version (content hash) the stage runs now.
    pub fn plugin_version(&self) -> &Arc<str> {
        self.core.version()
    }

    /// Whether the version the stage runs started on an instance made ready before the switch
    /// (see `plugin::standby`), rather than one instantiated at its first batch.
    pub fn started_prepared(&self) -> bool {
        self.core.slot.started_prepared()
    }

    /// The plugin's keyed state (committed writes only).
    pub fn keyed_state(&self) -> &KeyedState {
        self.core.slot.keyed_state()
    }
}

/// A stage kind that keeps state of its own next to the plugin's keyed state (open windows,
/// waiting join events), checkpointed with it.
pub trait StatefulKind: StageKind + Sized {
    /// The kind's settings.
    type Settings;

    /// The kind with `settings`, and the plugin's keyed state, from a checkpointed `snapshot`
    /// (none: from nothing).
    fn restore(settings: Self::Settings, snapshot: Option<&[u8]>) -> Restored<Self>;
}

impl<K: StatefulKind> PluginStage<K> {
    /// A stage over `slot`'s plugin, starting from a checkpointed `snapshot` (or from nothing).
    /// Its plugin cannot be instantiated: the stage fails (its state depends on every call).
    pub fn new(
        name: Arc<str>,
        settings: K::Settings,
        slot: impl FnOnce(KeyedState) -> InstanceSlot,
        snapshot: Option<&[u8]>,
        metrics: Metrics,
    ) -> Result<Self, DecodeError> {
        let (keyed, kind) = K::restore(settings, snapshot)?;
        let core = PluginCore::new(name, slot(keyed), Some(metrics), CallPolicy::STATEFUL);
        Ok(PluginStage::from_parts(core, kind))
    }
}

impl<K: StageKind> PluginStage<K> {
    /// Starts this partition's part of a shadow run that started since the last call, when the
    /// kind copies its state for it: the candidate, on a copy of the keyed state and of the
    /// kind's state as they are now.
    fn look_for_shadow(&mut self) {
        let slot = self.core.instances();
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
        let Some(kind) = self.kind.shadow_copy() else {
            return;
        };
        let partition = self.core.partition();
        let Some(seen) = run.join(partition) else {
            return;
        };
        let plugin = run.plugin().clone();
        let instances = InstanceSlot::new(
            plugin.clone(),
            slot.settings().for_plugin(&plugin),
            slot.keyed_state().clone(),
        );
        let mut core = PluginCore::new(self.core.name.clone(), instances, None, self.core.policy);
        core.label_versions = self.core.label_versions;
        self.shadow = Some(KindShadow {
            run,
            core,
            kind,
            seen,
        });
    }

    /// Runs `call` on the active version, and, during a shadow run, on the candidate too,
    /// recording what each made. A partition's part takes whole batches, and ends with the first
    /// watermarks after its N-th event (so the windows and unmatched join events those marks
    /// close are compared too); until then the candidate gets every call the active version gets.
    fn shadowed(
        &mut self,
        call: ShadowedCall<'_>,
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        self.look_for_shadow();
        if self.shadow.is_none() {
            return self.call_kind(call, out);
        }
        let (emitted, rejected) = (out.emitted.len(), out.rejected.len());
        let result = self.call_kind(call, out);
        if result.is_ok() && self.compare(call, out, emitted, rejected) {
            self.shadow = None;
        }
        result
    }

    /// Runs the candidate on `call` and records what it made beside what the active version
    /// made (`out` past `emitted` and `rejected`). Whether this partition's part is over.
    fn compare(
        &mut self,
        call: ShadowedCall<'_>,
        out: &StageOutput,
        emitted: usize,
        rejected: usize,
    ) -> bool {
        let Some(shadow) = &mut self.shadow else {
            return true;
        };
        let partition = shadow.core.partition();
        let mut made = StageOutput::default();
        let turn = Turn {
            core: &mut shadow.core,
            out: &mut made,
        };
        let (result, events) = match call {
            ShadowedCall::Left(events) => (shadow.kind.process(turn, events), events.len()),
            ShadowedCall::Right(events) => (shadow.kind.process_right(turn, events), events.len()),
            ShadowedCall::Marks(marks) => (shadow.kind.watermarks(turn, marks), 0),
        };
        if let Err(e) = result {
            shadow.seen = shadow.run.events();
            shadow
                .run
                .fail(partition, format!("the candidate failed: {}", e.failure));
            return true;
        }
        let active = shadow_outputs(
            out.emitted.get(emitted..).unwrap_or_default(),
            out.rejected.get(rejected..).unwrap_or_default(),
        );
        let candidate = shadow_outputs(&made.emitted, &made.rejected);
        shadow
            .run
            .record(partition, events as u64, &active, &candidate);
        shadow.seen += events as u64;
        let complete = shadow.seen >= shadow.run.events() && matches!(call, ShadowedCall::Marks(_));
        if complete {
            shadow.run.complete(partition);
        }
        complete || shadow.run.is_over()
    }

    /// The kind's own handling of `call`.
    fn call_kind(
        &mut self,
        call: ShadowedCall<'_>,
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        let core = &mut self.core;
        let turn = Turn { core, out };
        match call {
            ShadowedCall::Left(events) => self.kind.process(turn, events),
            ShadowedCall::Right(events) => self.kind.process_right(turn, events),
            ShadowedCall::Marks(marks) => self.kind.watermarks(turn, marks),
        }
    }
}

/// Records and rejections of a stage call, by output, for a shadow comparison (rejections under
/// [`REJECTED_OUTPUT`], by their reason).
fn shadow_outputs(emitted: &[(Arc<str>, Event)], rejected: &[Rejected]) -> ShadowOutputs {
    let mut outputs = ShadowOutputs::new();
    for (target, record) in emitted {
        outputs
            .entry(target.to_string())
            .or_default()
            .push(ShadowRecord {
                position: record.position,
                body: String::from_utf8_lossy(&record.body).into_owned(),
            });
    }
    for refused in rejected {
        outputs
            .entry(REJECTED_OUTPUT.to_owned())
            .or_default()
            .push(ShadowRecord {
                position: refused.event.position,
                body: refused.reason.clone(),
            });
    }
    outputs
}

impl<K: StageKind> Stage for PluginStage<K> {
    fn name(&self) -> &Arc<str> {
        &self.core.name
    }

    fn batch_boundary(&mut self) {
        self.core.refresh();
    }

    fn process(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        self.core.writes_at(events);
        self.shadowed(ShadowedCall::Left(events), out)
    }

    fn process_right(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        self.core.writes_at(events);
        self.shadowed(ShadowedCall::Right(events), out)
    }

    fn watermarks(&mut self, marks: &[Mark], out: &mut StageOutput) -> Result<(), StageError> {
        let last = marks
            .last()
            .map(|m| m.watermark)
            .filter(|&w| w != END_OF_INPUT);
        if let Some(watermark) = last {
            self.core
                .slot
                .keyed_state_mut()
                .advance_write_time(watermark);
        }
        self.shadowed(ShadowedCall::Marks(marks), out)?;
        // The end of a bounded input expires nothing: the state is kept for what may follow it.
        if let Some(watermark) = last {
            self.core.slot.keyed_state_mut().expire(watermark);
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        self.kind.snapshot(self.core.slot.keyed_state())
    }

    fn take_state_changes(&mut self, whole: bool) -> Option<bytes::Bytes> {
        K::KEYED_ONLY.then(|| self.core.slot.keyed_state_mut().take_changes(whole))
    }

    fn begin_state_base(&mut self) -> Option<BaseWrite> {
        K::KEYED_ONLY.then(|| self.core.slot.keyed_state_mut().begin_base())
    }

    fn adopt_state_base(&mut self, write: &BaseWrite, bytes: Bytes) -> Option<ReplacedLayers> {
        if !K::KEYED_ONLY {
            return None;
        }
        self.core.slot.keyed_state_mut().adopt_base(write, bytes)
    }

    fn running_version(&self) -> Option<Arc<str>> {
        Some(self.core.version().clone())
    }

    fn running_plugin(&self) -> Option<Arc<Plugin>> {
        Some(self.core.slot.plugin().clone())
    }

    fn take_counters(&mut self) -> Vec<(String, u64)> {
        self.core.slot.take_counters().into_iter().collect()
    }
}

/// What a stage's snapshot holds: the plugin's keyed state and the kind's own state.
pub type Restored<S> = Result<(KeyedState, S), DecodeError>;

/// The keyed state and the kind's own state a `snapshot` holds (none: both empty).
pub(super) fn restored<S: Default>(
    snapshot: Option<&[u8]>,
    restore: fn(&[u8]) -> Restored<S>,
) -> Restored<S> {
    match snapshot {
        Some(bytes) => restore(bytes),
        None => Ok((KeyedState::default(), S::default())),
    }
}

/// How a window or join snapshot names its format version in decoding errors.
pub(super) struct SnapshotFormat {
    /// The field, such as `the window state's format version`.
    pub(super) field: &'static str,
    /// The version expected, such as `window state format version 1`.
    pub(super) expected: &'static str,
}

/// Starts reading a window or join snapshot: its format version (1) and the plugin's keyed state.
pub(super) fn read_snapshot_start<'a>(
    bytes: &'a [u8],
    format: &SnapshotFormat,
) -> Result<(Reader<'a>, KeyedState), DecodeError> {
    let mut r = Reader::new(bytes);
    if r.u8(format.field)? != 1 {
        return Err(DecodeError {
            offset: 0,
            what: format.expected,
        });
    }
    let keyed_bytes = r.bytes("the plugin's keyed state")?;
    let keyed = KeyedState::restore(keyed_bytes).map_err(|e| DecodeError {
        offset: e.offset,
        what: e.what,
    })?;
    Ok((r, keyed))
}

/// Starts writing a window or join snapshot: format version 1 and the plugin's keyed state.
pub(super) fn write_snapshot_start(keyed: &KeyedState) -> Writer {
    let mut w = Writer::new();
    w.u8(1);
    w.bytes(&keyed.snapshot());
    w
}

/// How a stage kind's plugin calls go, where the kinds differ.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallPolicy {
    /// Time every call (`weir_plugin_call_seconds`).
    pub(super) time_calls: bool,
    /// What an instance that cannot be created means.
    pub(super) not_instantiated: WhenNotInstantiated,
    /// When the probation is told.
    pub(super) tallied: Tallied,
}

impl CallPolicy {
    /// Window and join stages: their state depends on every call, so a plugin that cannot be
    /// instantiated fails the stage; the probation is told once per call of the stage.
    pub(super) const STATEFUL: CallPolicy = CallPolicy {
        time_calls: false,
        not_instantiated: WhenNotInstantiated::StageFails,
        tallied: Tallied::PerStageCall,
    };

    /// Per-event transforms: calls are timed, an instance that cannot be created is a trap of
    /// the event, and every event of a retry is told to the probation.
    pub(super) const TRANSFORM: CallPolicy = CallPolicy {
        time_calls: true,
        not_instantiated: WhenNotInstantiated::Trap,
        tallied: Tallied::EachUnit,
    };
}

/// What a plugin instance that cannot be created means for the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WhenNotInstantiated {
    /// The stage fails (window and join stages: their state depends on every call).
    StageFails,
    /// Like a trap: the unit goes to the dead letters (per-event transforms).
    Trap,
}

/// When a stage reports what its plugin did to the probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tallied {
    /// After each isolated unit, stopping the isolation when the version slot rolls back
    /// (per-event transforms: the rest of the batch then runs on the version rolled back to).
    EachUnit,
    /// Once per call of the stage ([`PluginCore::probe`], [`PluginCore::report`]).
    PerStageCall,
}

/// Which units a call covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Units {
    /// Every unit of the call (the batch call).
    All,
    /// One unit, after the batch call trapped.
    One(usize),
}

/// What a trapped batch call was, for its warning.
#[derive(Debug, Clone, Copy)]
pub(super) enum Trapped {
    /// A transform's batch of events.
    Events {
        /// Events in the batch.
        events: usize,
        /// Position of the first.
        first_position: Position,
    },
    /// A window aggregate's `fold` over windows.
    Fold {
        /// Windows folded.
        windows: usize,
    },
    /// A window aggregate's `finish` of closed windows.
    Finish {
        /// Windows finished.
        windows: usize,
    },
    /// A join enrichment's pairs.
    Enrich {
        /// Pairs enriched.
        pairs: usize,
    },
}

impl Trapped {
    /// How many units the call had.
    fn units(self) -> usize {
        match self {
            Trapped::Events { events, .. } => events,
            Trapped::Fold { windows } | Trapped::Finish { windows } => windows,
            Trapped::Enrich { pairs } => pairs,
        }
    }
}

/// The units of `all` that `units` names.
pub(super) fn laid_out<T>(all: &[T], units: Units) -> &[T] {
    match units {
        Units::All => all,
        Units::One(unit) => all.get(unit..=unit).unwrap_or_default(),
    }
}

/// How a stage kind lays out one call of its plugin and reads the answer.
pub(super) trait PluginCall {
    /// What the plugin answers.
    type Answer;

    /// Prepares the retry one unit at a time after the batch call (of `units` units) trapped;
    /// how many units the retry has (the same, unless a kind retries in other units).
    fn isolate(&mut self, units: usize) -> usize {
        units
    }

    /// Lays out the request for `units`.
    fn lay_out(&mut self, units: Units);

    /// Calls the plugin with the request laid out last (once, or twice when the running version
    /// traps during a probation: the second time on the previous version).
    fn call(&self, instance: &mut PluginInstance) -> Result<Self::Answer, CallError>;

    /// Reads the answer to the request laid out last into `to`. An error means the answer cannot
    /// be used (the stage fails).
    fn read(&mut self, answer: Self::Answer, to: &mut Answers<'_>) -> Result<(), AnswerError>;

    /// The dead letters standing for `unit` when no version could handle it.
    fn dead_letters(&self, unit: usize) -> Vec<Event>;
}

/// Where a stage kind reads a plugin's answer to: the stage's output, with the version that
/// answered.
pub(super) struct Answers<'a> {
    version: &'a Arc<str>,
    /// The stage's entry in a record's lineage (`stage@crate-version+hash`), when records are
    /// labelled.
    entry: Option<String>,
    out: &'a mut StageOutput,
}

impl<'a> Answers<'a> {
    fn new(version: &'a Arc<str>, entry: Option<String>, out: &'a mut StageOutput) -> Self {
        Answers {
            version,
            entry,
            out,
        }
    }

    /// Labels a record this version made from `upstream` (the events it derives from) with the
    /// version (the [`super::PLUGIN_VERSION_PROPERTY`]) and its lineage, the versions of every
    /// stage it went through (the [`super::PLUGIN_VERSIONS_PROPERTY`]); nothing when records are
    /// not labelled.
    pub(super) fn label<'e>(
        &self,
        properties: &mut Vec<(String, String)>,
        upstream: impl IntoIterator<Item = &'e str>,
    ) {
        let Some(entry) = &self.entry else {
            return;
        };
        let lineage = super::transform::lineage(upstream, entry);
        properties.retain(|(name, _)| {
            name != super::PLUGIN_VERSION_PROPERTY && name != super::PLUGIN_VERSIONS_PROPERTY
        });
        properties.push((
            super::PLUGIN_VERSION_PROPERTY.to_owned(),
            self.version.to_string(),
        ));
        properties.push((super::PLUGIN_VERSIONS_PROPERTY.to_owned(), lineage));
    }

    /// Sends `record` to the stage output `target`.
    pub(super) fn emit(&mut self, target: Arc<str>, record: Event) {
        self.out.emitted.push((target, record));
    }

    /// Refuses `event`: the version that answered refused it.
    pub(super) fn reject(&mut self, event: Event, reason: String) {
        self.refuse(event, RejectionKind::Plugin, reason);
    }

    /// Refuses `event` for a `kind` of reason found in the answer.
    pub(super) fn refuse(&mut self, event: Event, kind: RejectionKind, reason: String) {
        self.out.rejected.push(Rejected {
            event,
            kind,
            reason,
            plugin_version: Some(self.version.clone()),
        });
    }
}

/// How a batch call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
    /// In one call.
    Whole,
    /// Unit by unit after a trap; `Some(n)` when the version slot rolled back after `n` units
    /// (with [`Tallied::EachUnit`]): the rest is to be run again, on the version rolled back to.
    Isolated(Option<usize>),
}

/// What an isolated call gave.
struct Attempt<R> {
    /// The answer, or why the unit goes to the dead letters.
    result: Result<R, String>,
    /// The version that answered, or, for a dead letter, the running version (the one the unit
    /// was meant for).
    version: Arc<str>,
    /// Whether the running version trapped on it (counted against its probation).
    trapped: bool,
}

/// What the probation is told after a call of the stage, taken before it ([`PluginCore::probe`]).
#[derive(Debug)]
pub(super) struct Probe {
    rejected_before: usize,
    version: Arc<str>,
}

impl Probe {
    /// What was rejected since the probe was taken.
    pub(super) fn since<'a>(&self, out: &'a StageOutput) -> &'a [Rejected] {
        out.rejected.get(self.rejected_before..).unwrap_or_default()
    }
}

/// The part of a plugin stage shared by every kind: its plugin's instances and versions, and how
/// it calls them.
pub struct PluginCore {
    name: Arc<str>,
    slot: InstanceSlot,
    /// Where failed calls are counted (and calls timed, if the policy says so).
    metrics: Option<Metrics>,
    policy: CallPolicy,
    label_versions: bool,
    /// Units the running version trapped on in the current call of the stage, for its probation
    /// ([`Tallied::PerStageCall`]).
    trapped: u64,
}

impl std::fmt::Debug for PluginCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginCore")
            .field("name", &self.name)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl PluginCore {
    /// The core of stage `name` calling its plugin through `slot` as `policy` says; `metrics`
    /// counts failed calls (and times calls, if the policy says so).
    pub(super) fn new(
        name: Arc<str>,
        slot: InstanceSlot,
        metrics: Option<Metrics>,
        policy: CallPolicy,
    ) -> Self {
        PluginCore {
            name,
            slot,
            metrics,
            policy,
            label_versions: false,
            trapped: 0,
        }
    }

    /// The stage is handed `events`: keys written from now on expire after the latest of their
    /// event times (plus their time-to-live).
    fn writes_at(&mut self, events: &[Event]) {
        if let Some(latest) = events.iter().map(Event::time).max() {
            self.slot.keyed_state_mut().advance_write_time(latest);
        }
    }

    /// The version the stage runs now.
    pub(super) fn version(&self) -> &Arc<str> {
        self.slot.plugin().version()
    }

    /// The instance slot: its keyed state, settings and the version slot's shadow runs.
    pub(super) fn instances(&self) -> &InstanceSlot {
        &self.slot
    }

    /// This stage's entry in the lineage of the records `version` makes, when records are
    /// labelled: `stage@crate-version+hash` when the running version records its crate's
    /// version (`weir plugin build`), else `stage@hash`.
    fn lineage_entry(&self, version: &Arc<str>) -> Option<String> {
        if !self.label_versions {
            return None;
        }
        let plugin = self.slot.plugin();
        Some(match plugin.package() {
            Some(package) if plugin.version() == version => {
                format!("{}@{}+{version}", self.name, package.version)
            }
            _ => format!("{}@{version}", self.name),
        })
    }

    /// The partition the stage runs for.
    pub(super) fn partition(&self) -> u32 {
        self.slot.settings().scope.partition
    }

    /// Takes the version slot's active version if it changed (see [`InstanceSlot::refresh`]).
    pub(super) fn refresh(&mut self) {
        self.slot.refresh();
    }

    /// Hands the standby the batch just run, now and then (see [`InstanceSlot::keep_sample`]).
    pub(super) fn keep_sample(&mut self, batch: &EventBatch, events: usize) {
        self.slot.keep_sample(batch, events);
    }

    /// A failure of this stage.
    pub(super) fn error(&self, failure: StageFailure) -> StageError {
        StageError {
            pipeline: self.slot.settings().scope.pipeline.clone(),
            stage: self.name.clone(),
            partition: self.partition(),
            failure,
        }
    }

    /// Adds `delta` to the stage's counter `name` (labelled by pipeline, stage, partition and
    /// `extra`).
    pub(super) fn count(&self, name: &'static str, extra: &[(&'static str, &str)], delta: u64) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let scope = &self.slot.settings().scope;
        let partition = scope.partition.to_string();
        let mut labels: Vec<(&'static str, &str)> = vec![
            ("pipeline", &scope.pipeline),
            ("stage", &self.name),
            ("partition", &partition),
        ];
        labels.extend_from_slice(extra);
        metrics.add(name, &labels, delta);
    }

    /// Counts one failed call of `version`.
    fn count_trap(&self, version: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.add(
                names::PLUGIN_TRAPS,
                &[
                    ("pipeline", &self.slot.settings().scope.pipeline),
                    ("stage", &self.name),
                    ("version", version),
                ],
                1,
            );
        }
    }

    /// Times a call that started at `started`, if the stage asks for it.
    fn timed(&self, started: Instant) {
        if let (true, Some(metrics)) = (self.policy.time_calls, &self.metrics) {
            metrics.observe(
                names::PLUGIN_CALL_SECONDS,
                &[
                    ("pipeline", &*self.slot.settings().scope.pipeline),
                    ("stage", &*self.name),
                ],
                started.elapsed().as_secs_f64(),
            );
        }
    }

    /// One call of the running version. The inner error is a failed call (counted as a trap);
    /// the outer one a stage that cannot go on (no instance could be made).
    fn call_running<R>(
        &mut self,
        call: impl FnOnce(&mut PluginInstance) -> Result<R, CallError>,
    ) -> Result<Result<R, CallError>, StageError> {
        let started = Instant::now();
        let result = self.slot.call(call);
        self.timed(started);
        let result = match (result, self.policy.not_instantiated) {
            (Ok(result), _) => result,
            (Err(e), WhenNotInstantiated::Trap) => Err(e),
            (Err(e), WhenNotInstantiated::StageFails) => {
                return Err(self.error(StageFailure::Instantiate(e)));
            }
        };
        if let Err(trap) = &result {
            self.count_trap(&trap.version);
        }
        Ok(result)
    }

    /// One isolated call: on the running version, and, if it traps during a probation, the very
    /// same request on the version it replaced.
    fn attempt<R>(
        &mut self,
        call: impl Fn(&mut PluginInstance) -> Result<R, CallError>,
    ) -> Result<Attempt<R>, StageError> {
        let trap = match self.call_running(&call)? {
            Ok(answer) => {
                return Ok(Attempt {
                    result: Ok(answer),
                    version: self.version().clone(),
                    trapped: false,
                });
            }
            Err(trap) => trap,
        };
        let started = Instant::now();
        let second = self.slot.call_fallback(&call);
        if second.is_some() {
            self.timed(started);
        }
        let result = match second {
            None => Err(format!("plugin trapped: {}", trap.kind)),
            Some(Ok(Ok(answer))) => {
                let version = self
                    .slot
                    .fallback_version()
                    .cloned()
                    .unwrap_or_else(|| trap.version.clone());
                return Ok(Attempt {
                    result: Ok(answer),
                    version,
                    trapped: true,
                });
            }
            Some(Ok(Err(second))) => {
                self.count_trap(&second.version);
                Err(trapped_too(&trap, &second))
            }
            Some(Err(second)) => match self.policy.not_instantiated {
                WhenNotInstantiated::Trap => {
                    self.count_trap(&second.version);
                    Err(trapped_too(&trap, &second))
                }
                WhenNotInstantiated::StageFails => Err(format!(
                    "plugin trapped: {}; the previous version {} could not be instantiated: {}",
                    trap.kind, second.version, second.kind
                )),
            },
        };
        Ok(Attempt {
            result,
            version: trap.version,
            trapped: true,
        })
    }

    /// Runs `call` (`what`) over all its units in one call; if that traps, unit by unit (see
    /// [`PluginCore::isolate`]).
    pub(super) fn run<C: PluginCall>(
        &mut self,
        call: &mut C,
        what: Trapped,
        out: &mut StageOutput,
    ) -> Result<Ran, StageError> {
        call.lay_out(Units::All);
        match self.call_running(|instance| call.call(instance))? {
            Ok(answer) => {
                let version = self.version().clone();
                call.read(
                    answer,
                    &mut Answers::new(&version, self.lineage_entry(&version), out),
                )
                .map_err(|reason| self.error(StageFailure::InvalidAnswer(reason)))?;
                Ok(Ran::Whole)
            }
            Err(trap) => {
                self.warn(what, &trap);
                self.isolate(call, what.units(), out).map(Ran::Isolated)
            }
        }
    }

    /// Runs `call` (of `units` units) unit by unit; a unit the running version traps on goes to
    /// the previous version during a probation, else to the dead letters. With
    /// [`Tallied::EachUnit`], stops after the unit that made the version slot roll back and says
    /// how many units ran.
    pub(super) fn isolate<C: PluginCall>(
        &mut self,
        call: &mut C,
        units: usize,
        out: &mut StageOutput,
    ) -> Result<Option<usize>, StageError> {
        for unit in 0..call.isolate(units) {
            let probe = self.probe_now(out);
            call.lay_out(Units::One(unit));
            let attempt = self.attempt(|instance| call.call(instance))?;
            match attempt.result {
                Ok(answer) => call
                    .read(
                        answer,
                        &mut Answers::new(
                            &attempt.version,
                            self.lineage_entry(&attempt.version),
                            out,
                        ),
                    )
                    .map_err(|reason| self.error(StageFailure::InvalidAnswer(reason)))?,
                Err(reason) => {
                    for event in call.dead_letters(unit) {
                        out.rejected.push(Rejected {
                            event,
                            kind: RejectionKind::Trap,
                            reason: reason.clone(),
                            plugin_version: Some(attempt.version.clone()),
                        });
                    }
                }
            }
            let trapped = u64::from(attempt.trapped);
            match self.policy.tallied {
                Tallied::PerStageCall => self.trapped += trapped,
                Tallied::EachUnit => {
                    if self.tally(&probe, out, 1, trapped) {
                        return Ok(Some(unit + 1));
                    }
                }
            }
        }
        Ok(None)
    }

    fn warn(&self, call: Trapped, trap: &CallError) {
        let scope = &self.slot.settings().scope;
        let (pipeline, stage, partition) = (&scope.pipeline, &self.name, scope.partition);
        let (version, reason) = (&trap.version, &trap.kind);
        match call {
            Trapped::Events {
                events,
                first_position,
            } => tracing::warn!(
                pipeline = %pipeline, stage = %stage, partition, events, first_position,
                version = %version, reason = %reason,
                "plugin trapped on a batch; retrying it event by event"
            ),
            Trapped::Fold { windows } => tracing::warn!(
                pipeline = %pipeline, stage = %stage, partition, windows, version = %version,
                reason = %reason, "plugin trapped folding a batch; retrying it event by event"
            ),
            Trapped::Finish { windows } => tracing::warn!(
                pipeline = %pipeline, stage = %stage, partition, windows, version = %version,
                reason = %reason, "plugin trapped finishing windows; retrying them one by one"
            ),
            Trapped::Enrich { pairs } => tracing::warn!(
                pipeline = %pipeline, stage = %stage, partition, pairs, version = %version,
                reason = %reason, "plugin trapped enriching pairs; retrying them one by one"
            ),
        }
    }

    /// Starts a call of the stage whose plugin calls are reported to the probation as one
    /// ([`PluginCore::report`]).
    pub(super) fn probe(&mut self, out: &StageOutput) -> Probe {
        self.trapped = 0;
        Probe {
            rejected_before: out.rejected.len(),
            version: self.version().clone(),
        }
    }

    /// Reports a call of the stage to the probation: `handed` units given to the running version
    /// (`None`: as many as it trapped on), what it rejected since `probe`, and what it trapped on.
    pub(super) fn report(&mut self, probe: &Probe, out: &StageOutput, handed: Option<u64>) {
        let trapped = std::mem::take(&mut self.trapped);
        self.tally(probe, out, handed.unwrap_or(trapped), trapped);
    }

    /// Reports `events` units handed to the running version, of which it trapped on `trapped`
    /// and rejected those added to `out` since `probe`. True when the slot rolled back (the
    /// instance slot then runs the version rolled back to at once).
    pub(super) fn tally(
        &mut self,
        probe: &Probe,
        out: &StageOutput,
        events: u64,
        trapped: u64,
    ) -> bool {
        let rejected = plugin_rejections(probe.since(out), &probe.version);
        self.slot.tally(CallTally {
            events,
            rejected,
            trapped,
        })
    }

    /// A probe taken now, for [`PluginCore::tally`].
    pub(super) fn probe_now(&self, out: &StageOutput) -> Probe {
        Probe {
            rejected_before: out.rejected.len(),
            version: self.version().clone(),
        }
    }
}

/// The dead-letter reason for a unit both the running version and the previous one trapped on.
fn trapped_too(trap: &CallError, second: &CallError) -> String {
    format!(
        "plugin trapped: {}; the previous version {} trapped too: {}",
        trap.kind, second.version, second.kind
    )
}

/// How many of `rejected` the plugin's `version` refused (not late events, not traps, not what
/// the previous version refused during a probation), for the probation.
fn plugin_rejections(rejected: &[Rejected], version: &Arc<str>) -> u64 {
    rejected
        .iter()
        .filter(|r| r.plugin_version.as_ref() == Some(version) && r.kind.by_plugin())
        .count() as u64
}

/// How many of `rejected` the host refused before any plugin saw them (late, no key).
pub(super) fn host_rejections(rejected: &[Rejected]) -> u64 {
    rejected.iter().filter(|r| r.kind.by_host()).count() as u64
}

/// One record of a window or join plugin's answer: the unit it is for, its output and its body.
pub(super) struct AnswerRecord {
    /// The unit (window, pair) of the call it was made for.
    pub(super) unit: usize,
    /// The stage output it goes to.
    pub(super) target: Arc<str>,
    /// Its body.
    pub(super) body: Bytes,
}

/// The records of an answer, and its rejections by unit.
pub(super) type Answer = (Vec<AnswerRecord>, Vec<(usize, String)>);

/// What in a plugin's answer does not fit the request it answers (the stage fails: the plugin
/// broke its contract, and the host cannot tell what it meant).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// An `emitted` column that is not a whole number of records.
    #[error("plugin gave an emitted column of {len} bytes, not a whole number of 16-byte records")]
    EmittedColumn {
        /// Its length in bytes.
        len: usize,
    },
    /// A record for a unit (a window, a pair) that was not asked for.
    #[error("plugin emitted a record for {noun} {index} of {units}")]
    RecordFor {
        /// What the units are (`window`, `pair`).
        noun: &'static str,
        /// The unit it named.
        index: u32,
        /// How many there were.
        units: usize,
    },
    /// A record for an output the answer does not list.
    #[error("plugin emitted to target {index} of {targets}")]
    Target {
        /// The output it named.
        index: u32,
        /// How many the answer lists.
        targets: usize,
    },
    /// A record's payload end outside the payload buffer, or before the previous one's.
    #[error("plugin gave payload end {end} after {start} in a buffer of {len}")]
    PayloadEnd {
        /// The end it gave.
        end: usize,
        /// Where the record's payload starts.
        start: usize,
        /// The buffer's length.
        len: usize,
    },
    /// A rejection of a unit (a window, a pair, an event) that was not asked for.
    #[error("plugin rejected {noun} {index} of {units}")]
    Rejection {
        /// What the units are (`window`, `pair`, `event`).
        noun: &'static str,
        /// The unit it named.
        index: u32,
        /// How many there were, in words (`2`, `a batch of 2`).
        units: String,
    },
    /// Not one accumulator per window folded.
    #[error("plugin returned {accumulators} accumulators for {windows} windows")]
    Accumulators {
        /// How many it returned.
        accumulators: usize,
        /// How many windows were folded.
        windows: usize,
    },
    /// A pair with neither event (a bug of the stage rather than of the plugin).
    #[error("a pair without events")]
    PairWithoutEvents,
}

/// The records and rejections of a window or join plugin's `output` for a call of `units` units,
/// with every index checked; an error names a unit `noun` (`window`, `pair`).
pub(super) fn read_answer(
    output: OutputBatch,
    units: usize,
    noun: &'static str,
) -> Result<Answer, AnswerError> {
    let targets: Vec<Arc<str>> = output.targets.into_iter().map(Arc::from).collect();
    let payloads = Bytes::from(output.payloads);
    use crate::plugin::columns;
    if !columns::whole_records(&output.emitted) {
        let len = output.emitted.len();
        return Err(AnswerError::EmittedColumn { len });
    }
    let mut records = Vec::with_capacity(columns::emitted_count(&output.emitted));
    let mut start = 0usize;
    for emitted in columns::emitted(&output.emitted) {
        let (unit, index) = (emitted.event as usize, emitted.event);
        if unit >= units {
            return Err(AnswerError::RecordFor { noun, index, units });
        }
        let target = targets
            .get(emitted.target as usize)
            .ok_or(AnswerError::Target {
                index: emitted.target,
                targets: targets.len(),
            })?;
        let end = emitted.payload_end as usize;
        if end < start || end > payloads.len() {
            let len = payloads.len();
            return Err(AnswerError::PayloadEnd { end, start, len });
        }
        records.push(AnswerRecord {
            unit,
            target: target.clone(),
            body: payloads.slice(start..end),
        });
        start = end;
    }
    let mut rejected = Vec::with_capacity(output.rejected.len());
    for rejection in output.rejected {
        if rejection.event as usize >= units {
            return Err(AnswerError::Rejection {
                noun,
                index: rejection.event,
                units: units.to_string(),
            });
        }
        rejected.push((rejection.event as usize, rejection.reason));
    }
    Ok((records, rejected))
}

#[cfg(test)]
#[path = "plugin_stage_tests.rs"]
mod tests;
