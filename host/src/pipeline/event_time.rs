//! A partition worker's event time: its [`EventClock`], its entry in the pipeline watermark, idle
//! detection, and the metrics of all three.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{LatePolicy, PipelineConfig};
use crate::event::{Event, PartitionId, Position};
use crate::metrics::{Metrics, names};
use crate::time::{Admitted, EventClock, WatermarkHandle};

/// The checkpoint entry (among the stages' states) that holds the event clock. Stage names may
/// not start with `#`, so it cannot collide with one.
pub(crate) const EVENT_TIME_STATE: &str = "#event-time";

/// Whether a pipeline's events go through an event clock: it asks for event ordering, or one of
/// its stages works in event time (windows and joins need a watermark).
pub(crate) fn needs_clock(pipeline: &PipelineConfig) -> bool {
    pipeline
        .event_time
        .as_ref()
        .is_some_and(|t| t.orders_events())
        || pipeline.stages.iter().any(|s| s.is_time_based())
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
    pub(crate) partition: PartitionId,
}

impl PartitionTime {
    /// Takes one decoded event through the clock.
    pub(crate) fn admit(&mut self, event: Event) {
        self.last_event_at = Instant::now();
        self.clock.admit(event, &mut self.admitted);
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
        self.publish(false);
    }

    /// When a read found nothing: if the partition has been idle for the idle timeout, it stops
    /// holding the pipeline watermark back and follows it. Returns whether the watermark moved
    /// (marks and released events are then in `admitted`, attributed to `position`).
    pub(crate) fn on_idle(&mut self, position: Option<Position>) -> bool {
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

    fn publish(&self, idle: bool) {
        let watermark = self.clock.watermark();
        self.handle.publish(watermark, idle);
        let partition = self.partition.to_string();
        let labels = [("pipeline", &*self.pipeline), ("partition", &*partition)];
        if let Some(watermark) = watermark {
            self.metrics
                .set(names::WATERMARK, &labels, watermark as f64);
        }
        self.metrics.set(
            names::REORDER_BUFFERED,
            &labels,
            self.clock.buffered() as f64,
        );
        if let Some(pipeline_watermark) = self.handle.pipeline_watermark() {
            self.metrics.set(
                names::PIPELINE_WATERMARK,
                &[("pipeline", &*self.pipeline)],
                pipeline_watermark as f64,
            );
        }
    }
}
