//! One partition's event clock: late-arrival and out-of-order policies, the reorder buffer and the
//! watermark. Pure code: events in, events and marks out.

use std::collections::BTreeMap;

use super::{END_OF_INPUT, Mark, format_duration, format_millis};
use crate::codec::{DecodeError, Reader, Writer};
use crate::config::{EventTimeConfig, LatePolicy};
use crate::event::{Event, Position};

/// A tolerance in milliseconds and the policy for events beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// The tolerance.
    pub millis: i64,
    /// What happens beyond it.
    pub policy: LatePolicy,
}

/// Stream Analytics' default late-arrival tolerance (5 s, `adjust`), applied under
/// `semantics = "stream_analytics"` when the pipeline sets none.
pub const ASA_LATE_ARRIVAL: Tolerance = Tolerance {
    millis: 5_000,
    policy: LatePolicy::Adjust,
};

/// How a partition's clock treats its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSettings {
    /// Out-of-order tolerance (0 and `adjust` when the pipeline sets none, Stream Analytics'
    /// default too).
    pub out_of_order: Tolerance,
    /// Late-arrival tolerance, if any (under `stream_analytics` semantics, [`ASA_LATE_ARRIVAL`]
    /// when the pipeline sets none).
    pub late_arrival: Option<Tolerance>,
}

impl ClockSettings {
    /// The settings a pipeline's `event_time` table asks for.
    pub fn from_config(config: Option<&EventTimeConfig>) -> Self {
        let millis = |d: crate::config::ConfigDuration| {
            i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX)
        };
        let tolerance = |t: &crate::config::TolerancePolicy| Tolerance {
            millis: millis(t.tolerance),
            policy: t.policy,
        };
        ClockSettings {
            out_of_order: config
                .and_then(|c| c.out_of_order.as_ref())
                .map(tolerance)
                .unwrap_or(Tolerance {
                    millis: 0,
                    policy: LatePolicy::Adjust,
                }),
            late_arrival: config
                .and_then(|c| c.late_arrival.as_ref())
                .map(tolerance)
                .or_else(|| {
                    config
                        .is_some_and(EventTimeConfig::is_stream_analytics)
                        .then_some(ASA_LATE_ARRIVAL)
                }),
        }
    }
}

/// An event dropped by a policy, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct LateEvent {
    /// The event, as it arrived.
    pub event: Event,
    /// Which tolerance it exceeded and by how much.
    pub reason: String,
}

/// What the clock made of some arriving events.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Events leaving the reorder buffer, in event-time order, each carrying the position of the
    /// event whose arrival released it.
    pub released: Vec<Event>,
    /// Watermark advances, in order.
    pub marks: Vec<Mark>,
    /// Events dropped by a policy.
    pub dropped: Vec<LateEvent>,
    /// Events adjusted by the out-of-order policy.
    pub adjusted_out_of_order: u64,
    /// Events adjusted by the late-arrival policy.
    pub adjusted_late_arrival: u64,
    /// Events dropped by the out-of-order policy.
    pub dropped_out_of_order: u64,
    /// Events dropped by the late-arrival policy.
    pub dropped_late_arrival: u64,
    /// Events that arrived (every event taken through [`EventClock::admit`]).
    pub arrived: u64,
}

impl Admitted {
    /// Empties it, keeping the allocations.
    pub fn clear(&mut self) {
        self.released.clear();
        self.marks.clear();
        self.dropped.clear();
        self.adjusted_out_of_order = 0;
        self.adjusted_late_arrival = 0;
        self.dropped_out_of_order = 0;
        self.dropped_late_arrival = 0;
        self.arrived = 0;
    }

    /// Events that arrived behind the watermark, adjusted or dropped by the out-of-order policy.
    pub fn behind_watermark(&self) -> u64 {
        self.adjusted_out_of_order + self.dropped_out_of_order
    }
}

/// A partition's watermark and reorder buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct EventClock {
    settings: ClockSettings,
    /// The newest event time admitted.
    max_time: Option<i64>,
    /// No event with an earlier time reaches the stages any more.
    watermark: Option<i64>,
    /// Events waiting for the watermark, by (event time, source position).
    buffer: BTreeMap<(i64, Position), Event>,
}

impl EventClock {
    /// A clock that has seen nothing.
    pub fn new(settings: ClockSettings) -> Self {
        EventClock {
            settings,
            max_time: None,
            watermark: None,
            buffer: BTreeMap::new(),
        }
    }

    /// The partition's watermark, once it has one.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Events waiting in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Names `source` as the source of the events waiting in the reorder buffer (a checkpoint
    /// does not keep it: a clock reads one source).
    pub fn set_source(&mut self, source: &std::sync::Arc<str>) {
        for event in self.buffer.values_mut() {
            event.source = source.clone();
        }
    }

    /// Takes one arriving event through the policies and the reorder buffer.
    pub fn admit(&mut self, mut event: Event, out: &mut Admitted) {
        out.arrived += 1;
        let position = event.position;
        let mut time = event.time();
        if let Some(late) = self.settings.late_arrival {
            let bound = event.enqueued_time.saturating_sub(late.millis);
            if time < bound {
                match late.policy {
                    LatePolicy::Adjust => {
                        out.adjusted_late_arrival += 1;
                        time = bound;
                        event.event_time = Some(bound);
                    }
                    LatePolicy::Drop => {
                        out.dropped_late_arrival += 1;
                        let reason = format!(
                            "late arrival: event time {} is {} before its enqueued time {}, beyond the late-arrival tolerance of {}",
                            format_millis(time),
                            format_duration(event.enqueued_time.saturating_sub(time)),
                            format_millis(event.enqueued_time),
                            format_duration(late.millis)
                        );
                        out.dropped.push(LateEvent { event, reason });
                        return;
                    }
                }
            }
        }
        if let Some(watermark) = self.watermark
            && time < watermark
        {
            let tolerance = self.settings.out_of_order;
            match tolerance.policy {
                LatePolicy::Adjust => {
                    out.adjusted_out_of_order += 1;
                    time = watermark;
                    event.event_time = Some(watermark);
                }
                LatePolicy::Drop => {
                    out.dropped_out_of_order += 1;
                    let reason = format!(
                        "out of order: event time {} is {} behind the partition's watermark {} (its newest event time minus the out-of-order tolerance of {})",
                        format_millis(time),
                        format_duration(watermark.saturating_sub(time)),
                        format_millis(watermark),
                        format_duration(tolerance.millis)
                    );
                    out.dropped.push(LateEvent { event, reason });
                    return;
                }
            }
        }
        self.buffer.insert((time, position), event);
        let newest = self.max_time.map_or(time, |m| m.max(time));
        self.max_time = Some(newest);
        let candidate = newest.saturating_sub(self.settings.out_of_order.millis);
        if self.watermark.is_none_or(|w| candidate > w) {
            self.advance(candidate, position, out);
        } else if self.watermark.is_some_and(|w| time <= w) {
            // An adjusted event sits at the watermark: it leaves at once.
            self.release_through(time, position, out);
        }
    }

    /// Advances the watermark to `watermark` (if that is later) without a new event: the
    /// partition is idle and follows the pipeline's watermark. Released events and the mark carry
    /// `position`, the partition's last one.
    pub fn advance_to(&mut self, watermark: i64, position: Position, out: &mut Admitted) {
        if self.watermark.is_none_or(|w| watermark > w) {
            self.advance(watermark, position, out);
        }
    }

    /// The bounded input has ended: every buffered event leaves, and a mark at
    /// [`END_OF_INPUT`] closes everything downstream. The watermark itself stays where it was,
    /// so that input appended later (a longer file on the next run) is not all late.
    pub fn finish(&mut self, position: Position, out: &mut Admitted) {
        for (_, mut event) in std::mem::take(&mut self.buffer) {
            event.position = position;
            out.released.push(event);
        }
        out.marks.push(Mark {
            watermark: END_OF_INPUT,
            position,
        });
    }

    fn advance(&mut self, watermark: i64, position: Position, out: &mut Admitted) {
        self.watermark = Some(watermark);
        self.release_through(watermark, position, out);
        out.marks.push(Mark {
            watermark,
            position,
        });
    }

    /// Releases the buffered events with a time at or before `time`, in order.
    fn release_through(&mut self, time: i64, position: Position, out: &mut Admitted) {
        let rest = match time.checked_add(1) {
            Some(after) => self.buffer.split_off(&(after, 0)),
            None => BTreeMap::new(),
        };
        for (_, mut event) in std::mem::replace(&mut self.buffer, rest) {
            event.position = position;
            out.released.push(event);
        }
    }

    /// The clock's state for the checkpoint: watermark, newest time and the buffered events.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1);
        w.opt_i64(self.max_time);
        w.opt_i64(self.watermark);
        w.len(self.buffer.len());
        for ((time, _), event) in &self.buffer {
            w.i64(*time);
            w.event(event);
        }
        w.finish()
    }

    /// A clock with `settings` and the state a [`EventClock::snapshot`] saved.
    pub fn restore(settings: ClockSettings, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("the event clock's format version")?;
        if version != 1 {
            return Err(DecodeError {
                offset: 0,
                what: "event clock format version 1",
            });
        }
        let max_time = r.opt_i64("the newest event time")?;
        let watermark = r.opt_i64("the watermark")?;
        let count = r.len("the number of buffered events")?;
        let mut buffer = BTreeMap::new();
        for _ in 0..count {
            let time = r.i64("a buffered event's time")?;
            let event = r.event()?;
            buffer.insert((time, event.position), event);
        }
        Ok(EventClock {
            settings,
            max_time,
            watermark,
            buffer,
        })
    }
}

/// The share of a partition's events behind the watermark above which a run is warned about, when
/// the pipeline's `event_time.max_out_of_order_share` does not say: 1%.
pub const DEFAULT_MAX_OUT_OF_ORDER_SHARE: f64 = 0.01;

/// Events a partition must have received before its share is judged while it runs: one event
/// behind the watermark among the first few says nothing yet. The end of a bounded input judges
/// whatever arrived.
pub const DISORDER_MIN_EVENTS: u64 = 100;

/// How much of a partition's input arrived behind its watermark (adjusted or dropped by the
/// out-of-order policy): such events miss the windows and joins they belong to, so more than
/// `max_share` of them is said loudly. Pure: counts in, verdicts out.
#[derive(Debug, Clone, PartialEq)]
pub struct DisorderWatch {
    max_share: f64,
    arrived: u64,
    behind: u64,
    /// Whether the share is over `max_share` since the last verdict: a verdict is given when it
    /// goes over, not again while it stays there.
    over: bool,
}

/// The share of a partition's events behind its watermark went over the allowed one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disorder {
    /// Events that arrived behind the watermark.
    pub behind: u64,
    /// Events that arrived.
    pub arrived: u64,
    /// `behind / arrived`.
    pub share: f64,
    /// The share allowed.
    pub max_share: f64,
}

impl DisorderWatch {
    /// The watch a pipeline's `event_time` table asks for.
    pub fn from_config(config: Option<&EventTimeConfig>) -> Self {
        DisorderWatch::new(Self::max_share_of(config))
    }

    /// The share a pipeline's `event_time` table allows (the default when it says none).
    pub fn max_share_of(config: Option<&EventTimeConfig>) -> f64 {
        config
            .and_then(|c| c.max_out_of_order_share)
            .unwrap_or(DEFAULT_MAX_OUT_OF_ORDER_SHARE)
    }

    /// A watch that allows `max_share` (0 to 1) of the events behind the watermark.
    pub fn new(max_share: f64) -> Self {
        DisorderWatch {
            max_share,
            arrived: 0,
            behind: 0,
            over: false,
        }
    }

    /// Counts what the clock admitted since the last call; returns the verdict when the share
    /// has just gone over the allowed one (once [`DISORDER_MIN_EVENTS`] events have arrived).
    pub fn record(&mut self, admitted: &Admitted) -> Option<Disorder> {
        self.arrived += admitted.arrived;
        self.behind += admitted.behind_watermark();
        self.judge(DISORDER_MIN_EVENTS)
    }

    /// The bounded input has ended: judges the share of whatever arrived.
    pub fn finish(&mut self) -> Option<Disorder> {
        self.judge(1)
    }

    /// Events behind the watermark over events arrived, 0 before any arrived.
    pub fn share(&self) -> f64 {
        if self.arrived == 0 {
            0.0
        } else {
            self.behind as f64 / self.arrived as f64
        }
    }

    /// Whether the share is over the allowed one (with enough events to say so).
    pub fn is_over(&self) -> bool {
        self.over
    }

    fn judge(&mut self, min_events: u64) -> Option<Disorder> {
        let over = self.arrived >= min_events && self.share() > self.max_share;
        let verdict = (over && !self.over).then_some(Disorder {
            behind: self.behind,
            arrived: self.arrived,
            share: self.share(),
            max_share: self.max_share,
        });
        if self.arrived >= min_events {
            self.over = over;
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ooo: i64, policy: LatePolicy, late: Option<(i64, LatePolicy)>) -> ClockSettings {
        ClockSettings {
            out_of_order: Tolerance {
                millis: ooo,
                policy,
            },
            late_arrival: late.map(|(millis, policy)| Tolerance { millis, policy }),
        }
    }

    fn event(position: u64, time: i64) -> Event {
        let mut e = Event::new(0, position, format!("{{\"p\":{position}}}"));
        e.event_time = Some(time);
        e.enqueued_time = time;
        e
    }

    fn admit_all(clock: &mut EventClock, events: &[(u64, i64)]) -> Admitted {
        let mut out = Admitted::default();
        for (p, t) in events {
            clock.admit(event(*p, *t), &mut out);
        }
        out
    }

    fn released(out: &Admitted) -> Vec<(u64, i64)> {
        out.released
            .iter()
            .map(|e| (e.position, e.time()))
            .collect()
    }

    #[test]
    fn stream_analytics_semantics_default_to_asa_s_event_ordering_policies() {
        let asa: EventTimeConfig =
            toml::from_str(r#"semantics = "stream_analytics""#).expect("event_time");
        let settings = ClockSettings::from_config(Some(&asa));
        assert_eq!(settings.late_arrival, Some(ASA_LATE_ARRIVAL));
        assert_eq!(ASA_LATE_ARRIVAL.millis, 5_000);
        assert_eq!(
            settings.out_of_order,
            Tolerance {
                millis: 0,
                policy: LatePolicy::Adjust
            }
        );
        assert!(asa.orders_events());
        // A tolerance the pipeline sets wins; Weir's semantics have no late-arrival default.
        let own: EventTimeConfig = toml::from_str(
            r#"semantics = "stream_analytics"
late_arrival = { tolerance = "1m", policy = "drop" }"#,
        )
        .expect("event_time");
        let late = ClockSettings::from_config(Some(&own)).late_arrival;
        assert_eq!(
            late.map(|l| (l.millis, l.policy)),
            Some((60_000, LatePolicy::Drop))
        );
        let weir: EventTimeConfig = toml::from_str(r#"field = "Time""#).expect("event_time");
        assert_eq!(ClockSettings::from_config(Some(&weir)).late_arrival, None);
        assert_eq!(ClockSettings::from_config(None).late_arrival, None);
    }

    #[test]
    fn without_tolerance_events_pass_at_once_and_late_ones_are_adjusted() {
        let mut clock = EventClock::new(settings(0, LatePolicy::Adjust, None));
        let out = admit_all(&mut clock, &[(1, 10), (2, 20), (3, 15), (4, 20)]);
        // 15 is behind the watermark 20: adjusted to 20, released at its own position.
        assert_eq!(released(&out), [(1, 10), (2, 20), (3, 20), (4, 20)]);
        assert_eq!(out.adjusted_out_of_order, 1);
        assert_eq!(
            out.marks,
            [
                Mark {
                    watermark: 10,
                    position: 1
                },
                Mark {
                    watermark: 20,
                    position: 2
                }
            ]
        );
    }

    #[test]
    fn within_tolerance_events_leave_in_time_order_at_the_releasing_position() {
        let mut clock = EventClock::new(settings(10, LatePolicy::Drop, None));
        let out = admit_all(
            &mut clock,
            &[(1, 100), (2, 95), (3, 104), (4, 112), (5, 130)],
        );
        // Watermarks: 90, 94, 102, 120. Event 2 (95) and 1 (100) leave when 4 arrives (102);
        // 3 (104) and 4 (112) when 5 arrives (120); 5 waits.
        assert_eq!(released(&out), [(4, 95), (4, 100), (5, 104), (5, 112)]);
        assert_eq!(clock.buffered(), 1);
        assert!(out.dropped.is_empty());
        let marks: Vec<(i64, u64)> = out
            .marks
            .iter()
            .map(|m| (m.watermark, m.position))
            .collect();
        assert_eq!(marks, [(90, 1), (94, 3), (102, 4), (120, 5)]);
        // Beyond the tolerance: dropped with the reason.
        let out = admit_all(&mut clock, &[(6, 119)]);
        assert_eq!(out.dropped.len(), 1);
        assert_eq!(out.dropped_out_of_order, 1);
        assert!(
            out.dropped[0]
                .reason
                .contains("behind the partition's watermark"),
            "{}",
            out.dropped[0].reason
        );
        // End of input: everything leaves, a mark closes everything.
        let mut out = Admitted::default();
        clock.finish(7, &mut out);
        assert_eq!(released(&out), [(7, 130)]);
        assert_eq!(out.marks[0].watermark, END_OF_INPUT);
        assert_eq!(clock.watermark(), Some(120), "the end is not remembered");
    }

    #[test]
    fn late_arrivals_are_adjusted_or_dropped_before_ordering() {
        let mut clock = EventClock::new(settings(
            0,
            LatePolicy::Adjust,
            Some((50, LatePolicy::Adjust)),
        ));
        let mut e = event(1, 100);
        e.enqueued_time = 200;
        let mut out = Admitted::default();
        clock.admit(e, &mut out);
        assert_eq!(released(&out), [(1, 150)]);
        assert_eq!(out.adjusted_late_arrival, 1);

        let mut clock = EventClock::new(settings(
            0,
            LatePolicy::Adjust,
            Some((50, LatePolicy::Drop)),
        ));
        let mut e = event(1, 100);
        e.enqueued_time = 151;
        let mut out = Admitted::default();
        clock.admit(e, &mut out);
        assert!(out.released.is_empty());
        assert_eq!(out.dropped_late_arrival, 1);
        assert!(out.dropped[0].reason.starts_with("late arrival"));
    }

    #[test]
    fn an_idle_advance_releases_and_marks_at_the_given_position() {
        let mut clock = EventClock::new(settings(30, LatePolicy::Adjust, None));
        admit_all(&mut clock, &[(1, 100), (2, 110)]);
        let mut out = Admitted::default();
        clock.advance_to(105, 2, &mut out);
        assert_eq!(released(&out), [(2, 100)]);
        clock.advance_to(90, 2, &mut out);
        assert_eq!(out.marks.len(), 1, "the watermark never goes back");
        let out = admit_all(&mut clock, &[(3, 104)]);
        assert_eq!(
            released(&out),
            [(3, 105)],
            "behind the advanced watermark: adjusted"
        );
    }

    #[test]
    fn snapshot_round_trips_with_buffered_events() {
        let mut clock = EventClock::new(settings(10, LatePolicy::Adjust, None));
        admit_all(&mut clock, &[(1, 100), (2, 95), (3, 104)]);
        let bytes = clock.snapshot();
        let restored = EventClock::restore(clock.settings, &bytes).expect("restore");
        assert_eq!(restored, clock);
        assert!(EventClock::restore(clock.settings, &bytes[..bytes.len() - 2]).is_err());
    }

    /// What the clock admitted: `arrived` events, `behind` of them behind the watermark.
    fn batch(arrived: u64, adjusted: u64, dropped: u64) -> Admitted {
        Admitted {
            arrived,
            adjusted_out_of_order: adjusted,
            dropped_out_of_order: dropped,
            ..Admitted::default()
        }
    }

    #[test]
    fn the_clock_counts_arrivals_and_events_behind_the_watermark() {
        let mut clock = EventClock::new(settings(0, LatePolicy::Adjust, None));
        let out = admit_all(&mut clock, &[(1, 10), (2, 20), (3, 15), (4, 5), (5, 30)]);
        assert_eq!(out.arrived, 5);
        assert_eq!(out.behind_watermark(), 2);
        let mut clock = EventClock::new(settings(0, LatePolicy::Drop, None));
        let out = admit_all(&mut clock, &[(1, 10), (2, 20), (3, 15)]);
        assert_eq!((out.arrived, out.behind_watermark()), (3, 1));
    }

    #[test]
    fn a_share_over_the_allowed_one_is_reported_once_when_it_goes_over() {
        let mut watch = DisorderWatch::new(DEFAULT_MAX_OUT_OF_ORDER_SHARE);
        // Exactly 1% is allowed.
        assert_eq!(watch.record(&batch(100, 1, 0)), None);
        assert!(!watch.is_over());
        // 3 of 200: 1.5%, over.
        let verdict = watch.record(&batch(100, 1, 1)).expect("over 1%");
        assert_eq!((verdict.behind, verdict.arrived), (3, 200));
        assert!((verdict.share - 0.015).abs() < 1e-12);
        assert!((verdict.max_share - 0.01).abs() < 1e-12);
        assert!(watch.is_over());
        // Still over: no second verdict.
        assert_eq!(watch.record(&batch(100, 2, 0)), None);
        // Back under (5 of 1000), then over again: a new verdict.
        assert_eq!(watch.record(&batch(700, 0, 0)), None);
        assert!(!watch.is_over());
        assert!(watch.record(&batch(100, 20, 0)).is_some());
    }

    #[test]
    fn a_few_events_are_not_judged_until_the_input_ends() {
        let mut watch = DisorderWatch::new(0.05);
        // 1 of 10 is 10%, but too few to say while the input goes on.
        assert_eq!(watch.record(&batch(10, 1, 0)), None);
        assert_eq!(watch.record(&batch(40, 4, 0)), None);
        let verdict = watch.finish().expect("10% over 5% at the end");
        assert_eq!((verdict.behind, verdict.arrived), (5, 50));
        assert_eq!(watch.finish(), None, "said once");
        // Nothing arrived, or all in order: nothing to say.
        assert_eq!(DisorderWatch::new(0.0).finish(), None);
        let mut ordered = DisorderWatch::new(0.0);
        ordered.record(&batch(500, 0, 0));
        assert_eq!(ordered.finish(), None);
        assert_eq!(ordered.share(), 0.0);
    }
}
