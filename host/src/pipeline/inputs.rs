//! A partition worker's inputs: partition *i* of each of its pipeline's sources, read in turn.
//!
//! A pipeline with one source reads it as it always did: its positions are the partition's
//! positions. With several, each source keeps its own position (resumed after the one its
//! checkpoint holds) and the worker's event time merges their events (see
//! [`crate::time::SourceMerge`]).

use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{Checkpoint, SourcePosition};
use crate::event::Position;
use crate::source::{PartitionReader, ReadOutcome, SourceError};

/// One source's partition, as a worker reads it.
pub(crate) struct Input {
    /// The source's name in the configuration.
    pub(crate) name: Arc<str>,
    pub(crate) reader: Box<dyn PartitionReader>,
    /// The top-level field holding this source's event time, if any.
    pub(crate) event_time_field: Option<String>,
    /// Whether the reader's events come with that field's event time already read (see
    /// [`PartitionReader::event_time_decoded`]).
    pub(crate) event_time_decoded: bool,
    /// The last position read (used with several sources; with one, the worker's position).
    pub(crate) position: Option<Position>,
    /// The source's offset of `position` as the checkpoint loaded at start holds it (see the
    /// worker's `checkpointed_offset`).
    pub(crate) offset: Option<String>,
    /// Whether the source's partition has ended.
    pub(crate) ended: bool,
}

/// Where the reader of source `name` resumes in a pipeline with `sources` sources: after the
/// checkpoint's position (one source), or after the source's own entry (several).
pub(crate) fn resume_after(
    checkpoint: &Checkpoint,
    sources: usize,
    name: &str,
) -> Option<Position> {
    if sources <= 1 {
        checkpoint.position
    } else {
        checkpoint.sources.get(name).and_then(|s| s.position)
    }
}

/// The inputs of one partition worker, read in turn.
pub(crate) struct Inputs {
    pub(crate) inputs: Vec<Input>,
    /// The input the next read starts with, so that a busy source does not starve the others.
    next: usize,
}

impl Inputs {
    /// The inputs, in the pipeline's order of its sources.
    pub(crate) fn new(inputs: Vec<Input>) -> Self {
        Inputs { inputs, next: 0 }
    }

    /// Whether the pipeline has several sources.
    pub(crate) fn several(&self) -> bool {
        self.inputs.len() > 1
    }

    /// Reads the next batch of one input: the first in turn with events (or with data that
    /// cannot be decoded, or that has just ended), each waiting for its share of `wait`. Returns
    /// the input's index with what it read; `Idle` when none had anything, `End` once all ended.
    pub(crate) async fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<(usize, ReadOutcome), SourceError> {
        if !self.several() {
            let Some(input) = self.inputs.first_mut() else {
                return Ok((0, ReadOutcome::End));
            };
            return Ok((0, input.reader.next_batch(max, wait).await?));
        }
        let open = self.inputs.iter().filter(|i| !i.ended).count();
        if open == 0 {
            return Ok((0, ReadOutcome::End));
        }
        let count = self.inputs.len();
        // Divided by a handful of sources: it fits.
        let share = (wait / u32::try_from(open).unwrap_or(1)).max(Duration::from_millis(1));
        for step in 0..count {
            let index = (self.next + step) % count;
            let input = &mut self.inputs[index];
            if input.ended {
                continue;
            }
            match input.reader.next_batch(max, share).await? {
                ReadOutcome::Idle => continue,
                ReadOutcome::End => {
                    input.ended = true;
                    self.next = (index + 1) % count;
                    return Ok((index, ReadOutcome::End));
                }
                read => {
                    self.next = (index + 1) % count;
                    return Ok((index, read));
                }
            }
        }
        Ok((0, ReadOutcome::Idle))
    }

    /// Whether every input has ended.
    pub(crate) fn all_ended(&self) -> bool {
        self.inputs.iter().all(|i| i.ended)
    }

    /// The partition's lag: the sum over its inputs that know theirs.
    pub(crate) fn lag(&self) -> Option<u64> {
        self.inputs
            .iter()
            .filter_map(|i| i.reader.lag())
            .reduce(u64::saturating_add)
    }

    /// Each source's position and offset, for the checkpoint of a pipeline with several.
    pub(crate) fn positions(&self) -> std::collections::BTreeMap<String, SourcePosition> {
        self.inputs
            .iter()
            .map(|input| {
                let offset = input
                    .position
                    .and_then(|p| input.reader.source_offset(p))
                    .or_else(|| input.offset.clone());
                (
                    input.name.to_string(),
                    SourcePosition {
                        position: input.position,
                        offset,
                    },
                )
            })
            .collect()
    }

    /// A checkpoint covering each input's position was saved.
    pub(crate) fn checkpointed(
        &mut self,
        saved: &std::collections::BTreeMap<String, SourcePosition>,
    ) {
        for input in &mut self.inputs {
            if let Some(entry) = saved.get(&*input.name) {
                if let Some(position) = entry.position {
                    input.reader.checkpointed(position);
                }
                input.offset = entry.offset.clone();
            }
        }
    }
}
