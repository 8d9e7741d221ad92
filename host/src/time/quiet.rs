//! Time that advances when input stops: Stream Analytics' watermark on a quiet stream.
//!
//! Stream Analytics keeps moving time with the wall clock when no input arrives: its watermark is
//! then the wall clock less the late-arrival tolerance. That is safe because the late-arrival
//! policy already ties every event to its arrival: an event arriving at `now` or later has, after
//! the policy, a time of at least `now − tolerance`, so no later event falls behind such a
//! watermark. Pure code: the wall clock and the registry's verdict come in as plain values.

/// The wall-clock watermark moves in whole steps of this many milliseconds (on multiples of it
/// since the Unix epoch): a quiet partition then advances, and checkpoints, at most once a second
/// rather than at every empty read.
pub const QUIET_STEP_MILLIS: i64 = 1_000;

/// The watermark a quiet pipeline's partition advances to, or `None` to leave it where it is:
/// the wall clock less the late-arrival tolerance, rounded down to a [`QUIET_STEP_MILLIS`] step.
///
/// - `now`: the wall clock, in milliseconds since the Unix epoch;
/// - `late_arrival`: the pipeline's late-arrival tolerance, in milliseconds (Stream Analytics
///   semantics always have one, 5 s by default);
/// - `every_partition_idle`: whether every partition of the pipeline that this process runs has
///   been without events for its idle timeout (one busy partition still drives time);
/// - `current`: the watermark the partition would follow otherwise (the pipeline watermark).
///
/// The wall clock wins only when it is later than `current`: time never goes back.
pub fn quiet_watermark(
    now: i64,
    late_arrival: i64,
    every_partition_idle: bool,
    current: Option<i64>,
) -> Option<i64> {
    if !every_partition_idle {
        return None;
    }
    let wall = now
        .saturating_sub(late_arrival.max(0))
        .div_euclid(QUIET_STEP_MILLIS)
        .saturating_mul(QUIET_STEP_MILLIS);
    current.is_none_or(|c| wall > c).then_some(wall)
}

#[cfg(test)]
mod tests {
    use super::quiet_watermark;

    #[test]
    fn a_quiet_pipeline_follows_the_wall_clock_less_the_late_arrival_tolerance() {
        // 10:00:00.400 wall clock, 5 s tolerance, the pipeline stopped at 09:59:00: 09:59:55.
        let now = 36_000_400;
        assert_eq!(
            quiet_watermark(now, 5_000, true, Some(35_940_000)),
            Some(35_995_000)
        );
        // No watermark yet (nothing arrived with a time): the wall clock starts it.
        assert_eq!(quiet_watermark(now, 0, true, None), Some(36_000_000));
    }

    #[test]
    fn one_busy_partition_keeps_time_with_the_events() {
        assert_eq!(quiet_watermark(36_000_000, 5_000, false, Some(0)), None);
    }

    #[test]
    fn the_wall_clock_never_takes_time_back() {
        // Events ahead of the wall clock (a device with a fast clock): the watermark stays.
        assert_eq!(quiet_watermark(1_000, 0, true, Some(2_000)), None);
        // Within the step the watermark is in: nothing to advance.
        assert_eq!(quiet_watermark(7_999, 5_000, true, Some(2_000)), None);
        assert_eq!(
            quiet_watermark(8_000, 5_000, true, Some(2_000)),
            Some(3_000)
        );
        assert_eq!(
            quiet_watermark(8_000, 5_000, true, Some(2_500)),
            Some(3_000)
        );
    }
}
