//! A partition worker's event time: its [`EventClock`], its entry in the pipeline watermark, idle
//! detection, the watch over events behind the watermark, and the metrics and warnings of all
//! four.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{LatePolicy, PipelineConfig};
use crate::event::{Event, PartitionId, Position};
use crate::metrics::{Metrics, names};
use crate::time::{
    Admitted, Disorder, DisorderWatch, EventClock, SourceMerge, WatermarkHandle, format_share,
    quiet_watermark,
};

/// The checkpoint entry (among the stages' states) that holds the event clock. Stage names may
/// not start with `#`, so it cannot collide with one.
pub(crate) const EVENT_TIME_STATE: &str = "#event-time";

/// The checkpoint entry that holds the merge of a pipeline with several sources.
pub(crate) const SOURCES_TIME_STATE: &str = "#sources-time";

/// The checkpoint entry of an idle advance decided but maybe not yet written: the watermark (8
/// bytes, big-endian). An idle advance is taken from the wall clock, so a replay would decide
/// another one; saved before its outputs are written, it is repeated as it was after a crash,
/// and the sinks recognise its outputs (see [`crate::sink::SinkWriter::checkpointed`]).
pub(crate) const IDLE_ADVANCE_STATE: &str = "#idle-advance";

/// The idle advance a checkpoint holds, if any.
pub(crate) fn pending_idle_advance(checkpoint: &crate::checkpoint::Checkpoint) -> Option<i64> {
    let bytes = checkpoint.stages.get(IDLE_ADVANCE_STATE)?;
    Some(i64::from_be_bytes(bytes.as_slice().try_into().ok()?))
}

/// Whether a pipeline's events go through an event clock: it asks for event ordering, or one of
/// its stages works in event time (windows and joins need a watermark).
pub(crate) fn needs_clock(pipeline: &PipelineConfig) -> bool {
    pipeline
        .event_time
        .as_ref()
        .is_some_and(|t| t.orders_events() || t.sources.values().any(|s| s.orders_events()))
        || pipeline.stages.iter().any(|s| s.is_time_based())
        // Several sources are merged in event time, deterministically (see `SourceMerge`).
        || pipeline.sources.len() > 1
}

/// The event time of a partition with several sources: their merge and when each was last heard.
pub(crate) struct SourcesTime {
    pub(crate) merge: SourceMerge,
    /// Each source's idle timeout.
    pub(crate) idle_timeouts: Vec<Option<Duration>>,
    /// When each source last delivered events.
    pub(crate) last_event_at: Vec<Instant>,
}

impl SourcesTime {
    /// Whether every source is idle (quiet for its idle timeout, or ended).
    fn all_idle(&self) -> bool {
        (0..self.idle_timeouts.len()).all(|input| self.merge.is_idle(input))
    }
}

/// One partition's event time.
pub(crate) struct PartitionTime {
    pub(crate) clock: EventClock,
    pub(crate) handle: WatermarkHandle,
    pub(crate) idle_timeout: Option<Duration>,
    /// Under Stream Analytics semantics, the late-arrival tolerance (ms): when every partition is
    /// idle, the watermark follows the wall clock less it (see [`quiet_watermark`]).
    pub(crate) quiet_late_arrival: Option<i64>,
    pub(crate) last_event_at: Instant,
    pub(crate) admitted: Admitted,
    pub(crate) metrics: Metrics,
    pub(crate) pipeline: Arc<str>,
    /// The source the partition's events come from (named in the disorder warning).
    pub(crate) source: Arc<str>,
    pub(crate) partition: PartitionId,
    /// How many of the partition's events arrived behind the watermark.
    pub(crate) disorder: DisorderWatch,
    /// With several sources: their clocks and merge (`clock` is then unused).
    pub(crate) sources: Option<SourcesTime>,
}

impl PartitionTime {
    /// Takes one decoded event of input `input` through its clock.
    pub(crate) fn admit(&mut self, input: usize, event: Event) {
        self.last_event_at = Instant::now();
        match &mut self.sources {
            Some(sources) => {
                if let Some(at) = sources.last_event_at.get_mut(input) {
                    *at = Instant::now();
                }
                sources.merge.admit(input, event, &mut self.admitted);
            }
            None => self.clock.admit(event, &mut self.admitted),
        }
    }

    /// The partition's watermark.
    pub(crate) fn watermark(&self) -> Option<i64> {
        match &self.sources {
            Some(sources) => sources.merge.watermark(),
            None => self.clock.watermark(),
        }
    }

    /// The last position of the merged sequence, with several sources.
    pub(crate) fn sequence(&self) -> Option<Position> {
        self.sources.as_ref().map(|s| s.merge.sequence())
    }

    /// The state for the checkpoint, under its entry name.
    pub(crate) fn snapshot(&self) -> (&'static str, Vec<u8>) {
        match &self.sources {
            Some(sources) => (SOURCES_TIME_STATE, sources.merge.snapshot()),
            None => (EVENT_TIME_STATE, self.clock.snapshot()),
        }
    }

    /// Input `input` (of several) has ended: its events are let go and it holds nothing back;
    /// after the last one, everything closes.
    pub(crate) fn source_ended(&mut self, input: usize) {
        if let Some(sources) = &mut self.sources {
            sources.merge.source_ended(input, &mut self.admitted);
            self.publish(false);
        }
    }

    /// After the events of a batch: counts what the policies did and publishes the watermark.
    pub(crate) fn after_batch(&mut self) {
        let partition = self.partition.to_string();
        let counts = [
            (
                "out_of_order",
                LatePolicy::Adjust,
                self.admitted.adjusted_out_of_order,
            ),
            (
                "out_of_order",
                LatePolicy::Drop,
                self.admitted.dropped_out_of_order,
            ),
            (
                "late_arrival",
                LatePolicy::Adjust,
                self.admitted.adjusted_late_arrival,
            ),
            (
                "late_arrival",
                LatePolicy::Drop,
                self.admitted.dropped_late_arrival,
            ),
        ];
        for (tolerance, policy, count) in counts {
            let policy = match policy {
                LatePolicy::Adjust => "adjust",
                LatePolicy::Drop => "drop",
            };
            self.metrics.add(
                names::LATE_EVENTS,
                &[
                    ("pipeline", &self.pipeline),
                    ("partition", &partition),
                    ("tolerance", tolerance),
                    ("policy", policy),
                ],
                count,
            );
        }
        // Adjusted events, whichever tolerance adjusted them, in one family of their own (the
        // family an operator looks for; `weir_late_events_total` breaks them down).
        self.metrics.add(
            names::ADJUSTED_EVENTS,
            &[("pipeline", &self.pipeline), ("partition", &partition)],
            self.admitted.adjusted_out_of_order + self.admitted.adjusted_late_arrival,
        );
        let verdict = self.disorder.record(&self.admitted);
        self.disorder_counted(verdict);
        self.publish(false);
    }

    /// The bounded input has ended: the clock releases everything and closes everything
    /// downstream at `position`, and the share of events behind the watermark is judged on
    /// whatever arrived.
    pub(crate) fn finish(&mut self, position: Position) {
        self.clock.finish(position, &mut self.admitted);
        let verdict = self.disorder.finish();
        self.disorder_counted(verdict);
    }

    /// Publishes the share of events behind the watermark, and warns when it has gone over the
    /// allowed one.
    fn disorder_counted(&self, verdict: Option<Disorder>) {
        let partition = self.partition.to_string();
        let labels = [
            ("pipeline", &*self.pipeline),
            ("source", &*self.source),
            ("partition", &*partition),
        ];
        self.metrics
            .set(names::OUT_OF_ORDER_SHARE, &labels, self.disorder.share());
        let Some(disorder) = verdict else {
            return;
        };
        self.metrics.add(names::OUT_OF_ORDER_WARNINGS, &labels, 1);
        tracing::warn!(
            pipeline = %self.pipeline,
            source = %self.source,
            partition = self.partition,
            share = %format_share(disorder.share),
            behind = disorder.behind,
            events = disorder.arrived,
            allowed = %format_share(disorder.max_share),
            setting = %format!("pipelines.{}.event_time.max_out_of_order_share", self.pipeline),
            "{} of the partition's events arrived behind its watermark and were adjusted or \
             dropped, more than the {} allowed: windows and joins miss them. Sort the input, \
             raise `event_time.out_of_order.tolerance` so that the reorder buffer waits for them, \
             or raise `event_time.max_out_of_order_share` to accept this share",
            format_share(disorder.share),
            format_share(disorder.max_share),
        );
    }

    /// When a read found nothing: if the partition has been idle for the idle timeout, it stops
    /// holding the pipeline watermark back and may follow it. Returns the watermark to advance to
    /// (then applied by [`PartitionTime::advance_idle`]), `None` when it stays. With several
    /// sources, the partition is idle when all of them are (see
    /// [`PartitionTime::release_quiet_sources`]).
    pub(crate) fn idle_target(&mut self, position: Option<Position>) -> Option<i64> {
        if let Some(sources) = &self.sources {
            if !sources.all_idle() {
                return None;
            }
        } else {
            let timeout = self.idle_timeout?;
            if self.last_event_at.elapsed() < timeout {
                return None;
            }
        }
        self.publish(true);
        position?;
        let target = self.followed_watermark()?;
        if self.watermark().is_some_and(|own| own >= target) {
            return None;
        }
        Some(target)
    }

    /// Advances the idle partition's watermark to `target`. Returns whether it moved (marks and
    /// released events are then in `admitted`, attributed to `position`).
    pub(crate) fn advance_idle(&mut self, target: i64, position: Position) -> bool {
        match &mut self.sources {
            Some(sources) => {
                sources.merge.advance_to(target, &mut self.admitted);
            }
            None => self.clock.advance_to(target, position, &mut self.admitted),
        }
        let advanced = !self.admitted.marks.is_empty();
        if advanced {
            self.metrics.add(
                names::IDLE_ADVANCES,
                &[
                    ("pipeline", &self.pipeline),
                    ("partition", &self.partition.to_string()),
                ],
                1,
            );
            tracing::debug!(
                pipeline = %self.pipeline, partition = self.partition, watermark = target,
                "idle partition follows the pipeline watermark"
            );
            self.publish(true);
        }
        advanced
    }

    /// With several sources: marks each source quiet for its idle timeout as idle, so that it
    /// stops holding the partition back. Returns whether a mark changed; what the marks let go is
    /// released by [`PartitionTime::release_marked`], after the worker has checkpointed the marks.
    /// Whether the whole partition then follows the pipeline is [`PartitionTime::idle_target`]'s
    /// decision.
    pub(crate) fn mark_quiet_sources(&mut self) -> bool {
        let Some(sources) = &mut self.sources else {
            return false;
        };
        let mut marked = false;
        for (input, timeout) in sources.idle_timeouts.iter().enumerate() {
            let quiet = sources
                .last_event_at
                .get(input)
                .is_some_and(|at| timeout.is_some_and(|t| at.elapsed() >= t));
            if quiet {
                marked |= sources.merge.mark_idle(input, true);
            }
        }
        marked
    }

    /// With several sources: releases what the sources' idle marks let go (also right after a
    /// restore, for marks checkpointed before a crash). Returns whether that released events or
    /// marks into `admitted`.
    pub(crate) fn release_marked(&mut self) -> bool {
        let Some(sources) = &mut self.sources else {
            return false;
        };
        let moved = sources.merge.release_pending(&mut self.admitted);
        let all_idle = sources.all_idle();
        if moved {
            self.publish(all_idle);
        }
        moved
    }

    /// The watermark an idle partition follows: the pipeline's, or, when the whole pipeline is
    /// quiet under Stream Analytics semantics, the wall clock less the late-arrival tolerance.
    fn followed_watermark(&self) -> Option<i64> {
        let pipeline = self.handle.pipeline_watermark();
        let quiet = self.quiet_late_arrival.and_then(|late| {
            quiet_watermark(
                crate::event::now_millis(),
                late,
                self.handle.every_partition_idle(),
                pipeline,
            )
        });
        quiet.or(pipeline)
    }

    fn publish(&self, idle: bool) {
        let watermark = self.watermark();
        self.handle.publish(watermark, idle);
        let partition = self.partition.to_string();
        let labels = [("pipeline", &*self.pipeline), ("partition", &*partition)];
        if let Some(watermark) = watermark {
            self.metrics
                .set(names::WATERMARK, &labels, watermark as f64);
        }
        let buffered = match &self.sources {
            Some(sources) => sources.merge.buffered(),
            None => self.clock.buffered(),
        };
        self.metrics
            .set(names::REORDER_BUFFERED, &labels, buffered as f64);
        if let Some(pipeline_watermark) = self.handle.pipeline_watermark() {
            self.metrics.set(
                names::PIPELINE_WATERMARK,
                &[("pipeline", &*self.pipeline)],
                pipeline_watermark as f64,
            );
        }
    }
}
