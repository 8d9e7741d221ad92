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
};

/// The checkpoint entry (among the stages' states) that holds the event clock. Stage names may
/// not start with `#`, so it cannot collide with one.
pub(crate) const EVENT_TIME_STATE: &str = "#event-time";

/// The checkpoint entry that holds the merge of a pipeline with several sources.
pub(crate) const SOURCES_TIME_STATE: &str = "#sources-time";

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

/// One partition's event time.
pub(crate) struct PartitionTime {
    pub(crate) clock: EventClock,
    pub(crate) handle: WatermarkHandle,
    pub(crate) idle_timeout: Option<Duration>,
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
    /// holding the pipeline watermark back and follows it. Returns whether the watermark moved
    /// (marks and released events are then in `admitted`, attributed to `position`).
    pub(crate) fn on_idle(&mut self, position: Option<Position>) -> bool {
        if self.sources.is_some() {
            return self.sources_idle();
        }
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        if self.last_event_at.elapsed() < timeout {
            return false;
        }
        self.publish(true);
        let (Some(pipeline_watermark), Some(position)) =
            (self.handle.pipeline_watermark(), position)
        else {
            return false;
        };
        if self
            .clock
            .watermark()
            .is_some_and(|own| own >= pipeline_watermark)
        {
            return false;
        }
        self.clock
            .advance_to(pipeline_watermark, position, &mut self.admitted);
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
                pipeline = %self.pipeline, partition = self.partition, watermark = pipeline_watermark,
                "idle partition follows the pipeline watermark"
            );
            self.publish(true);
        }
        advanced
    }

    /// With several sources, when a read found nothing: each source quiet for its idle timeout
    /// stops holding the partition back; when all are, the partition follows the pipeline
    /// watermark. Returns whether that released events or marks into `admitted`.
    fn sources_idle(&mut self) -> bool {
        let Some(sources) = &mut self.sources else {
            return false;
        };
        let mut moved = false;
        let mut all_idle = true;
        for (input, timeout) in sources.idle_timeouts.iter().enumerate() {
            let quiet = sources
                .last_event_at
                .get(input)
                .is_some_and(|at| timeout.is_some_and(|t| at.elapsed() >= t));
            if quiet {
                moved |= sources.merge.set_idle(input, true, &mut self.admitted);
            }
            all_idle &= quiet || sources.merge.is_idle(input);
        }
        if all_idle {
            self.publish(true);
            if let Some(pipeline_watermark) = self.handle.pipeline_watermark()
                && let Some(sources) = &mut self.sources
            {
                moved |= sources
                    .merge
                    .advance_to(pipeline_watermark, &mut self.admitted);
            }
        }
        if moved {
            self.publish(all_idle);
        }
        moved
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
