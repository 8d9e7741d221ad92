//! Stages: the steps a partition's events go through between the source and the sinks.
//!
//! A stage is plain synchronous code over a batch of one partition's events. It never takes the
//! host down: whatever the plugin does, the stage returns outputs and rejections, or an error that
//! stops only its own partition worker.
//!
//! The stages that run a plugin (per-event transform, window aggregate, interval join) are one
//! [`PluginStage`] each, parameterised by their kind: the shared core (`plugin_stage`) runs the
//! plugin's instances, hot swap, probation, fallback and trap isolation; a kind adds how it lays
//! out a call and reads the answer. A refused event carries a [`RejectionKind`], which decides its
//! dead letter's kind; its reason is words for people.

pub mod batch;
mod dedup;
mod join;
mod plugin_stage;
mod transform;
mod window;
mod window_assign;

use std::sync::Arc;

use crate::event::Event;
use crate::time::Mark;

pub use dedup::{DEDUP_OUTPUT, DedupStage};
pub use join::{JoinSettings, JoinStage, Joins};
pub use plugin_stage::{
    AnswerError, PluginCore, PluginStage, Restored, StageKind, StatefulKind, Turn,
};
pub use transform::{
    PLUGIN_VERSION_PROPERTY, PLUGIN_VERSIONS_PROPERTY, StageTelemetry, Transform,
    WasmTransformStage, labelled_lineage, labelled_version, lineage,
};
pub use window::{AsaWindow, WindowSettings, WindowSpec, WindowStage, Windows};

/// What a stage produced for one batch.
#[derive(Debug, Default)]
pub struct StageOutput {
    /// Records in emission order, each with the name of the stage output it was sent to. A record
    /// keeps the partition, position and times of the input event it derives from.
    pub emitted: Vec<(Arc<str>, Event)>,
    /// Input events the stage refused, with the reason.
    pub rejected: Vec<Rejected>,
}

impl StageOutput {
    /// Empties the output, keeping its allocations.
    pub fn clear(&mut self) {
        self.emitted.clear();
        self.rejected.clear();
    }

    /// What the host read from `event` (a key, an id), or, when it could not, `None` with the
    /// event refused for the reason (before any plugin saw it).
    pub fn checked<T>(&mut self, event: &Event, read: Result<T, String>) -> Option<T> {
        match read {
            Ok(value) => Some(value),
            Err(reason) => {
                self.rejected.push(Rejected {
                    event: event.clone(),
                    kind: RejectionKind::Unreadable,
                    reason,
                    plugin_version: None,
                });
                None
            }
        }
    }
}

/// An input event a stage refused.
#[derive(Debug)]
pub struct Rejected {
    /// The event as the stage received it.
    pub event: Event,
    /// What kind of refusal it is (it decides the dead letter's kind).
    pub kind: RejectionKind,
    /// Why it was refused, in words (the dead letter's reason).
    pub reason: String,
    /// Version of the plugin that refused it.
    pub plugin_version: Option<Arc<str>>,
}

/// Why a stage refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The plugin refused it.
    Plugin,
    /// The plugin's output for it cannot be used (for example, a window output that is not a
    /// JSON object).
    InvalidOutput,
    /// The plugin trapped on it (and, during a probation, the previous version too).
    Trap,
    /// It came for a window that had already closed.
    Late,
    /// The host could not read what the stage needs from it (a group or join key, an id), before
    /// any plugin saw it.
    Unreadable,
}

impl RejectionKind {
    /// Whether the plugin refused the event itself (counted against its probation).
    pub fn by_plugin(self) -> bool {
        matches!(self, RejectionKind::Plugin | RejectionKind::InvalidOutput)
    }

    /// Whether the host refused the event before any plugin saw it.
    pub fn by_host(self) -> bool {
        matches!(self, RejectionKind::Late | RejectionKind::Unreadable)
    }
}

/// A stage failed in a way that retrying the batch does not fix (for example, its plugin cannot be
/// instantiated). The partition worker stops without checkpointing the batch.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}` of pipeline `{pipeline}`, partition {partition}: {failure}")]
pub struct StageError {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// What happened.
    pub failure: StageFailure,
}

impl StageError {
    /// The error for a partition worker's task of `pipeline` that ended abnormally (it panicked
    /// or was cancelled).
    pub fn worker_task(pipeline: Arc<str>, partition: u32, error: &tokio::task::JoinError) -> Self {
        StageError {
            pipeline,
            stage: "(worker)".into(),
            partition,
            failure: StageFailure::WorkerTask {
                error: error.to_string(),
                cancelled: error.is_cancelled(),
            },
        }
    }

    /// Whether running the partition again (from its last checkpoint) can help; an operator
    /// otherwise fixes the plugin or its limits first.
    pub fn retryable(&self) -> bool {
        self.failure.retryable()
    }
}

/// What made a stage fail.
#[derive(Debug, thiserror::Error)]
pub enum StageFailure {
    /// The stage's plugin cannot be instantiated.
    #[error("cannot instantiate plugin: {0}")]
    Instantiate(crate::plugin::CallError),
    /// The plugin's answer does not fit its request (it names a window or pair that was not
    /// asked for, or gives the wrong number of accumulators).
    #[error("{0}")]
    InvalidAnswer(plugin_stage::AnswerError),
    /// The partition worker's task ended abnormally.
    #[error("worker task failed: {error}")]
    WorkerTask {
        /// What the runtime said.
        error: String,
        /// Whether it was cancelled (rather than panicked).
        cancelled: bool,
    },
}

impl StageFailure {
    /// See [`StageError::retryable`].
    pub fn retryable(&self) -> bool {
        match self {
            StageFailure::Instantiate(error) => error.retryable(),
            StageFailure::InvalidAnswer(_) => false,
            StageFailure::WorkerTask { cancelled, .. } => *cancelled,
        }
    }
}

/// One step of a pipeline, run by one partition worker.
pub trait Stage: Send {
    /// The stage's name in its pipeline.
    fn name(&self) -> &Arc<str>;

    /// The partition worker starts a batch: the calls that follow, until the next boundary, are
    /// one batch (its events, its right-hand events, its watermarks). Plugin stages take their
    /// version slot's active version here (window and join stages, which get several calls per
    /// batch, nowhere else), so that a batch in flight finishes on the version it started with;
    /// a transform, called once per batch, also looks at the start of each call.
    fn batch_boundary(&mut self) {}

    /// Processes one batch of events of this stage's partition, in order.
    fn process(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError>;

    /// Processes one batch of the stage's second input (a join's `right`), after [`Stage::process`]
    /// got the first input's records of the same batch. Stages with one input treat it as theirs.
    fn process_right(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        self.process(events, out)
    }

    /// The partition's watermark advanced (see [`crate::time`]), after the events given to
    /// [`Stage::process`] in the same batch. A time-based stage closes what the marks pass, in
    /// order; what it emits for a mark carries the mark's position. Other stages ignore marks.
    fn watermarks(&mut self, _marks: &[Mark], _out: &mut StageOutput) -> Result<(), StageError> {
        Ok(())
    }

    /// The stage's state, to store in the partition's checkpoint.
    fn snapshot(&self) -> Vec<u8>;

    /// For a stage whose state is all keyed state, checkpointed incrementally (see
    /// [`crate::checkpoint::IncrementalState`]): the keys changed since the last call, or with
    /// `whole` the whole state as a base (see [`crate::plugin::KeyedState::take_changes`]).
    /// `None`: the stage's [`Stage::snapshot`] holds its state.
    fn take_state_changes(&mut self, _whole: bool) -> Option<bytes::Bytes> {
        None
    }

    /// For a stage whose state is all keyed state: starts a compaction at this cut, the whole
    /// state to write as a base on another thread while the stage goes on (see
    /// [`crate::plugin::KeyedState::begin_base`]). `None`: the stage's [`Stage::snapshot`] holds
    /// its state.
    fn begin_state_base(&mut self) -> Option<crate::plugin::BaseWrite> {
        None
    }

    /// The base `write` wrote, once its checkpoint is saved: the stage's state takes it in place
    /// of the layers it was written from. Returns what the state let go of, to drop off the
    /// partition's thread.
    fn adopt_state_base(
        &mut self,
        _write: &crate::plugin::BaseWrite,
        _bytes: bytes::Bytes,
    ) -> Option<crate::plugin::ReplacedLayers> {
        None
    }

    /// The plugin version the stage runs now, if it runs a plugin (dead letters about what the
    /// stage emitted name it when the record does not carry its version).
    fn running_version(&self) -> Option<Arc<str>> {
        None
    }

    /// The plugin the stage runs now, if it runs one (dead letters name it).
    fn running_plugin(&self) -> Option<Arc<crate::plugin::Plugin>> {
        None
    }

    /// Counters the stage's plugin added to since the last call, to fold into metrics.
    fn take_counters(&mut self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::DeadLetterKind;
    use crate::plugin::{CallError, CallFailure};

    #[test]
    fn each_rejection_kind_has_its_dead_letter_kind() {
        let expected = [
            (RejectionKind::Plugin, DeadLetterKind::Rejected),
            (RejectionKind::InvalidOutput, DeadLetterKind::Rejected),
            (RejectionKind::Trap, DeadLetterKind::Trap),
            (RejectionKind::Late, DeadLetterKind::Late),
            (RejectionKind::Unreadable, DeadLetterKind::Rejected),
        ];
        for (kind, letter) in expected {
            assert_eq!(DeadLetterKind::from(kind), letter, "{kind:?}");
        }
        // Whatever its words: a plugin's reason starting like a trap is still the plugin's.
        let mut out = StageOutput::default();
        assert_eq!(
            out.checked::<()>(&Event::new(0, 1, ""), Err("late: no".into())),
            None
        );
        assert_eq!(out.rejected[0].kind, RejectionKind::Unreadable);
    }

    #[test]
    fn stage_errors_read_as_before_and_say_whether_to_retry() {
        let error = |failure| StageError {
            pipeline: "p".into(),
            stage: "s".into(),
            partition: 3,
            failure,
        };
        let call = CallError {
            plugin: "agg".into(),
            version: "v1".into(),
            kind: CallFailure::Instantiation {
                error: "start-up failed".into(),
            },
        };
        let instantiate = error(StageFailure::Instantiate(call));
        assert_eq!(
            instantiate.to_string(),
            "stage `s` of pipeline `p`, partition 3: cannot instantiate plugin: plugin agg version v1 trapped: start-up failed"
        );
        assert!(!instantiate.retryable());
        let answer = error(StageFailure::InvalidAnswer(
            plugin_stage::AnswerError::Rejection {
                noun: "window",
                index: 4,
                units: "2".into(),
            },
        ));
        assert_eq!(
            answer.to_string(),
            "stage `s` of pipeline `p`, partition 3: plugin rejected window 4 of 2"
        );
        assert!(!answer.retryable());
        let task = error(StageFailure::WorkerTask {
            error: "task 7 panicked".into(),
            cancelled: false,
        });
        assert_eq!(
            task.to_string(),
            "stage `s` of pipeline `p`, partition 3: worker task failed: task 7 panicked"
        );
        assert!(!task.retryable());
    }
}
