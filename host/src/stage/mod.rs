//! Stages: the steps a partition's events go through between the source and the sinks.
//!
//! A stage is plain synchronous code over a batch of one partition's events. It never takes the
//! host down: whatever the plugin does, the stage returns outputs and rejections, or an error that
//! stops only its own partition worker.

pub mod batch;
mod dedup;
mod join;
mod plugin_stage;
mod transform;
mod window;

use std::sync::Arc;

use crate::event::Event;
use crate::time::Mark;

pub use dedup::{DEDUP_OUTPUT, DedupStage};
pub use join::{JoinSettings, JoinStage, Joins};
pub use plugin_stage::{PluginCore, PluginStage, Restored, StageKind, StatefulKind, Turn};
pub use transform::{
    PLUGIN_VERSION_PROPERTY, StageTelemetry, Transform, WasmTransformStage, labelled_version,
};
pub use window::{WindowSettings, WindowSpec, WindowStage, Windows};

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
    /// Why it was refused. A reason starting with `plugin trapped` is recorded as a trap, one
    /// starting with `late:` as a late event; others as a rejection.
    pub reason: String,
    /// Version of the plugin that refused it.
    pub plugin_version: Option<Arc<str>>,
}

/// A stage failed in a way that retrying the batch cannot fix (for example, its plugin cannot be
/// instantiated). The partition worker stops without checkpointing the batch.
#[derive(Debug, thiserror::Error)]
#[error("stage `{stage}` of pipeline `{pipeline}`, partition {partition}: {reason}")]
pub struct StageError {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// What happened.
    pub reason: String,
}

/// One step of a pipeline, run by one partition worker.
pub trait Stage: Send {
    /// The stage's name in its pipeline.
    fn name(&self) -> &Arc<str>;

    /// The partition worker starts a batch: the calls that follow, until the next boundary, are
    /// one batch (its events, its right-hand events, its watermarks). Window and join stages,
    /// which get several calls per batch, take their version slot's active version here and
    /// nowhere else, so that a batch in flight finishes on the version it started with.
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

    /// The plugin version the stage runs now, if it runs a plugin (dead letters about what the
    /// stage emitted name it when the record does not carry its version).
    fn running_version(&self) -> Option<Arc<str>> {
        None
    }

    /// Counters the stage's plugin added to since the last call, to fold into metrics.
    fn take_counters(&mut self) -> Vec<(String, u64)> {
        Vec::new()
    }
}
