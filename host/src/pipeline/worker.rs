//! One partition of one pipeline: read a batch, decode, run the stages, hand records to the sinks,
//! and every checkpoint interval flush the sinks and then save the checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::dead_letter::{
    DeadLetterKind, DeadLetterOrigin, LetterPlugin, dead_letter, dead_letter_before_merge,
};
use super::event_time::{IDLE_ADVANCE_STATE, PartitionTime};
use super::inputs::Inputs;
use crate::checkpoint::{Checkpoint, CheckpointStore, IncrementalState, StateWrite};
use crate::event::{Event, PartitionId, Position, now_millis};
use crate::json::{event_time_millis, top_level_field};
use crate::metrics::{Metrics, names};
use crate::sink::SinkWriter;
use crate::source::ReadOutcome;
use crate::stage::{Stage, StageOutput};
use crate::status::{PartitionHandle, PartitionState};
use crate::time::Mark;

/// Where a stage output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// The worker's sink writer with this index.
    Sink(usize),
    /// The stage with this index (always a later one).
    Stage(usize),
    /// The second input (a join's `right`) of the stage with this index.
    StageRight(usize),
}

/// A stage and the routes of its outputs.
pub(crate) struct StageSlot {
    pub(crate) stage: Box<dyn Stage>,
    pub(crate) routes: HashMap<Arc<str>, Vec<Destination>>,
}

/// A sink writer and the records waiting for it in the current batch.
pub(crate) struct SinkSlot {
    pub(crate) name: Arc<str>,
    pub(crate) writer: Box<dyn SinkWriter>,
    pub(crate) pending: Vec<Event>,
}

/// Why a partition worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// A stage failed beyond what retrying can fix.
    #[error(transparent)]
    Stage(#[from] crate::stage::StageError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// The checkpoint could not be saved.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

impl WorkerError {
    /// Whether restarting the partition from its last checkpoint can help, or an operator must
    /// change something first.
    pub fn retryable(&self) -> bool {
        match self {
            WorkerError::Source(e) => e.retryable(),
            WorkerError::Stage(e) => e.retryable(),
            WorkerError::Sink(e) => e.retryable(),
            WorkerError::Checkpoint(e) => e.retryable(),
        }
    }
}

/// Settings of a worker that come from its pipeline.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    pub(crate) pipeline: Arc<str>,
    /// The pipeline's source, for metric labels (its sources joined by `+` when it has several).
    pub(crate) source: Arc<str>,
    pub(crate) max_event_bytes: usize,
    pub(crate) batch_max_events: usize,
    pub(crate) batch_max_wait: Duration,
    pub(crate) checkpoint_interval: Duration,
    /// How long a run holds its partition before it deletes the state files earlier runs left
    /// behind ([`IncrementalState::take_sweep`]).
    pub(crate) state_sweep_after: Duration,
}

/// What a worker did, reported when it stops.
#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    /// Partition.
    pub partition: PartitionId,
    /// Events read from the source.
    pub events_in: u64,
    /// Records handed to each sink (dead letters included under the dead-letter sink).
    pub records_out: BTreeMap<String, u64>,
    /// Events sent to the dead-letter sink.
    pub dead_letters: u64,
    /// The last checkpointed position.
    pub checkpointed: Option<Position>,
    /// Events whose time an event-time policy adjusted.
    pub late_adjusted: u64,
    /// Events an event-time policy dropped (they are among the dead letters too).
    pub late_dropped: u64,
    /// Why the worker gave its partition up before the end, when another reader took it (an
    /// Event Hubs reader with a higher owner level).
    pub lost: Option<String>,
}

/// One partition worker.
pub(crate) struct PartitionWorker {
    pub(crate) settings: WorkerSettings,
    pub(crate) partition: PartitionId,
    /// Partition `partition` of each of the pipeline's sources.
    pub(crate) inputs: Inputs,
    /// With several sources: where each input's events enter the stages.
    pub(crate) source_routes: Vec<Vec<Destination>>,
    pub(crate) stages: Vec<StageSlot>,
    pub(crate) sinks: Vec<SinkSlot>,
    /// Index in `sinks` of the dead-letter sink.
    pub(crate) dead_letter_sink: usize,
    pub(crate) checkpoints: Arc<dyn CheckpointStore>,
    pub(crate) metrics: Metrics,
    /// The last position processed.
    pub(crate) position: Option<Position>,
    /// The position of the last saved checkpoint.
    pub(crate) checkpointed: Option<Position>,
    /// The state files of the stages that checkpoint incrementally.
    pub(crate) incremental: IncrementalState,
    /// The source's offset of `checkpointed` (an Event Hubs offset), from the checkpoint loaded at
    /// start or the last one saved: a checkpoint re-saved at that position before any new event
    /// (an idle watermark advance, the input's end, after a restart or a takeover) keeps it,
    /// since the reader only knows the offsets of the events it read.
    pub(crate) checkpointed_offset: Option<String>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Event time, when the pipeline orders events or has time-based stages.
    pub(crate) time: Option<PartitionTime>,
    /// Stage or clock state changed without a new position (an idle partition's watermark
    /// advanced, or the input ended): the next checkpoint must be written anyway.
    pub(crate) state_dirty: bool,
    /// Records waiting for the second input (a join's `right`) of each stage.
    pub(crate) right_inputs: Vec<Vec<Event>>,
    /// This partition's entry in the status registry (admin API, health alerts).
    pub(crate) status: PartitionHandle,
    /// The latest event time decoded, for the watermark delay.
    pub(crate) max_event_time: Option<i64>,
    /// An idle advance decided and checkpointed but not yet written (restored from a checkpoint
    /// taken just before it: the run repeats it first).
    pub(crate) pending_idle_advance: Option<i64>,
    /// The regular checkpoint whose flushes and save run beside the worker.
    pub(crate) in_flight: Option<CheckpointInFlight>,
}

/// A checkpoint started by [`PartitionWorker::start_checkpoint`]: its sinks' flushes and the
/// save of its record, in a task that is aborted if the worker stops without waiting for it
/// (the record is then not saved, and the partition restarts from the one before).
pub(crate) struct CheckpointInFlight {
    task: JoinHandle<Result<Checkpoint, WorkerError>>,
    position: Position,
    several: bool,
    started: std::time::Instant,
    /// How long the partition stopped for it (the state taken, the flushes started).
    paused: Duration,
    /// The stages' bases the task writes, which the stages take once it is saved.
    bases: Vec<PendingBase>,
}

/// A stage's base, written in the checkpoint's task from its state frozen at the cut (a
/// compaction of millions of keys takes seconds, which the partition does not wait for).
struct PendingBase {
    stage: String,
    /// The state file it is written to.
    file: String,
    write: Arc<crate::plugin::BaseWrite>,
}

impl Drop for CheckpointInFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A checkpoint's task (or a state base's write in it) that panicked or was cancelled.
fn task_failed(location: &str, reason: String) -> WorkerError {
    WorkerError::Checkpoint(crate::checkpoint::CheckpointError::new(
        crate::checkpoint::CheckpointErrorKind::Unavailable,
        location.to_owned(),
        reason,
    ))
}

impl PartitionWorker {
    /// Runs until the source ends or a shutdown is requested, then writes a final checkpoint.
    pub(crate) async fn run(self) -> Result<WorkerReport, WorkerError> {
        let status = self.status.clone();
        status.update(|s| s.state = PartitionState::Running);
        let result = self.run_loop().await;
        status.update(|s| {
            s.state = match &result {
                Ok(_) => PartitionState::Stopped,
                Err(_) => PartitionState::Failed,
            }
        });
        result
    }

    async fn run_loop(mut self) -> Result<WorkerReport, WorkerError> {
        let mut report = WorkerReport {
            partition: self.partition,
            checkpointed: self.checkpointed,
            ..WorkerReport::default()
        };
        let mut stage_inputs: Vec<Vec<Event>> =
            (0..self.stages.len()).map(|_| Vec::new()).collect();
        let mut output = StageOutput::default();
        if let Some(target) = self.pending_idle_advance {
            // Checkpointed, then a crash: repeat it as it was decided.
            self.idle_advance(target, &mut stage_inputs, &mut output, &mut report)
                .await?;
        }
        // Idle marks of several sources checkpointed, then a crash: let go what they let go.
        self.release_marked(&mut stage_inputs, &mut output, &mut report)
            .await?;
        let mut next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
        loop {
            if *self.shutdown.borrow() {
                tracing::info!(pipeline = %self.settings.pipeline, partition = self.partition, "stopping: shutdown requested");
                break;
            }
            let Some((input, read)) = self.read_next(next_checkpoint, &mut report).await? else {
                break;
            };
            match read {
                ReadOutcome::Events(events) => {
                    self.on_events(input, events, &mut stage_inputs, &mut output, &mut report)
                        .await?;
                    // With several sources, one that stays quiet while another delivers stops
                    // holding the partition back after its idle timeout too.
                    if self.inputs.several()
                        && self
                            .time
                            .as_mut()
                            .is_some_and(PartitionTime::mark_quiet_sources)
                    {
                        self.release_quiet(&mut stage_inputs, &mut output, &mut report)
                            .await?;
                        next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
                    }
                }
                ReadOutcome::End if self.inputs.several() => {
                    tracing::info!(pipeline = %self.settings.pipeline, partition = self.partition, source = %self.inputs.inputs[input].name, "source partition ended");
                    if let Some(time) = &mut self.time {
                        time.source_ended(input);
                    }
                    self.state_dirty = true;
                    self.deliver(Vec::new(), &mut stage_inputs, &mut output, &mut report)
                        .await?;
                    self.position = self.time.as_ref().and_then(PartitionTime::sequence);
                    if self.inputs.all_ended() {
                        break;
                    }
                }
                ReadOutcome::Idle => {
                    // Lag changes without events too (a partition catches up when the source
                    // finds nothing more for it).
                    self.report_idle_lag();
                    // An idle partition may follow the pipeline watermark (or the wall clock):
                    // what that closes is written and checkpointed at once.
                    if self
                        .time
                        .as_mut()
                        .is_some_and(PartitionTime::mark_quiet_sources)
                    {
                        // A quiet source stopped holding the others back: what that lets go is
                        // written and checkpointed at once.
                        self.release_quiet(&mut stage_inputs, &mut output, &mut report)
                            .await?;
                        next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
                    }
                    let position = self.position;
                    let target = self.time.as_mut().and_then(|t| t.idle_target(position));
                    if let Some(target) = target {
                        self.idle_advance(target, &mut stage_inputs, &mut output, &mut report)
                            .await?;
                        next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
                    }
                }
                ReadOutcome::Undecodable {
                    first,
                    last,
                    reason,
                } => {
                    let letter = self.undecodable_letter(input, first, &reason);
                    self.deliver(vec![letter], &mut stage_inputs, &mut output, &mut report)
                        .await?;
                    if self.inputs.several() {
                        self.inputs.inputs[input].position = Some(last);
                        self.state_dirty = true;
                    } else {
                        self.position = Some(last);
                    }
                }
                ReadOutcome::End => {
                    tracing::info!(pipeline = %self.settings.pipeline, partition = self.partition, "source partition ended");
                    // A bounded input has ended: every window and join still open closes.
                    if self.time_finished() {
                        self.deliver(Vec::new(), &mut stage_inputs, &mut output, &mut report)
                            .await?;
                    }
                    break;
                }
            }
            if self
                .in_flight
                .as_ref()
                .is_some_and(|c| c.task.is_finished())
            {
                self.finish_checkpoint().await?;
            }
            // One still in flight when the next is due: the next starts once it is saved.
            if Instant::now() >= next_checkpoint && self.in_flight.is_none() {
                self.start_checkpoint().await?;
                next_checkpoint = Instant::now() + self.settings.checkpoint_interval;
            }
        }
        self.checkpoint().await?;
        report.checkpointed = self.checkpointed;
        Ok(report)
    }

    /// Waits for the next batch, at most until the batch wait or the next checkpoint is due.
    /// `None` when another reader took the partition: the worker stops reading it, and
    /// checkpoints what was processed; the process goes on with its other partitions.
    async fn read_next(
        &mut self,
        next_checkpoint: Instant,
        report: &mut WorkerReport,
    ) -> Result<Option<(usize, ReadOutcome)>, WorkerError> {
        let until_checkpoint = match &self.in_flight {
            // Not before the one in flight is saved (the next batch wait looks again).
            Some(_) => self.settings.batch_max_wait,
            None => next_checkpoint.saturating_duration_since(Instant::now()),
        };
        let wait = self
            .settings
            .batch_max_wait
            .min(until_checkpoint)
            .max(Duration::from_millis(1));
        match self.inputs.read(self.settings.batch_max_events, wait).await {
            Ok(read) => Ok(Some(read)),
            Err(crate::source::SourceError::Lost { reason, .. }) => {
                tracing::info!(pipeline = %self.settings.pipeline, partition = self.partition, "partition taken by another reader; stopping its worker");
                report.lost = Some(reason);
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Counts a batch the source read, runs it through the stages into the sinks and moves the
    /// partition's position to its last event.
    async fn on_events(
        &mut self,
        input: usize,
        events: Vec<Event>,
        stage_inputs: &mut [Vec<Event>],
        output: &mut StageOutput,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let last = events.last().map(|e| e.position);
        let count = events.len() as u64;
        report.events_in += count;
        let partition_label = self.partition.to_string();
        let source = match self.inputs.several() {
            true => self.inputs.inputs[input].name.clone(),
            false => self.settings.source.clone(),
        };
        self.metrics.add(
            names::EVENTS_IN,
            &[
                ("pipeline", &self.settings.pipeline),
                ("source", &source),
                ("partition", &partition_label),
            ],
            count,
        );
        let started = std::time::Instant::now();
        let dead_before = report.dead_letters;
        self.process_batch(input, events, stage_inputs, output, report)
            .await?;
        if self.inputs.several() {
            // The source's own position moved; the partition's is the merged sequence.
            if last.is_some() {
                self.inputs.inputs[input].position = last;
            }
            self.position = self.time.as_ref().and_then(PartitionTime::sequence);
            self.state_dirty = true;
        } else if last.is_some() {
            self.position = last;
        }
        self.batch_done(started, count, report.dead_letters - dead_before);
        Ok(())
    }

    /// What is known of data that cannot be decoded, as a dead letter at its first position (the
    /// checkpoint then moves past it).
    fn undecodable_letter(
        &self,
        input: usize,
        first: Position,
        reason: &str,
    ) -> (DeadLetterKind, Event) {
        let origin = DeadLetterOrigin {
            pipeline: &self.settings.pipeline,
            stage: None,
            sink: None,
            plugin_version: None,
            plugin: None,
        };
        let kind = DeadLetterKind::Undecodable;
        let mut event = Event::new(self.partition, first, "");
        let letter = match self.time.as_ref().and_then(PartitionTime::sequence) {
            Some(merged) => {
                if let Some(read) = self.inputs.inputs.get(input) {
                    event.source = read.name.clone();
                }
                dead_letter_before_merge(&event, kind, reason, origin, merged)
            }
            None => dead_letter(&event, kind, reason, origin),
        };
        (kind, letter)
    }

    /// Refreshes the partition's consumer lag (metric and status) while no events come.
    fn report_idle_lag(&self) {
        let Some(lag) = self.inputs.lag() else {
            return;
        };
        let partition_label = self.partition.to_string();
        self.metrics.set(
            names::CONSUMER_LAG,
            &[
                ("pipeline", &*self.settings.pipeline),
                ("partition", partition_label.as_str()),
            ],
            lag as f64,
        );
        self.status.update(|s| s.lag = Some(lag));
    }

    /// Records a processed batch in the status registry and the metrics.
    fn batch_done(&self, started: std::time::Instant, events: u64, dead_letters: u64) {
        let pipeline = &*self.settings.pipeline;
        let partition_label = self.partition.to_string();
        let labels = [
            ("pipeline", pipeline),
            ("partition", partition_label.as_str()),
        ];
        self.metrics.observe(
            names::BATCH_SECONDS,
            &[("pipeline", pipeline)],
            started.elapsed().as_secs_f64(),
        );
        let lag = self.inputs.lag();
        if let Some(lag) = lag {
            self.metrics.set(names::CONSUMER_LAG, &labels, lag as f64);
        }
        let now = now_millis();
        self.status.update(|s| {
            s.position = self.position;
            s.events_in += events;
            s.dead_letters += dead_letters;
            s.lag = lag;
            s.last_batch_at = Some(now);
            if let Some(time) = self.max_event_time {
                s.max_event_time = Some(time);
            }
        });
        if let Some(time) = self.max_event_time {
            self.metrics.set(
                names::WATERMARK_DELAY,
                &labels,
                (now - time).max(0) as f64 / 1000.0,
            );
        }
    }

    /// Decodes a batch, runs it through the stages and hands the records to the sink writers.
    async fn process_batch(
        &mut self,
        input: usize,
        events: Vec<Event>,
        stage_inputs: &mut [Vec<Event>],
        output: &mut StageOutput,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let pipeline = self.settings.pipeline.clone();
        let mut dead_letters: Vec<(DeadLetterKind, Event)> = Vec::new();
        let origin = DeadLetterOrigin {
            pipeline: &pipeline,
            stage: None,
            sink: None,
            plugin_version: None,
            plugin: None,
        };

        // Decode: size limit and event time; what fails goes to the dead letters.
        let first_input = stage_inputs.first_mut();
        let Some(first_input) = first_input else {
            return Ok(());
        };
        first_input.reserve(events.len());
        let (source, field, decoded) = match self.inputs.inputs.get(input) {
            Some(read) => (
                read.name.clone(),
                read.event_time_field.clone(),
                read.event_time_decoded,
            ),
            None => (self.settings.source.clone(), None, false),
        };
        for mut event in events {
            event.source = source.clone();
            // The source read this event's time in the scan that found its key.
            let field = if decoded && event.event_time.is_some() {
                None
            } else {
                field.as_deref()
            };
            match self.decode(&mut event, field) {
                Ok(()) => {
                    let time = event.time();
                    self.max_event_time = Some(self.max_event_time.map_or(time, |t| t.max(time)));
                    match &mut self.time {
                        Some(time) => time.admit(input, event),
                        None => first_input.push(event),
                    }
                }
                Err((kind, reason)) => {
                    let merged = self.time.as_ref().and_then(PartitionTime::sequence);
                    let letter = match merged {
                        Some(merged) => {
                            dead_letter_before_merge(&event, kind, &reason, origin, merged)
                        }
                        None => dead_letter(&event, kind, &reason, origin),
                    };
                    dead_letters.push((kind, letter));
                }
            }
        }
        if let Some(time) = &mut self.time {
            time.after_batch();
        }
        self.deliver(dead_letters, stage_inputs, output, report)
            .await
    }

    /// A quiet source stopped holding the others back (its idle mark is set): the mark is
    /// checkpointed first, then what it lets go is numbered, written and checkpointed, so that a
    /// crash in between repeats the same release (the checkpoint holds the marks and the events
    /// waiting in the merge) and each sink finds its outputs written once.
    async fn release_quiet(
        &mut self,
        stage_inputs: &mut [Vec<Event>],
        output: &mut StageOutput,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        self.state_dirty = true;
        self.checkpoint().await?;
        self.release_marked(stage_inputs, output, report).await
    }

    /// Releases what the idle marks of several sources let go, and writes and checkpoints it.
    async fn release_marked(
        &mut self,
        stage_inputs: &mut [Vec<Event>],
        output: &mut StageOutput,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        if !self.inputs.several()
            || !self
                .time
                .as_mut()
                .is_some_and(PartitionTime::release_marked)
        {
            return Ok(());
        }
        self.deliver(Vec::new(), stage_inputs, output, report)
            .await?;
        self.position = self.time.as_ref().and_then(PartitionTime::sequence);
        self.state_dirty = true;
        self.checkpoint().await
    }

    /// Moves an idle partition's watermark to `target` without a new event. The decision comes
    /// from other partitions or the wall clock, which a replay would not repeat: it is
    /// checkpointed first, then what it closes is written and checkpointed, so that a crash in
    /// between repeats this advance and each sink finds its outputs written once. An advance
    /// that closes nothing leaves its state to the next regular checkpoint.
    async fn idle_advance(
        &mut self,
        target: i64,
        stage_inputs: &mut [Vec<Event>],
        output: &mut StageOutput,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let Some(position) = self.position else {
            return Ok(());
        };
        // Repeating one restored from the checkpoint: it is saved already, and saving again would
        // tell the sinks that its records are new before they know whether they hold them.
        if self.pending_idle_advance.is_none() {
            self.pending_idle_advance = Some(target);
            self.state_dirty = true;
            self.checkpoint().await?;
        }
        self.pending_idle_advance = None;
        self.state_dirty = true;
        let records = |report: &WorkerReport| report.records_out.values().sum::<u64>();
        let before = records(report);
        if self
            .time
            .as_mut()
            .is_some_and(|time| time.advance_idle(target, position))
        {
            self.deliver(Vec::new(), stage_inputs, output, report)
                .await?;
            if self.inputs.several() {
                self.position = self.time.as_ref().and_then(PartitionTime::sequence);
            }
        }
        // Nothing written (nothing closed yet): the next regular checkpoint covers the new
        // watermark, and a crash before it repeats an advance that writes nothing.
        if records(report) == before {
            return Ok(());
        }
        self.checkpoint().await
    }

    /// The input has ended: the clock releases everything and closes everything downstream, at
    /// the position just after the partition's last one (records that time alone produces must
    /// not share a position with records already written; a bounded input has no next event).
    fn time_finished(&mut self) -> bool {
        let (Some(time), Some(position)) = (&mut self.time, self.position) else {
            return false;
        };
        time.finish(position.saturating_add(1));
        self.state_dirty = true;
        true
    }

    /// Runs what is waiting through the stages (the clock's released events and marks first) and
    /// hands the records to the sink writers; `dead_letters` are those found before the stages.
    async fn deliver(
        &mut self,
        mut dead_letters: Vec<(DeadLetterKind, Event)>,
        stage_inputs: &mut [Vec<Event>],
        output: &mut StageOutput,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let marks = self.take_clock_output(stage_inputs, &mut dead_letters, report);
        // Stages, in order; outputs go to sinks or to later stages' inputs.
        for index in 0..self.stages.len() {
            self.run_stage(index, stage_inputs, &marks, output, &mut dead_letters)?;
        }
        self.write_to_sinks(&mut dead_letters, report).await?;
        self.write_dead_letters(dead_letters, report).await
    }

    /// Moves what the clock released to the first stage's input and its dropped events to the
    /// dead letters, counts what its policy adjusted or dropped, and returns its marks.
    fn take_clock_output(
        &mut self,
        stage_inputs: &mut [Vec<Event>],
        dead_letters: &mut Vec<(DeadLetterKind, Event)>,
        report: &mut WorkerReport,
    ) -> Vec<Mark> {
        let mut marks: Vec<Mark> = Vec::new();
        let Some(time) = &mut self.time else {
            return marks;
        };
        let origin = DeadLetterOrigin {
            pipeline: &self.settings.pipeline,
            stage: None,
            sink: None,
            plugin_version: None,
            plugin: None,
        };
        if self.source_routes.is_empty() {
            if let Some(first_input) = stage_inputs.first_mut() {
                first_input.append(&mut time.admitted.released);
            }
        } else {
            for event in time.admitted.released.drain(..) {
                let routes = self
                    .inputs
                    .inputs
                    .iter()
                    .position(|i| i.name == event.source)
                    .and_then(|index| self.source_routes.get(index));
                let Some((last, rest)) = routes.and_then(|r| r.split_last()) else {
                    continue;
                };
                for destination in rest {
                    route(
                        *destination,
                        event.clone(),
                        &mut self.sinks,
                        stage_inputs,
                        &mut self.right_inputs,
                    );
                }
                route(
                    *last,
                    event,
                    &mut self.sinks,
                    stage_inputs,
                    &mut self.right_inputs,
                );
            }
        }
        // With several sources, a source's clock drops events before their merge numbers them.
        let merged = time.sequence();
        for late in time.admitted.dropped.drain(..) {
            let (event, kind, reason) = (&late.event, DeadLetterKind::Late, &late.reason);
            let letter = match merged {
                Some(merged) => dead_letter_before_merge(event, kind, reason, origin, merged),
                None => dead_letter(event, kind, reason, origin),
            };
            dead_letters.push((kind, letter));
        }
        marks.append(&mut time.admitted.marks);
        let admitted = &time.admitted;
        report.late_adjusted += admitted.adjusted_out_of_order + admitted.adjusted_late_arrival;
        report.late_dropped += admitted.dropped_out_of_order + admitted.dropped_late_arrival;
        time.admitted.clear();
        marks
    }

    /// Runs stage `index` on what waits for it (both inputs and `marks`), counts it, and sends
    /// its records on: to their routes, or, refused or unrouted, to the dead letters.
    fn run_stage(
        &mut self,
        index: usize,
        stage_inputs: &mut [Vec<Event>],
        marks: &[Mark],
        output: &mut StageOutput,
        dead_letters: &mut Vec<(DeadLetterKind, Event)>,
    ) -> Result<(), WorkerError> {
        let mut input = std::mem::take(&mut stage_inputs[index]);
        let mut right = self
            .right_inputs
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or_default();
        if input.is_empty() && right.is_empty() && marks.is_empty() {
            stage_inputs[index] = input;
            return Ok(());
        }
        if index > 0 {
            // Records from several upstream stages: keep partition order for stateful stages.
            // (The sort is stable: events the clock released together keep event-time order.)
            input.sort_by_key(|e| e.position);
            right.sort_by_key(|e| e.position);
        }
        output.clear();
        let events_in = input.len() + right.len();
        self.call_stage(index, &input, right, marks, output)?;
        self.count_stage(index, events_in, output.emitted.len());
        self.route_emitted(index, output, stage_inputs, dead_letters);
        self.dead_letter_rejected(index, output, dead_letters);
        input.clear();
        stage_inputs[index] = input;
        Ok(())
    }

    /// Calls stage `index` as one batch: its left input, its right input (whose buffer goes back
    /// for the next batch), then the marks.
    fn call_stage(
        &mut self,
        index: usize,
        input: &[Event],
        mut right: Vec<Event>,
        marks: &[Mark],
        output: &mut StageOutput,
    ) -> Result<(), WorkerError> {
        let slot = &mut self.stages[index];
        // The stage's calls below are one batch: it switches plugin versions only here.
        slot.stage.batch_boundary();
        if !input.is_empty() {
            run_blocking(|| slot.stage.process(input, output))?;
        }
        if !right.is_empty() {
            run_blocking(|| slot.stage.process_right(&right, output))?;
            right.clear();
            if let Some(slot) = self.right_inputs.get_mut(index) {
                *slot = right;
            }
        }
        let slot = &mut self.stages[index];
        if !marks.is_empty() {
            run_blocking(|| slot.stage.watermarks(marks, output))?;
        }
        Ok(())
    }

    /// Counts what stage `index` took in and emitted, and adds its plugin's own counters.
    fn count_stage(&mut self, index: usize, events_in: usize, emitted: usize) {
        let pipeline = &*self.settings.pipeline;
        let slot = &mut self.stages[index];
        let stage_name = slot.stage.name().clone();
        let partition_label = self.partition.to_string();
        let stage_labels = [
            ("pipeline", pipeline),
            ("stage", &*stage_name),
            ("partition", partition_label.as_str()),
        ];
        self.metrics
            .add(names::STAGE_EVENTS_IN, &stage_labels, events_in as u64);
        self.metrics
            .add(names::STAGE_RECORDS_OUT, &stage_labels, emitted as u64);
        for (name, plugin_counter) in slot.stage.take_counters() {
            self.metrics.add(
                names::PLUGIN_COUNTER,
                &[
                    ("pipeline", pipeline),
                    ("stage", &stage_name),
                    ("name", &name),
                ],
                plugin_counter,
            );
        }
    }

    /// Sends each record stage `index` emitted to every destination of its output; a record
    /// sent to an output with no route becomes a dead letter.
    fn route_emitted(
        &mut self,
        index: usize,
        output: &mut StageOutput,
        stage_inputs: &mut [Vec<Event>],
        dead_letters: &mut Vec<(DeadLetterKind, Event)>,
    ) {
        let slot = &self.stages[index];
        let stage_name = slot.stage.name().clone();
        let running_version = slot.stage.running_version();
        let letter_plugin = LetterPlugin::of(slot.stage.as_ref());
        for (target, record) in output.emitted.drain(..) {
            let Some(destinations) = slot.routes.get(&target) else {
                let reason = format!(
                    "stage `{stage_name}` emitted to output `{target}`, which has no route in the pipeline configuration"
                );
                // The version that made the record, if it says; else the one running.
                let version =
                    crate::stage::labelled_version(&record).or(running_version.as_deref());
                let at = DeadLetterOrigin {
                    pipeline: &self.settings.pipeline,
                    stage: Some(&stage_name),
                    sink: None,
                    plugin_version: version,
                    plugin: letter_plugin.as_ref(),
                };
                dead_letters.push((
                    DeadLetterKind::Unrouted,
                    dead_letter(&record, DeadLetterKind::Unrouted, &reason, at),
                ));
                continue;
            };
            let Some((last, rest)) = destinations.split_last() else {
                continue;
            };
            for destination in rest {
                route(
                    *destination,
                    record.clone(),
                    &mut self.sinks,
                    stage_inputs,
                    &mut self.right_inputs,
                );
            }
            route(
                *last,
                record,
                &mut self.sinks,
                stage_inputs,
                &mut self.right_inputs,
            );
        }
    }

    /// Turns the events stage `index` refused into dead letters of their kind.
    fn dead_letter_rejected(
        &self,
        index: usize,
        output: &mut StageOutput,
        dead_letters: &mut Vec<(DeadLetterKind, Event)>,
    ) {
        let stage_name = self.stages[index].stage.name();
        let letter_plugin = LetterPlugin::of(self.stages[index].stage.as_ref());
        for rejected in output.rejected.drain(..) {
            let kind = DeadLetterKind::from(rejected.kind);
            let at = DeadLetterOrigin {
                pipeline: &self.settings.pipeline,
                stage: Some(stage_name),
                sink: None,
                plugin_version: rejected.plugin_version.as_deref(),
                plugin: letter_plugin.as_ref(),
            };
            dead_letters.push((
                kind,
                dead_letter(&rejected.event, kind, &rejected.reason, at),
            ));
        }
    }

    /// Hands each sink (but the dead-letter sink) the records waiting for it; records a sink
    /// refuses become dead letters too.
    async fn write_to_sinks(
        &mut self,
        dead_letters: &mut Vec<(DeadLetterKind, Event)>,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let pipeline = &*self.settings.pipeline;
        let partition_label = self.partition.to_string();
        for (index, slot) in self.sinks.iter_mut().enumerate() {
            if index == self.dead_letter_sink || slot.pending.is_empty() {
                continue;
            }
            let records = std::mem::take(&mut slot.pending);
            let count = records.len() as u64;
            let refused = slot.writer.write(records).await?;
            let written = count - refused.len() as u64;
            *report.records_out.entry(slot.name.to_string()).or_default() += written;
            self.metrics.add(
                names::RECORDS_OUT,
                &[
                    ("pipeline", pipeline),
                    ("partition", &partition_label),
                    ("sink", &slot.name),
                ],
                written,
            );
            for refusal in refused {
                let at = DeadLetterOrigin {
                    pipeline,
                    stage: None,
                    sink: Some(&slot.name),
                    plugin_version: None,
                    plugin: None,
                };
                dead_letters.push((
                    DeadLetterKind::SinkRefused,
                    dead_letter(
                        &refusal.record,
                        DeadLetterKind::SinkRefused,
                        &refusal.reason,
                        at,
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Hands the dead-letter sink the records routed to it and `dead_letters`, counting each
    /// kind; a record it refuses has nowhere further to go and is logged.
    async fn write_dead_letters(
        &mut self,
        dead_letters: Vec<(DeadLetterKind, Event)>,
        report: &mut WorkerReport,
    ) -> Result<(), WorkerError> {
        let pipeline = &*self.settings.pipeline;
        let partition_label = self.partition.to_string();
        let slot = &mut self.sinks[self.dead_letter_sink];
        // Records a pipeline routes to the dead-letter sink on purpose count as "routed".
        let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
        if !slot.pending.is_empty() {
            kinds.insert("routed", slot.pending.len() as u64);
        }
        let mut records = std::mem::take(&mut slot.pending);
        for (kind, record) in dead_letters {
            *kinds.entry(kind.label()).or_default() += 1;
            records.push(record);
        }
        if records.is_empty() {
            return Ok(());
        }
        for (kind, count) in kinds {
            self.metrics.add(
                names::DEAD_LETTERS,
                &[
                    ("pipeline", pipeline),
                    ("partition", &partition_label),
                    ("kind", kind),
                ],
                count,
            );
        }
        report.dead_letters += records.len() as u64;
        let count = records.len() as u64;
        let refused = slot.writer.write(records).await?;
        *report.records_out.entry(slot.name.to_string()).or_default() +=
            count - refused.len() as u64;
        for refusal in refused {
            // Nowhere further to send it: say so loudly, with the record, rather than drop it silently.
            tracing::error!(
                pipeline = %pipeline, partition = self.partition, sink = %slot.name,
                position = refusal.record.position, reason = %refusal.reason,
                record = %String::from_utf8_lossy(&refusal.record.body),
                "the dead-letter sink refused a record"
            );
        }
        Ok(())
    }

    /// Checks the size limit and reads the event time.
    fn decode(
        &self,
        event: &mut Event,
        field: Option<&str>,
    ) -> Result<(), (DeadLetterKind, String)> {
        if event.body.len() > self.settings.max_event_bytes {
            return Err((
                DeadLetterKind::Oversized,
                format!(
                    "event of {} bytes exceeds the pipeline's max_event_bytes of {}",
                    event.body.len(),
                    self.settings.max_event_bytes
                ),
            ));
        }
        if let Some(field) = field {
            match top_level_field(&event.body, field) {
                Err(reason) => return Err((DeadLetterKind::Malformed, reason)),
                Ok(None) => {
                    return Err((
                        DeadLetterKind::EventTime,
                        format!("missing event-time field `{field}`"),
                    ));
                }
                Ok(Some(value)) => {
                    let millis = event_time_millis(&value).map_err(|reason| {
                        (
                            DeadLetterKind::EventTime,
                            format!("field `{field}`: {reason}"),
                        )
                    })?;
                    event.event_time = Some(millis);
                }
            }
        }
        Ok(())
    }

    /// Adds every stage's state to `checkpoint`: for a stage that checkpoints incrementally, its
    /// keyed state's changes as a state file, or a base, returned to be written in the
    /// checkpoint's task; else its snapshot.
    fn add_stage_states(&mut self, checkpoint: &mut Checkpoint) -> Vec<PendingBase> {
        self.incremental.begin();
        let mut bases = Vec::new();
        for slot in &mut self.stages {
            let name = slot.stage.name().to_string();
            let write = self.incremental.next_write(&name);
            let changes = if write == StateWrite::Base {
                if let Some(base) = slot.stage.begin_state_base() {
                    let file =
                        self.incremental
                            .add_later(checkpoint, &name, write, base.estimated_size());
                    bases.push(PendingBase {
                        stage: name,
                        file,
                        write: Arc::new(base),
                    });
                    continue;
                }
                None
            } else {
                slot.stage.take_state_changes(false)
            };
            match changes {
                Some(bytes) => self.incremental.add(checkpoint, &name, write, bytes),
                None => {
                    checkpoint.stages.insert(name, slot.stage.snapshot());
                }
            }
        }
        bases
    }

    /// Flushes every sink, then saves the checkpoint covering what they made durable; returns
    /// once it is saved.
    async fn checkpoint(&mut self) -> Result<(), WorkerError> {
        self.start_checkpoint().await?;
        self.finish_checkpoint().await
    }

    /// Starts a checkpoint at the current position, once the one in flight (if any) is saved:
    /// takes the stages' state and marks what each sink's flush must cover here, then leaves the
    /// flushes (a Delta commit, Kafka acknowledgements) and the save of the record to a task of
    /// their own, so that the partition goes on reading meanwhile. [`Self::finish_checkpoint`]
    /// takes the outcome.
    async fn start_checkpoint(&mut self) -> Result<(), WorkerError> {
        self.finish_checkpoint().await?;
        let Some(position) = self.position else {
            return Ok(());
        };
        if self.checkpointed == Some(position) && !self.state_dirty {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let several = self.inputs.several();
        let single_offset = match self.inputs.inputs.first() {
            Some(input) if !several => input.reader.source_offset(position),
            _ => None,
        };
        let mut checkpoint = Checkpoint {
            position: Some(position),
            written_at: now_millis(),
            source_offset: single_offset.or_else(|| {
                (!several && self.checkpointed == Some(position))
                    .then(|| self.checkpointed_offset.clone())
                    .flatten()
            }),
            sources: if several {
                self.inputs.positions()
            } else {
                BTreeMap::new()
            },
            ..Checkpoint::default()
        };
        let mut flushes = Vec::with_capacity(self.sinks.len());
        for slot in &mut self.sinks {
            flushes.push((slot.name.to_string(), slot.writer.begin_flush().await?));
        }
        let bases = self.add_stage_states(&mut checkpoint);
        if let Some(time) = &self.time {
            let (entry, state) = time.snapshot();
            checkpoint.stages.insert(entry.to_owned(), state);
        }
        if let Some(target) = self.pending_idle_advance {
            checkpoint
                .stages
                .insert(IDLE_ADVANCE_STATE.to_owned(), target.to_be_bytes().to_vec());
        }
        // What changes from here on is the next checkpoint's.
        self.state_dirty = false;
        let store = Arc::clone(&self.checkpoints);
        let (pipeline, partition) = (Arc::clone(&self.settings.pipeline), self.partition);
        let base_writes: Vec<_> = bases
            .iter()
            .map(|base| {
                let (file, write) = (base.file.clone(), Arc::clone(&base.write));
                tokio::task::spawn_blocking(move || (file, write.write()))
            })
            .collect();
        let location = self.checkpoints.describe();
        let task = tokio::spawn(async move {
            let flushed = futures::future::join_all(
                flushes
                    .into_iter()
                    .map(|(name, flush)| async move { (name, flush.await) }),
            )
            .await;
            for (name, progress) in flushed {
                checkpoint.sinks.insert(name, progress?);
            }
            for written in base_writes {
                let (file, bytes) = written.await.map_err(|failed| {
                    task_failed(
                        &location,
                        format!("writing a state base of partition {partition} failed: {failed}"),
                    )
                })?;
                checkpoint.state_writes.push((file, bytes));
            }
            store.save(&pipeline, partition, &checkpoint).await?;
            Ok(checkpoint)
        });
        self.in_flight = Some(CheckpointInFlight {
            task,
            position,
            several,
            started,
            paused: started.elapsed(),
            bases,
        });
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any, and moves the partition's checkpointed
    /// position to it.
    async fn finish_checkpoint(&mut self) -> Result<(), WorkerError> {
        let Some(mut in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let (position, several, started, paused) = (
            in_flight.position,
            in_flight.several,
            in_flight.started,
            in_flight.paused,
        );
        let mut checkpoint = match (&mut in_flight.task).await {
            Ok(saved) => saved?,
            Err(failed) => {
                return Err(task_failed(
                    &self.checkpoints.describe(),
                    format!(
                        "the checkpoint task of partition {} failed: {failed}",
                        self.partition
                    ),
                ));
            }
        };
        self.incremental.saved();
        self.adopt_bases(std::mem::take(&mut in_flight.bases), &checkpoint);
        if self.incremental.take_sweep(self.settings.state_sweep_after) {
            self.sweep_leftover_state_files().await;
        }
        self.checkpointed = Some(position);
        self.checkpointed_offset = checkpoint.source_offset.take();
        if several {
            self.inputs.checkpointed(&checkpoint.sources);
        } else if let Some(input) = self.inputs.inputs.first_mut() {
            input.reader.checkpointed(position);
        }
        for slot in &mut self.sinks {
            slot.writer.checkpointed(position);
        }
        self.status.update(|s| {
            s.checkpointed = Some(position);
            s.checkpoint_written_at = Some(checkpoint.written_at);
        });
        let partition_label = self.partition.to_string();
        let labels = [
            ("pipeline", &*self.settings.pipeline),
            ("partition", partition_label.as_str()),
        ];
        self.metrics.add(names::CHECKPOINTS, &labels, 1);
        self.metrics
            .set(names::CHECKPOINT_POSITION, &labels, position as f64);
        tracing::debug!(
            pipeline = %self.settings.pipeline, partition = self.partition, position,
            elapsed_ms = started.elapsed().as_millis() as u64,
            paused_ms = paused.as_millis() as u64, "checkpoint saved"
        );
        Ok(())
    }

    /// The stages take the bases `checkpoint` saved in place of the layers they were written
    /// from; what they let go of (an old base, millions of frozen keys) is freed on another
    /// thread.
    fn adopt_bases(&mut self, bases: Vec<PendingBase>, checkpoint: &Checkpoint) {
        if bases.is_empty() {
            return;
        }
        let mut replaced = Vec::with_capacity(bases.len());
        for base in &bases {
            let bytes = checkpoint
                .state_writes
                .iter()
                .find(|(file, _)| *file == base.file)
                .map(|(_, bytes)| bytes.clone());
            let stage = self
                .stages
                .iter_mut()
                .find(|slot| **slot.stage.name() == *base.stage);
            if let (Some(bytes), Some(slot)) = (bytes, stage) {
                replaced.push(slot.stage.adopt_state_base(&base.write, bytes));
            }
        }
        tokio::task::spawn_blocking(move || drop((replaced, bases)));
    }

    /// Deletes the state files earlier runs of this partition left behind (see
    /// [`IncrementalState::take_sweep`]). Failures are logged: no record lists those files.
    async fn sweep_leftover_state_files(&mut self) {
        let (pipeline, partition) = (&*self.settings.pipeline, self.partition);
        let listed = match self.checkpoints.list_state_files(pipeline, partition).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(pipeline, partition, error = %e,
                    "cannot list the state files earlier runs left behind");
                return;
            }
        };
        let leftovers = self.incremental.leftovers(listed);
        let mut deleted = 0;
        for name in &leftovers {
            match self
                .checkpoints
                .delete_state_file(pipeline, partition, name)
                .await
            {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(pipeline, partition, file = %name, error = %e,
                    "cannot delete a state file an earlier run left behind"),
            }
        }
        if deleted > 0 {
            tracing::info!(
                pipeline,
                partition,
                deleted,
                "deleted the state files earlier runs left behind"
            );
        }
    }
}

/// Runs a stage's batch, which is CPU-bound and may take up to the call deadline, telling a
/// multi-threaded tokio runtime that this thread blocks: other tasks move to other threads, and
/// WASI host calls that wait (a guest writing to stdout or stderr) can enter the runtime.
fn run_blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn route(
    destination: Destination,
    record: Event,
    sinks: &mut [SinkSlot],
    stage_inputs: &mut [Vec<Event>],
    right_inputs: &mut [Vec<Event>],
) {
    match destination {
        Destination::Sink(index) => {
            if let Some(slot) = sinks.get_mut(index) {
                slot.pending.push(record);
            }
        }
        Destination::Stage(index) => {
            if let Some(input) = stage_inputs.get_mut(index) {
                input.push(record);
            }
        }
        Destination::StageRight(index) => {
            if let Some(input) = right_inputs.get_mut(index) {
                input.push(record);
            }
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
pub(crate) mod tests;
