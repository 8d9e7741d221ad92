//! A stage's plugin slot: the version that runs, every version ever loaded, and the probation of a
//! new one.
//!
//! One slot per stage of a pipeline, shared by all of the stage's partition workers. A new version
//! (from the watched file or the admin API) is compiled and validated against the stage's world
//! off the hot path, then *activated*: the slot's generation counter moves, and each worker, at
//! its next batch boundary, sees the new generation, drops its instance and instantiates the new
//! version with the keyed state it holds. The batch in flight finishes on the old version.
//!
//! A version activated by a swap is on *probation* for its first `probation_events` events, summed
//! over all partitions. Meanwhile the version it replaced stays at hand as the fallback: an event
//! the new version traps on is processed again by the fallback, so a crashing version costs no
//! event. If its trap ratio or its failure ratio (traps and rejections) passes the policy's limit,
//! the slot rolls back to the fallback by itself, and says so (log, metric, admin API).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};

use super::retire::later;
use super::standby::Prepare;
use probation::Verdict;

use super::store::{MAX_ACTIVATIONS, StageRecord, VersionStore};
use super::{LoadedPlugin, PluginEngine, PluginError, content_version};
use crate::metrics::{Metrics, names};

/// How a version reached Weir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionOrigin {
    /// The stage's plugin file, read at start.
    Config,
    /// The stage's plugin file, changed while Weir ran (the plugins directory is watched).
    File,
    /// An upload to the admin API.
    Api,
}

/// One version of a stage's plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// Content hash: the first 12 hex digits of the SHA-256 of the component.
    pub version: String,
    /// Plugin name.
    pub plugin: String,
    /// Size of the component in bytes.
    pub bytes: u64,
    /// When it was first loaded (RFC 3339).
    pub loaded_at: String,
    /// How it came.
    pub origin: VersionOrigin,
    /// The name of the crate it was built from, when its component records it
    /// (`weir plugin build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version of that crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crate_version: Option<String>,
}

/// The crate name and version `plugin` records, if it does.
fn crate_of<P: LoadedPlugin>(plugin: &P) -> (Option<String>, Option<String>) {
    match plugin.package() {
        Some(package) => (Some(package.name.clone()), Some(package.version.clone())),
        None => (None, None),
    }
}

/// Why a version became the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationCause {
    /// The stage's configured plugin, at start.
    Start,
    /// The version that was active when the process last stopped, at start.
    Resume,
    /// A new plugin file in the watched directory.
    File,
    /// An upload to the admin API.
    Api,
    /// An operator's rollback through the admin API.
    Rollback,
    /// The slot's own rollback after the previous version failed its probation.
    AutomaticRollback,
}

/// One activation of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationInfo {
    /// When (RFC 3339).
    pub at: String,
    /// The version activated.
    pub version: String,
    /// The version it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Why.
    pub cause: ActivationCause,
    /// Details, such as the failure ratio that caused an automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// When a new version is rolled back by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackPolicy {
    /// Events (over all partitions) a new version is watched for after its swap.
    pub probation_events: u64,
    /// Largest tolerated share of those events that trap.
    pub max_trap_ratio: f64,
    /// Largest tolerated share of those events that trap or are rejected.
    pub max_error_ratio: f64,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        RollbackPolicy {
            probation_events: 1000,
            max_trap_ratio: 0.05,
            max_error_ratio: 0.5,
        }
    }
}

/// What one call (a batch or a single event) did, as counted for a probation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTally {
    /// Events handed to the version.
    pub events: u64,
    /// Events it rejected.
    pub rejected: u64,
    /// Events it trapped on.
    pub trapped: u64,
}

/// Why an offered version or a rollback was refused. The running version keeps running.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The component does not compile, or does not implement the stage's world.
    #[error("refused: {0}")]
    Refused(PluginError),
    /// No such version is known for the stage.
    #[error(
        "version `{version}` is not known for stage `{stage}` of pipeline `{pipeline}`; known: {known}"
    )]
    UnknownVersion {
        /// Pipeline.
        pipeline: String,
        /// Stage.
        stage: String,
        /// The version asked for.
        version: String,
        /// The known versions.
        known: String,
    },
    /// A rollback without a version, but no version ran before this one.
    #[error("stage `{stage}` of pipeline `{pipeline}` has no previous version to roll back to")]
    NoPrevious {
        /// Pipeline.
        pipeline: String,
        /// Stage.
        stage: String,
    },
    /// The slot's stage cannot take new versions (it was built around a fixed plugin).
    #[error("stage `{stage}` of pipeline `{pipeline}` takes no new versions")]
    Fixed {
        /// Pipeline.
        pipeline: String,
        /// Stage.
        stage: String,
    },
}

/// The result of offering a version.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Offered {
    /// It is now the active version.
    Activated {
        /// The version.
        version: VersionInfo,
    },
    /// It was already the active version; nothing changed.
    AlreadyActive {
        /// The version.
        version: VersionInfo,
    },
}

/// The probation of the active version, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ProbationReport {
    /// The version on probation.
    pub version: String,
    /// The version it falls back to.
    pub fallback: String,
    /// Events it has seen so far.
    pub events: u64,
    /// Of which rejected.
    pub rejected: u64,
    /// Of which trapped.
    pub trapped: u64,
    /// Events it must get through.
    pub of: u64,
}

/// A version as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ListedVersion {
    /// What is known of it.
    #[serde(flatten)]
    pub info: VersionInfo,
    /// `active`, `rolled_back` or `available`.
    pub status: &'static str,
}

/// Everything the admin API shows of a slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// Pipeline.
    pub pipeline: String,
    /// Stage.
    pub stage: String,
    /// The world the stage's plugins implement.
    pub world: String,
    /// The stage's plugin file (watched).
    pub file: String,
    /// The active version.
    pub active: String,
    /// The active version's probation, if it is on one.
    pub probation: Option<ProbationReport>,
    /// Every known version, in load order.
    pub versions: Vec<ListedVersion>,
    /// The latest activations, oldest first.
    pub activations: Vec<ActivationInfo>,
}

/// A slot as the admin API and the file watcher use it, whatever the stage's kind.
pub trait SlotControl: Send + Sync {
    /// Pipeline name.
    fn pipeline(&self) -> &str;
    /// Stage name.
    fn stage(&self) -> &str;
    /// The stage's plugin file.
    fn file(&self) -> &Path;
    /// The active version.
    fn active_version(&self) -> String;
    /// Everything known of the slot.
    fn report(&self) -> SlotReport;
    /// Compiles and validates `bytes` against the stage's world and activates them. Blocks while
    /// compiling: call it off the async threads.
    fn offer(&self, bytes: Vec<u8>, origin: VersionOrigin) -> Result<Offered, SwapError>;
    /// Activates a known version (`None`: the one that ran before the active one). Blocks while
    /// compiling, if the version must be loaded from the store.
    fn rollback(&self, version: Option<&str>) -> Result<VersionInfo, SwapError>;
    /// Compiles and validates `bytes` against the stage's world and runs them in the shadow of
    /// the active version on the next `events` events of each of `partitions` (see
    /// [`super::shadow`]), ending after `within` at the latest; nothing is activated. Blocks
    /// while compiling.
    fn start_shadow(
        &self,
        bytes: Vec<u8>,
        events: u64,
        partitions: &[u32],
        within: Option<std::time::Duration>,
    ) -> Result<super::shadow::ShadowReport, SwapError>;
    /// The latest shadow run, if any.
    fn shadow_report(&self) -> Option<super::shadow::ShadowReport>;
}

/// What a worker runs: the active version and, during its probation, the fallback.
#[derive(Debug)]
pub struct Active<P> {
    /// The slot's generation this was read at.
    pub generation: u64,
    /// The version to run.
    pub plugin: Arc<P>,
    /// The version to run an event on when `plugin` traps on it (during probation only).
    pub fallback: Option<Arc<P>>,
}

struct Entry<P> {
    info: VersionInfo,
    compiled: Option<Arc<P>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Probation {
    events: u64,
    rejected: u64,
    trapped: u64,
}

struct Inner<P> {
    active: Arc<P>,
    fallback: Option<Arc<P>>,
    probation: Option<Probation>,
    versions: Vec<Entry<P>>,
    activations: Vec<ActivationInfo>,
    rolled_back: BTreeSet<String>,
    /// Version of the plugin file's content as last read.
    configured: String,
    /// Number of the last [`PendingRecord`] taken.
    record_seq: u64,
}

/// Everything a slot is built from.
#[derive(Debug, Clone)]
pub struct SlotSetup {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// The stage's plugin file.
    pub file: PathBuf,
    /// Compiles new versions.
    pub engine: PluginEngine,
    /// Keeps versions across restarts; `None` keeps them in memory only.
    pub store: Option<VersionStore>,
    /// When a new version is rolled back.
    pub policy: RollbackPolicy,
    /// Where swaps, rollbacks and refusals are counted.
    pub metrics: Metrics,
}

/// The plugin slot of one stage.
pub struct PluginSlot<P: LoadedPlugin> {
    pipeline: Arc<str>,
    stage: Arc<str>,
    file: PathBuf,
    engine: Option<PluginEngine>,
    store: Option<VersionStore>,
    policy: RollbackPolicy,
    metrics: Metrics,
    generation: AtomicU64,
    /// The version the slot was opened with: new versions are loaded as its kind (its world).
    template: Arc<P>,
    inner: Mutex<Inner<P>>,
    /// The workers' standbys, asked to make each new version ready before it is activated.
    standbys: Mutex<Vec<Weak<dyn Prepare<P>>>>,
    /// Writes the stage's record to the store (none without a store).
    records: Option<RecordWriter>,
    /// A candidate version running in the shadow of the active one, if any.
    shadows: super::shadow::ShadowBoard<P>,
}

/// A stage record to write, numbered so that an older one never overwrites a newer one.
#[must_use = "a taken record is to be written (after the slot's lock is released)"]
struct PendingRecord {
    seq: u64,
    record: StageRecord,
}

/// Writes stage records to the store, outside the slot's lock: a partition worker takes that lock
/// at every batch, and a write can take long on a busy disk.
#[derive(Clone)]
struct RecordWriter {
    store: VersionStore,
    pipeline: Arc<str>,
    stage: Arc<str>,
    /// Number of the last record written.
    written: Arc<Mutex<u64>>,
}

impl RecordWriter {
    fn write(&self, pending: PendingRecord) {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.seq <= *written {
            return;
        }
        if let Err(e) = self
            .store
            .save_stage(&self.pipeline, &self.stage, &pending.record)
        {
            tracing::warn!(
                pipeline = %self.pipeline, stage = %self.stage, store = %self.store.dir().display(),
                error = %e, "cannot record plugin versions in the store"
            );
        }
        *written = pending.seq;
    }
}

impl<P: LoadedPlugin> std::fmt::Debug for PluginSlot<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSlot")
            .field("pipeline", &self.pipeline)
            .field("stage", &self.stage)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl<P: LoadedPlugin> PluginSlot<P> {
    /// The slot's shadow runs (see [`super::shadow`]).
    pub fn shadows(&self) -> &super::shadow::ShadowBoard<P> {
        &self.shadows
    }

    /// A slot holding `plugin` for good: it takes no new versions (benchmarks, embedded use).
    pub fn fixed(pipeline: Arc<str>, stage: Arc<str>, plugin: Arc<P>) -> Arc<Self> {
        let (name, crate_version) = crate_of(&*plugin);
        let info = VersionInfo {
            version: plugin.version().to_string(),
            plugin: plugin.name().to_string(),
            bytes: 0,
            loaded_at: now_text(),
            origin: VersionOrigin::Config,
            name,
            crate_version,
        };
        Arc::new(PluginSlot {
            pipeline,
            stage,
            file: PathBuf::new(),
            engine: None,
            store: None,
            policy: RollbackPolicy::default(),
            metrics: Metrics::new(),
            generation: AtomicU64::new(1),
            standbys: Mutex::new(Vec::new()),
            records: None,
            shadows: Default::default(),
            template: plugin.clone(),
            inner: Mutex::new(Inner {
                active: plugin.clone(),
                fallback: None,
                probation: None,
                activations: Vec::new(),
                rolled_back: BTreeSet::new(),
                configured: info.version.clone(),
                record_seq: 0,
                versions: vec![Entry {
                    info,
                    compiled: Some(plugin),
                }],
            }),
        })
    }

    /// Opens the slot of a stage: loads its configured plugin file (already compiled as
    /// `configured`, from `bytes`), and, when the store says another version was running when the
    /// process stopped and the file has not changed since, resumes that version.
    pub fn open(setup: SlotSetup, configured: Arc<P>, bytes: &[u8]) -> Arc<Self> {
        let SlotSetup {
            pipeline,
            stage,
            file,
            engine,
            store,
            policy,
            metrics,
        } = setup;
        let configured_version = configured.version().to_string();
        let record = store
            .as_ref()
            .and_then(|s| s.load_stage(&pipeline, &stage))
            .unwrap_or_default();
        if let Some(store) = &store
            && let Err(e) = store.put_bytes(&configured_version, bytes)
        {
            tracing::warn!(store = %store.dir().display(), error = %e, "cannot keep the plugin version in the store");
        }
        let mut versions: Vec<Entry<P>> = record
            .versions
            .iter()
            .map(|info| Entry {
                info: info.clone(),
                compiled: None,
            })
            .collect();
        match versions
            .iter_mut()
            .find(|e| e.info.version == configured_version)
        {
            Some(entry) => entry.compiled = Some(configured.clone()),
            None => versions.push(Entry {
                info: VersionInfo {
                    version: configured_version.clone(),
                    plugin: configured.name().to_string(),
                    bytes: bytes.len() as u64,
                    loaded_at: now_text(),
                    origin: VersionOrigin::Config,
                    name: crate_of(&*configured).0,
                    crate_version: crate_of(&*configured).1,
                },
                compiled: Some(configured.clone()),
            }),
        }

        // Resume what ran before the stop, if the configured file is still what it was then.
        let mut active = configured.clone();
        let mut cause = ActivationCause::Start;
        if record.configured == configured_version
            && !record.active.is_empty()
            && record.active != configured_version
            && let Some(store) = &store
        {
            let path = store.bytes_path(&record.active);
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    configured
                        .load_version(&engine, &path, &b)
                        .map_err(|e| e.to_string())
                }) {
                Ok(resumed) => {
                    if let Some(entry) = versions
                        .iter_mut()
                        .find(|e| e.info.version == record.active)
                    {
                        entry.compiled = Some(resumed.clone());
                    }
                    tracing::info!(
                        pipeline = %pipeline, stage = %stage, version = %record.active,
                        configured = %configured_version,
                        "resuming the plugin version that was active at the last stop"
                    );
                    active = resumed;
                    cause = ActivationCause::Resume;
                }
                Err(e) => tracing::warn!(
                    pipeline = %pipeline, stage = %stage, version = %record.active, error = %e,
                    "cannot resume the plugin version that was active at the last stop; running the configured file"
                ),
            }
        }
        let mut activations = record.activations.clone();
        activations.push(ActivationInfo {
            at: now_text(),
            version: active.version().to_string(),
            previous: None,
            cause,
            reason: None,
        });
        let records = store.clone().map(|store| RecordWriter {
            store,
            pipeline: pipeline.clone(),
            stage: stage.clone(),
            written: Arc::new(Mutex::new(0)),
        });
        let slot = Arc::new(PluginSlot {
            pipeline,
            stage,
            file,
            engine: Some(engine),
            store,
            policy,
            metrics,
            generation: AtomicU64::new(1),
            standbys: Mutex::new(Vec::new()),
            records,
            shadows: Default::default(),
            template: configured,
            inner: Mutex::new(Inner {
                active,
                fallback: None,
                probation: None,
                versions,
                activations,
                rolled_back: record.rolled_back.iter().cloned().collect(),
                configured: configured_version,
                record_seq: 0,
            }),
        });
        let pending = {
            let mut inner = slot.lock();
            slot.set_active_gauge(None, inner.active.version());
            slot.declare_counters(inner.active.version());
            slot.take_record(&mut inner)
        };
        slot.write_record(pending);
        slot
    }

    /// The slot's counters at 0 from the start, for the label values known now.
    fn declare_counters(&self, active: &str) {
        let stage = [("pipeline", &*self.pipeline), ("stage", &*self.stage)];
        self.metrics.declare(names::PLUGIN_ROLLBACKS, &stage);
        for origin in ["file", "api"] {
            self.metrics.declare(
                names::PLUGIN_REFUSED,
                &[stage[0], stage[1], ("origin", origin)],
            );
        }
        for cause in ["file", "api", "rollback", "automatic_rollback"] {
            self.metrics
                .declare(names::PLUGIN_SWAPS, &[stage[0], stage[1], ("cause", cause)]);
        }
        self.metrics.declare(
            names::PLUGIN_TRAPS,
            &[stage[0], stage[1], ("version", active)],
        );
    }

    fn lock(&self) -> MutexGuard<'_, Inner<P>> {
        // A panic while holding the lock cannot leave the slot inconsistent in a way that matters
        // more than stopping every worker would: carry on with the data.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a worker's standby: before the slot activates a version from a file or the admin API,
    /// the standby makes an instance of it ready (see [`super::standby`]). Dropped standbys are
    /// forgotten.
    pub fn add_standby(&self, standby: Weak<dyn Prepare<P>>) {
        let mut standbys = self
            .standbys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        standbys.retain(|s| s.strong_count() > 0);
        standbys.push(standby);
    }

    /// Asks every live standby to make `plugin` ready, on this thread (off the hot path), until
    /// one fails.
    fn prepare_standbys(&self, plugin: &Arc<P>) {
        let standbys: Vec<Arc<dyn Prepare<P>>> = {
            let mut standbys = self
                .standbys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            standbys.retain(|s| s.strong_count() > 0);
            standbys.iter().filter_map(Weak::upgrade).collect()
        };
        for standby in standbys {
            if !standby.prepare(plugin) {
                break;
            }
        }
    }

    /// Moves on every activation and at the end of a probation; a worker that saw another value
    /// takes [`PluginSlot::active`] at its next batch boundary. One atomic load per batch.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What to run now.
    pub fn active(&self) -> Active<P> {
        let inner = self.lock();
        Active {
            generation: self.generation(),
            plugin: inner.active.clone(),
            fallback: inner.fallback.clone(),
        }
    }

    /// The stage's name.
    pub fn stage_name(&self) -> &Arc<str> {
        &self.stage
    }

    /// Counts what the version of `generation` did during its probation. Returns true when this
    /// made the slot roll back (the caller then takes [`PluginSlot::active`] at once).
    pub fn record(&self, generation: u64, tally: CallTally) -> bool {
        let mut inner = self.lock();
        if self.generation() != generation {
            return false;
        }
        let Some(probation) = inner.probation.as_mut() else {
            return false;
        };
        probation.events += tally.events;
        probation.rejected += tally.rejected;
        probation.trapped += tally.trapped;
        let so_far = CallTally {
            events: probation.events,
            rejected: probation.rejected,
            trapped: probation.trapped,
        };
        match probation::verdict(&self.policy, so_far) {
            Verdict::Probing => false,
            Verdict::Passed => {
                tracing::info!(
                    pipeline = %self.pipeline, stage = %self.stage, version = %inner.active.version(),
                    events = so_far.events, rejected = so_far.rejected, trapped = so_far.trapped,
                    "plugin version passed its probation"
                );
                inner.probation = None;
                inner.fallback = None;
                self.generation.fetch_add(1, Ordering::AcqRel);
                false
            }
            Verdict::Failed(failure) => self.roll_back(inner, failure.to_string()),
        }
    }

    /// Rolls a version that failed its probation back to its fallback. Returns false when there
    /// is none (the version then stays on probation).
    fn roll_back(&self, mut inner: MutexGuard<'_, Inner<P>>, reason: String) -> bool {
        let Some(previous) = inner.fallback.clone() else {
            return false;
        };
        let bad = inner.active.version().to_string();
        tracing::error!(
            pipeline = %self.pipeline, stage = %self.stage, version = %bad,
            rolled_back_to = %previous.version(), reason = %reason,
            "new plugin version failed its probation: rolled back automatically"
        );
        inner.rolled_back.insert(bad);
        self.metrics.add(
            names::PLUGIN_ROLLBACKS,
            &[("pipeline", &self.pipeline), ("stage", &self.stage)],
            1,
        );
        let pending = self.activate(
            &mut inner,
            previous,
            ActivationCause::AutomaticRollback,
            Some(reason),
            false,
        );
        drop(inner);
        // This runs on a partition worker: the record is written on the background thread.
        if let (Some(writer), Some(pending)) = (self.records.clone(), pending) {
            later(move || writer.write(pending));
        }
        true
    }

    /// Makes `plugin` the active version. With `probation`, the replaced version stays as the
    /// fallback until the new one has seen `probation_events` events. Returns the stage's record,
    /// to write once the lock is released.
    fn activate(
        &self,
        inner: &mut Inner<P>,
        plugin: Arc<P>,
        cause: ActivationCause,
        reason: Option<String>,
        probation: bool,
    ) -> Option<PendingRecord> {
        let previous = std::mem::replace(&mut inner.active, plugin);
        let previous_version = previous.version().to_string();
        inner.fallback = probation.then_some(previous);
        inner.probation = probation.then(Probation::default);
        inner.activations.push(ActivationInfo {
            at: now_text(),
            version: inner.active.version().to_string(),
            previous: Some(previous_version.clone()),
            cause,
            reason,
        });
        if inner.activations.len() > MAX_ACTIVATIONS {
            let excess = inner.activations.len() - MAX_ACTIVATIONS;
            inner.activations.drain(..excess);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let cause_label = match cause {
            ActivationCause::Start => "start",
            ActivationCause::Resume => "resume",
            ActivationCause::File => "file",
            ActivationCause::Api => "api",
            ActivationCause::Rollback => "rollback",
            ActivationCause::AutomaticRollback => "automatic_rollback",
        };
        self.metrics.add(
            names::PLUGIN_SWAPS,
            &[
                ("pipeline", &self.pipeline),
                ("stage", &self.stage),
                ("cause", cause_label),
            ],
            1,
        );
        self.set_active_gauge(Some(&previous_version), inner.active.version());
        tracing::info!(
            pipeline = %self.pipeline, stage = %self.stage, version = %inner.active.version(),
            previous = %previous_version, cause = cause_label,
            "plugin version activated; partition workers switch at their next batch"
        );
        self.take_record(inner)
    }

    fn set_active_gauge(&self, previous: Option<&str>, active: &str) {
        if let Some(previous) = previous {
            self.metrics.set(
                names::PLUGIN_ACTIVE,
                &[
                    ("pipeline", &self.pipeline),
                    ("stage", &self.stage),
                    ("version", previous),
                ],
                0.0,
            );
        }
        self.metrics.set(
            names::PLUGIN_ACTIVE,
            &[
                ("pipeline", &self.pipeline),
                ("stage", &self.stage),
                ("version", active),
            ],
            1.0,
        );
    }

    /// The stage's record as it is now, to write once the lock is released.
    fn take_record(&self, inner: &mut Inner<P>) -> Option<PendingRecord> {
        self.records.as_ref()?;
        inner.record_seq += 1;
        Some(PendingRecord {
            seq: inner.record_seq,
            record: StageRecord {
                configured: inner.configured.clone(),
                active: inner.active.version().to_string(),
                versions: inner.versions.iter().map(|e| e.info.clone()).collect(),
                activations: inner.activations.clone(),
                rolled_back: inner.rolled_back.iter().cloned().collect(),
            },
        })
    }

    /// Writes a record taken by [`Self::take_record`], on this thread.
    fn write_record(&self, pending: Option<PendingRecord>) {
        if let (Some(writer), Some(pending)) = (&self.records, pending) {
            writer.write(pending);
        }
    }

    fn refused(&self, origin: VersionOrigin, error: PluginError) -> SwapError {
        let origin_label = match origin {
            VersionOrigin::Config => "config",
            VersionOrigin::File => "file",
            VersionOrigin::Api => "api",
        };
        self.metrics.add(
            names::PLUGIN_REFUSED,
            &[
                ("pipeline", &self.pipeline),
                ("stage", &self.stage),
                ("origin", origin_label),
            ],
            1,
        );
        tracing::warn!(
            pipeline = %self.pipeline, stage = %self.stage, origin = origin_label, error = %error,
            "new plugin version refused; the running version keeps running"
        );
        SwapError::Refused(error)
    }

    fn fixed_error(&self) -> SwapError {
        SwapError::Fixed {
            pipeline: self.pipeline.to_string(),
            stage: self.stage.to_string(),
        }
    }
}

impl<P: LoadedPlugin> SlotControl for PluginSlot<P> {
    fn pipeline(&self) -> &str {
        &self.pipeline
    }

    fn stage(&self) -> &str {
        &self.stage
    }

    fn file(&self) -> &Path {
        &self.file
    }

    fn active_version(&self) -> String {
        self.lock().active.version().to_string()
    }

    fn report(&self) -> SlotReport {
        let inner = self.lock();
        let active = inner.active.version().to_string();
        SlotReport {
            pipeline: self.pipeline.to_string(),
            stage: self.stage.to_string(),
            world: self.template.world().to_owned(),
            file: self.file.display().to_string(),
            active: active.clone(),
            probation: match (&inner.probation, &inner.fallback) {
                (Some(p), Some(fallback)) => Some(ProbationReport {
                    version: active.clone(),
                    fallback: fallback.version().to_string(),
                    events: p.events,
                    rejected: p.rejected,
                    trapped: p.trapped,
                    of: self.policy.probation_events,
                }),
                _ => None,
            },
            versions: inner
                .versions
                .iter()
                .map(|e| ListedVersion {
                    info: e.info.clone(),
                    status: if e.info.version == active {
                        "active"
                    } else if inner.rolled_back.contains(&e.info.version) {
                        "rolled_back"
                    } else {
                        "available"
                    },
                })
                .collect(),
            activations: inner.activations.clone(),
        }
    }

    fn offer(&self, bytes: Vec<u8>, origin: VersionOrigin) -> Result<Offered, SwapError> {
        let Some(engine) = &self.engine else {
            return Err(self.fixed_error());
        };
        let version = content_version(&bytes);
        let cause = match origin {
            VersionOrigin::Api => ActivationCause::Api,
            VersionOrigin::File | VersionOrigin::Config => ActivationCause::File,
        };
        if origin == VersionOrigin::File {
            let pending = {
                let mut inner = self.lock();
                if inner.configured == version {
                    None
                } else {
                    inner.configured = version.clone();
                    self.take_record(&mut inner)
                }
            };
            self.write_record(pending);
        }
        {
            let inner = self.lock();
            if **inner.active.version() == *version {
                let info = inner
                    .versions
                    .iter()
                    .find(|e| e.info.version == version)
                    .map(|e| e.info.clone());
                if let Some(info) = info {
                    return Ok(Offered::AlreadyActive { version: info });
                }
            }
            // A version loaded before: no need to compile it again.
            let known = inner
                .versions
                .iter()
                .find(|e| e.info.version == version)
                .and_then(|e| e.compiled.clone().map(|c| (c, e.info.clone())));
            if let Some((plugin, info)) = known {
                drop(inner);
                self.prepare_standbys(&plugin);
                let mut inner = self.lock();
                if **inner.active.version() == *version {
                    return Ok(Offered::AlreadyActive { version: info });
                }
                let pending = self.activate(&mut inner, plugin, cause, None, true);
                drop(inner);
                self.write_record(pending);
                return Ok(Offered::Activated { version: info });
            }
        }
        // Compile and validate outside the lock: the workers keep running meanwhile.
        let label = match origin {
            VersionOrigin::Api => PathBuf::from(format!(
                "(upload for stage `{}` of pipeline `{}`)",
                self.stage, self.pipeline
            )),
            VersionOrigin::File | VersionOrigin::Config => self.file.clone(),
        };
        let plugin = self
            .template
            .load_version(engine, &label, &bytes)
            .map_err(|e| self.refused(origin, e))?;
        if let Err(reason) = plugin.warm_up() {
            return Err(self.refused(
                origin,
                PluginError::Instantiate {
                    path: label,
                    reason,
                },
            ));
        }
        if let Some(store) = &self.store
            && let Err(e) = store.put_bytes(&version, &bytes)
        {
            tracing::warn!(store = %store.dir().display(), error = %e, "cannot keep the plugin version in the store");
        }
        self.prepare_standbys(&plugin);
        let mut inner = self.lock();
        let info = match inner
            .versions
            .iter_mut()
            .find(|e| e.info.version == version)
        {
            Some(entry) => {
                entry.compiled = Some(plugin.clone());
                entry.info.clone()
            }
            None => {
                let (name, crate_version) = crate_of(&*plugin);
                let info = VersionInfo {
                    version: version.clone(),
                    plugin: plugin.name().to_string(),
                    bytes: bytes.len() as u64,
                    loaded_at: now_text(),
                    origin,
                    name,
                    crate_version,
                };
                inner.versions.push(Entry {
                    info: info.clone(),
                    compiled: Some(plugin.clone()),
                });
                info
            }
        };
        if **inner.active.version() == *version {
            return Ok(Offered::AlreadyActive { version: info });
        }
        let pending = self.activate(&mut inner, plugin, cause, None, true);
        drop(inner);
        self.write_record(pending);
        Ok(Offered::Activated { version: info })
    }

    fn start_shadow(
        &self,
        bytes: Vec<u8>,
        events: u64,
        partitions: &[u32],
        within: Option<std::time::Duration>,
    ) -> Result<super::shadow::ShadowReport, SwapError> {
        let Some(engine) = &self.engine else {
            return Err(self.fixed_error());
        };
        let label = PathBuf::from(format!(
            "(shadow for stage `{}` of pipeline `{}`)",
            self.stage, self.pipeline
        ));
        let plugin = self
            .template
            .load_version(engine, &label, &bytes)
            .map_err(|e| self.refused(VersionOrigin::Api, e))?;
        if let Err(reason) = plugin.warm_up() {
            let error = PluginError::Instantiate {
                path: label,
                reason,
            };
            return Err(self.refused(VersionOrigin::Api, error));
        }
        let id = self.shadows.generation() + 1;
        let run = super::shadow::ShadowRun::new(id, plugin, events, partitions, within);
        let run = self.shadows.start(run);
        tracing::info!(
            pipeline = %self.pipeline, stage = %self.stage, version = %run.plugin().version(),
            events_per_partition = events, "shadow run started"
        );
        Ok(run.report())
    }

    fn shadow_report(&self) -> Option<super::shadow::ShadowReport> {
        self.shadows.current().map(|run| run.report())
    }

    fn rollback(&self, version: Option<&str>) -> Result<VersionInfo, SwapError> {
        let Some(engine) = &self.engine else {
            return Err(self.fixed_error());
        };
        let target = {
            let inner = self.lock();
            match version {
                Some(v) => v.to_owned(),
                None => inner
                    .activations
                    .iter()
                    .rev()
                    .find(|a| a.version == **inner.active.version())
                    .and_then(|a| a.previous.clone())
                    .ok_or_else(|| SwapError::NoPrevious {
                        pipeline: self.pipeline.to_string(),
                        stage: self.stage.to_string(),
                    })?,
            }
        };
        let (compiled, info) = {
            let inner = self.lock();
            let Some(entry) = inner.versions.iter().find(|e| e.info.version == target) else {
                return Err(SwapError::UnknownVersion {
                    pipeline: self.pipeline.to_string(),
                    stage: self.stage.to_string(),
                    version: target,
                    known: inner
                        .versions
                        .iter()
                        .map(|e| e.info.version.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            (entry.compiled.clone(), entry.info.clone())
        };
        let plugin = match compiled {
            Some(plugin) => plugin,
            None => {
                // Known from an earlier run: load it from the store (its compiled form is cached).
                let store = self.store.as_ref().ok_or_else(|| self.fixed_error())?;
                let path = store.bytes_path(&target);
                let bytes = std::fs::read(&path).map_err(|source| {
                    SwapError::Refused(PluginError::Read {
                        path: path.clone(),
                        source,
                    })
                })?;
                let plugin = self
                    .template
                    .load_version(engine, &path, &bytes)
                    .map_err(|e| self.refused(info.origin, e))?;
                let mut inner = self.lock();
                if let Some(entry) = inner.versions.iter_mut().find(|e| e.info.version == target) {
                    entry.compiled = Some(plugin.clone());
                }
                plugin
            }
        };
        if **self.lock().active.version() != *target {
            self.prepare_standbys(&plugin);
        }
        let pending = {
            let mut inner = self.lock();
            if **inner.active.version() == *target {
                None
            } else {
                self.activate(&mut inner, plugin, ActivationCause::Rollback, None, false)
            }
        };
        self.write_record(pending);
        Ok(info)
    }
}

#[path = "probation.rs"]
mod probation;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(active: &str) -> StageRecord {
        StageRecord {
            configured: "configured".to_owned(),
            active: active.to_owned(),
            versions: Vec::new(),
            activations: Vec::new(),
            rolled_back: Vec::new(),
        }
    }

    #[test]
    fn an_older_record_never_overwrites_a_newer_one() {
        // Records are taken under the slot's lock and written after it, possibly by two threads
        // (an activation's, and the background thread for an automatic rollback).
        let dir = tempfile::tempdir().expect("temp dir");
        let store = VersionStore::new(dir.path().to_path_buf());
        let writer = RecordWriter {
            store: store.clone(),
            pipeline: "p".into(),
            stage: "s".into(),
            written: Arc::new(Mutex::new(0)),
        };
        writer.write(PendingRecord {
            seq: 2,
            record: record("newer"),
        });
        writer.write(PendingRecord {
            seq: 1,
            record: record("older"),
        });
        let active = store.load_stage("p", "s").map(|r| r.active);
        assert_eq!(active.as_deref(), Some("newer"));
        writer.write(PendingRecord {
            seq: 3,
            record: record("newest"),
        });
        let active = store.load_stage("p", "s").map(|r| r.active);
        assert_eq!(active.as_deref(), Some("newest"));
    }
}
