//! Event time: per-partition watermarks, the reorder buffer, late-event policies and the pipeline
//! watermark.
//!
//! Each partition worker owns an [`EventClock`]. Every decoded event goes through it, in arrival
//! order:
//!
//! 1. **Late arrival** (optional): an event enqueued more than the late-arrival tolerance after its
//!    event time is adjusted (its time becomes enqueued time − tolerance) or dropped.
//! 2. **Out of order**: the partition's watermark is its newest event time minus the out-of-order
//!    tolerance. An event behind the watermark is adjusted (its time becomes the watermark) or
//!    dropped. Other events wait in the reorder buffer until the watermark passes them, and leave
//!    it in event-time order.
//!
//! Every adjusted or dropped event is counted; dropped events go to the dead-letter sink with the
//! kind `late`. The stages then see the partition's events in event-time order, followed by
//! [`Mark`]s that say how far the watermark has advanced, and at which source position: a window
//! closes, or a join gives up on a match, at the mark whose watermark passes its end, and what it
//! emits carries that mark's position.
//!
//! **Positions.** An event held back in the reorder buffer takes effect at the position of the
//! event whose arrival released it, and carries that position on: the records of a partition
//! therefore reach the sinks in non-decreasing position order, which is what Delta's exactly-once
//! replay (skip what the table's transaction version covers) relies on. Everything the clock
//! decides depends only on the partition's events, so a replay after a crash decides the same.
//!
//! **Disorder.** Events behind the watermark miss the windows and joins they belong to. A
//! [`DisorderWatch`] per partition compares their share with the pipeline's
//! `event_time.max_out_of_order_share` (default 1%): over it, the worker warns once, names the
//! setting, and counts it in the metrics; the end-of-run summary says it again.
//!
//! **Pipeline watermark.** Each worker publishes its watermark in the pipeline's
//! [`PipelineWatermarks`]: the pipeline watermark is the minimum over the partitions this process
//! runs, leaving out partitions idle for longer than the idle timeout. An idle partition advances
//! its own watermark to the pipeline's, so its windows and joins close although it receives
//! nothing. That is one decision taken from the wall clock (see the README's *Event time*
//! section for what it means after a crash).
//!
//! **Quiet pipelines** (Stream Analytics semantics). When every partition has been idle for the
//! idle timeout, nothing moves the pipeline watermark any more; Stream Analytics then lets it
//! follow the wall clock less the late-arrival tolerance, so the last windows and joins of a
//! stream that went quiet close ([`quiet_watermark`]). That is the other decision taken from the
//! wall clock.

mod clock;
mod merge;
mod quiet;
mod watermarks;

pub use clock::{
    ASA_LATE_ARRIVAL, Admitted, ClockSettings, DEFAULT_MAX_OUT_OF_ORDER_SHARE, DISORDER_MIN_EVENTS,
    Disorder, DisorderWatch, EventClock, LateEvent, Tolerance,
};
pub use merge::{SourceMark, SourceMerge, partition_watermark};
pub use quiet::{QUIET_STEP_MILLIS, quiet_watermark};
pub use watermarks::{PipelineWatermarks, WatermarkHandle};

use crate::event::Position;

/// The watermark of a partition advanced to `watermark` when the event at `position` arrived (or,
/// for an idle partition or the end of the input, at that position without a new event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Event time, in milliseconds since the Unix epoch, up to which the partition is complete:
    /// no event with an earlier time will reach the stages any more.
    pub watermark: i64,
    /// The position that whatever this mark closes is attributed to.
    pub position: Position,
}

/// The watermark that closes everything: a bounded input has ended.
pub const END_OF_INPUT: i64 = i64::MAX;

/// `millis` as RFC 3339 text with milliseconds (UTC), for messages and window bounds.
pub fn format_millis(millis: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{millis} ms"),
    }
}

/// A duration in milliseconds as short text (`90s`, `1500ms`), for messages.
pub fn format_duration(millis: i64) -> String {
    if millis % 60_000 == 0 && millis != 0 {
        format!("{}m", millis / 60_000)
    } else if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A share (0 to 1) as a percentage for messages: `1%`, `12.5%`, `0.25%`.
pub fn format_share(share: f64) -> String {
    let percent = share * 100.0;
    if (percent - percent.round()).abs() < 0.005 {
        format!("{percent:.0}%")
    } else if percent < 1.0 {
        format!("{percent:.2}%")
    } else {
        format!("{percent:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::format_share;

    #[test]
    fn shares_read_as_percentages() {
        assert_eq!(format_share(0.01), "1%");
        assert_eq!(format_share(0.125), "12.5%");
        assert_eq!(format_share(0.0025), "0.25%");
        assert_eq!(format_share(0.1), "10%");
        assert_eq!(format_share(0.0), "0%");
        assert_eq!(format_share(1.0), "100%");
    }
}
