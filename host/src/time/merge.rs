//! The event time of a pipeline partition that reads several sources: one [`EventClock`] per
//! source (each with its own tolerances), merged into one stream in event-time order. Pure code:
//! events in, events and marks out.
//!
//! **The partition's watermark** is the minimum of its sources' watermarks
//! ([`partition_watermark`]): a source without one yet holds it back, an ended source does not,
//! and neither does a source the worker has marked idle (after its idle timeout). When every source
//! still open is idle, whatever their clocks have let go is released.
//!
//! **A deterministic merge.** Events leave the sources' clocks in each source's event-time order;
//! the merge holds them and releases, in `(event time, source, order within the source)` order,
//! those strictly before the partition's watermark. Which events those are, and in which order,
//! depends only on each source's own events, never on how the sources' reads interleaved: a
//! replay after a crash releases the same events in the same order.
//!
//! **Positions.** The sources' positions cannot be compared, so the merge numbers the events it
//! releases: a per-partition sequence, saved in the checkpoint, which is the position records
//! carry downstream (and the Delta sink's transaction version). Each released event is preceded by
//! a [`Mark`] at its own time and position when its time is past the previous mark: whatever a
//! window or join closes is attributed to the first event at or after the bound, again
//! independent of how the reads interleaved. The checkpoint keeps each source's own position
//! apart, to resume reading it.

use std::collections::BTreeMap;

use super::{Admitted, ClockSettings, END_OF_INPUT, EventClock, Mark};
use crate::codec::{DecodeError, Reader, Writer};
use crate::event::{Event, Position};

/// How far one source of a partition stands, for [`partition_watermark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceMark {
    /// The source's watermark, once it has one.
    pub watermark: Option<i64>,
    /// Idle past its timeout: it does not hold the partition back.
    pub idle: bool,
    /// Ended (a bounded input read to its end): it never holds the partition back again.
    pub ended: bool,
}

/// The watermark of a partition over its sources: the minimum over those neither idle nor ended
/// (`None` while one of them has no watermark yet, or when all are idle); [`END_OF_INPUT`] when
/// every source has ended.
pub fn partition_watermark(sources: &[SourceMark]) -> Option<i64> {
    watermark_over(sources.iter().copied())
}

/// [`partition_watermark`] over an iterator (no allocation per event).
fn watermark_over(sources: impl Iterator<Item = SourceMark> + Clone) -> Option<i64> {
    if sources.clone().all(|s| s.ended) {
        return Some(END_OF_INPUT);
    }
    let mut active = sources.filter(|s| !s.idle && !s.ended).peekable();
    active.peek()?;
    let mut lowest = i64::MAX;
    for source in active {
        lowest = lowest.min(source.watermark?);
    }
    Some(lowest)
}

/// One source's clock inside the merge.
#[derive(Debug, Clone, PartialEq)]
struct SourceClock {
    clock: EventClock,
    idle: bool,
    ended: bool,
    /// Events this source's clock has released so far: the order of an event within its source.
    released: u64,
}

/// The sources' clocks of one partition and the merge of their events.
#[derive(Debug)]
pub struct SourceMerge {
    sources: Vec<SourceClock>,
    /// Events out of their source's clock, by (time, source, order within the source).
    buffer: BTreeMap<(i64, usize, u64), Event>,
    /// The last position handed out.
    sequence: Position,
    /// The watermark of the last mark given.
    marked: Option<i64>,
    /// Scratch for what one source's clock releases.
    scratch: Admitted,
}

impl SourceMerge {
    /// A merge of sources with these clock settings, in the pipeline's order of its sources.
    pub fn new(settings: &[ClockSettings]) -> Self {
        SourceMerge {
            sources: settings
                .iter()
                .map(|s| SourceClock {
                    clock: EventClock::new(*s),
                    idle: false,
                    ended: false,
                    released: 0,
                })
                .collect(),
            buffer: BTreeMap::new(),
            sequence: 0,
            marked: None,
            scratch: Admitted::default(),
        }
    }

    /// The last position handed out (0 before the first).
    pub fn sequence(&self) -> Position {
        self.sequence
    }

    /// The partition's watermark as the stages know it: the last mark given.
    pub fn watermark(&self) -> Option<i64> {
        self.marked
    }

    /// Events waiting, in the sources' reorder buffers and in the merge.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
            + self
                .sources
                .iter()
                .map(|s| s.clock.buffered())
                .sum::<usize>()
    }

    /// The watermark of source `source`, once it has one.
    pub fn source_watermark(&self, source: usize) -> Option<i64> {
        self.sources.get(source).and_then(|s| s.clock.watermark())
    }

    /// Takes one arriving event of source `source` through its clock, then releases what the
    /// partition's watermark allows into `out` (counts and dropped events too).
    pub fn admit(&mut self, source: usize, event: Event, out: &mut Admitted) {
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        entry.idle = false;
        entry.clock.admit(event, &mut self.scratch);
        self.take_scratch(source, out);
        self.release(out);
    }

    /// Marks source `source` idle (it stops holding the partition back) or active again; returns
    /// whether that released anything into `out`.
    pub fn set_idle(&mut self, source: usize, idle: bool, out: &mut Admitted) -> bool {
        self.mark_idle(source, idle) && self.release(out)
    }

    /// Marks source `source` idle or active again without releasing anything yet (see
    /// [`SourceMerge::release_pending`]); returns whether the mark changed. The worker saves the
    /// marks in a checkpoint before what they let go is numbered, so that a replay after a crash
    /// numbers the same events the same way.
    pub fn mark_idle(&mut self, source: usize, idle: bool) -> bool {
        let Some(entry) = self.sources.get_mut(source) else {
            return false;
        };
        if entry.idle == idle {
            return false;
        }
        entry.idle = idle;
        true
    }

    /// Releases what the sources' marks let go; whether anything was released.
    pub fn release_pending(&mut self, out: &mut Admitted) -> bool {
        self.release(out)
    }

    /// Whether source `source` is marked idle.
    pub fn is_idle(&self, source: usize) -> bool {
        self.sources.get(source).is_some_and(|s| s.idle)
    }

    /// Source `source` has ended: its clock lets every event go, and it holds nothing back any
    /// more. When it was the last, everything is released and a mark at [`END_OF_INPUT`] closes
    /// everything downstream, after the last position.
    pub fn source_ended(&mut self, source: usize, out: &mut Admitted) {
        let Some(entry) = self.sources.get_mut(source) else {
            return;
        };
        if !entry.ended {
            entry.ended = true;
            // The position passed is overwritten by the merge's own.
            entry.clock.finish(0, &mut self.scratch);
            self.scratch.marks.clear();
            self.take_scratch(source, out);
        }
        self.release(out);
        if self.sources.iter().all(|s| s.ended) {
            let position = self.sequence.saturating_add(1);
            out.marks.push(Mark {
                watermark: END_OF_INPUT,
                position,
            });
        }
    }

    /// Every source is idle: the partition follows the pipeline's watermark `watermark`. Each
    /// source's clock advances to it and the merge releases everything before it, with a mark at
    /// it attributed to the last position (as an idle partition of one source does).
    pub fn advance_to(&mut self, watermark: i64, out: &mut Admitted) -> bool {
        if self.marked.is_some_and(|m| m >= watermark) {
            return false;
        }
        for source in 0..self.sources.len() {
            let entry = &mut self.sources[source];
            entry.clock.advance_to(watermark, 0, &mut self.scratch);
            self.scratch.marks.clear();
            self.take_scratch(source, out);
        }
        self.release_before(watermark, out);
        self.marked = Some(watermark);
        out.marks.push(Mark {
            watermark,
            position: self.sequence,
        });
        true
    }

    /// Moves what a source's clock released into the merge buffer and its counts into `out`.
    fn take_scratch(&mut self, source: usize, out: &mut Admitted) {
        let scratch = &mut self.scratch;
        out.dropped.append(&mut scratch.dropped);
        out.adjusted_out_of_order += scratch.adjusted_out_of_order;
        out.adjusted_late_arrival += scratch.adjusted_late_arrival;
        out.dropped_out_of_order += scratch.dropped_out_of_order;
        out.dropped_late_arrival += scratch.dropped_late_arrival;
        out.arrived += scratch.arrived;
        let entry = &mut self.sources[source];
        for mut event in scratch.released.drain(..) {
            let mut time = event.time();
            // A source that was idle may come back behind what the stages were told: like an
            // event behind a watermark, it is adjusted to it.
            if let Some(marked) = self.marked
                && time < marked
            {
                time = marked;
                event.event_time = Some(marked);
                out.adjusted_out_of_order += 1;
            }
            entry.released += 1;
            self.buffer.insert((time, source, entry.released), event);
        }
        scratch.clear();
    }

    /// Releases the events before the partition's watermark; whether anything was released.
    fn release(&mut self, out: &mut Admitted) -> bool {
        let marks = self.sources.iter().map(|s| SourceMark {
            watermark: s.clock.watermark(),
            idle: s.idle,
            ended: s.ended,
        });
        match watermark_over(marks) {
            Some(END_OF_INPUT) => self.release_before(i64::MAX, out) | self.release_last(out),
            Some(watermark) => self.release_before(watermark, out),
            // Every source still open is idle: none can deliver anything before what its clock
            // let go, so all of that goes on, as a quiet partition of one source lets its last
            // events go (otherwise a two-source join's last pair waits for new input forever).
            None if self.all_open_idle() => self.release_last(out),
            None => false,
        }
    }

    /// Whether every source that has not ended is idle (and at least one has not ended).
    fn all_open_idle(&self) -> bool {
        let mut open = self.sources.iter().filter(|s| !s.ended).peekable();
        open.peek().is_some() && open.all(|s| s.idle)
    }

    /// Releases the events with a time before `watermark`, each after a mark at its time when
    /// that is past the last mark.
    fn release_before(&mut self, watermark: i64, out: &mut Admitted) -> bool {
        let rest = self.buffer.split_off(&(watermark, 0, 0));
        let released = std::mem::replace(&mut self.buffer, rest);
        let any = !released.is_empty();
        for ((time, _, _), event) in released {
            self.emit(time, event, out);
        }
        any
    }

    /// Releases events at [`END_OF_INPUT`] itself (every source has ended).
    fn release_last(&mut self, out: &mut Admitted) -> bool {
        let released = std::mem::take(&mut self.buffer);
        let any = !released.is_empty();
        for ((time, _, _), event) in released {
            self.emit(time, event, out);
        }
        any
    }

    fn emit(&mut self, time: i64, mut event: Event, out: &mut Admitted) {
        self.sequence += 1;
        if self.marked.is_none_or(|m| time > m) {
            self.marked = Some(time);
            out.marks.push(Mark {
                watermark: time,
                position: self.sequence,
            });
        }
        event.position = self.sequence;
        out.released.push(event);
    }

    /// The merge's state for the checkpoint: the sequence, the last mark, each source's clock and
    /// flags, and the events waiting in the merge with their source.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1);
        w.u64(self.sequence);
        w.opt_i64(self.marked);
        w.len(self.sources.len());
        for source in &self.sources {
            w.bytes(&source.clock.snapshot());
            w.u8(u8::from(source.idle) | (u8::from(source.ended) << 1));
            w.u64(source.released);
        }
        w.len(self.buffer.len());
        for ((time, source, order), event) in &self.buffer {
            w.i64(*time);
            w.len(*source);
            w.u64(*order);
            w.event(event);
        }
        w.finish()
    }

    /// A merge with `settings` and the state a [`SourceMerge::snapshot`] saved; `names` are the
    /// sources' names, given back to the events it held (in the pipeline's order of its sources,
    /// which must be the one it was saved with).
    pub fn restore(
        settings: &[ClockSettings],
        names: &[std::sync::Arc<str>],
        bytes: &[u8],
    ) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8("the source merge's format version")? != 1 {
            return Err(DecodeError {
                offset: 0,
                what: "source merge format version 1",
            });
        }
        let sequence = r.u64("the merge's sequence")?;
        let marked = r.opt_i64("the merge's last mark")?;
        let count = r.len("the number of sources")?;
        if count != settings.len() {
            return Err(DecodeError {
                offset: 0,
                what: "as many sources as the pipeline names (its sources changed)",
            });
        }
        let mut sources = Vec::with_capacity(count);
        for (index, settings) in settings.iter().enumerate() {
            let mut clock = EventClock::restore(*settings, r.bytes("a source's clock")?)?;
            if let Some(name) = names.get(index) {
                clock.set_source(name);
            }
            let flags = r.u8("a source's flags")?;
            sources.push(SourceClock {
                clock,
                idle: flags & 1 != 0,
                ended: flags & 2 != 0,
                released: r.u64("a source's released count")?,
            });
        }
        let waiting = r.len("the number of merged events")?;
        let mut buffer = BTreeMap::new();
        for _ in 0..waiting {
            let time = r.i64("a merged event's time")?;
            let source = r.len("a merged event's source")?;
            let order = r.u64("a merged event's order")?;
            let mut event = r.event()?;
            if let Some(name) = names.get(source) {
                event.source = name.clone();
            }
            buffer.insert((time, source, order), event);
        }
        Ok(SourceMerge {
            sources,
            buffer,
            sequence,
            marked,
            scratch: Admitted::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LatePolicy;
    use crate::time::Tolerance;

    fn settings(tolerance: i64) -> ClockSettings {
        ClockSettings {
            out_of_order: Tolerance {
                millis: tolerance,
                policy: LatePolicy::Adjust,
            },
            late_arrival: None,
        }
    }

    fn event(source: &str, position: u64, time: i64) -> Event {
        let mut event = Event::new(0, position, format!("{source}{position}"));
        event.event_time = Some(time);
        event.source = source.into();
        event
    }

    /// Bodies released with their positions, and the marks as (watermark, position).
    type Merged = (Vec<(String, u64)>, Vec<(i64, u64)>);

    /// Feeds `(source, position, time)` in this order; returns what was merged.
    fn run(arrivals: &[(usize, u64, i64)]) -> Merged {
        let mut merge = SourceMerge::new(&[settings(0), settings(0)]);
        let mut out = Admitted::default();
        for (source, position, time) in arrivals {
            let name = ["a", "b"][*source];
            merge.admit(*source, event(name, *position, *time), &mut out);
        }
        merge.source_ended(0, &mut out);
        merge.source_ended(1, &mut out);
        let released = out
            .released
            .iter()
            .map(|e| (String::from_utf8_lossy(&e.body).into_owned(), e.position))
            .collect();
        let marks = out
            .marks
            .iter()
            .map(|m| (m.watermark, m.position))
            .collect();
        (released, marks)
    }

    #[test]
    fn the_partition_watermark_is_the_minimum_over_active_sources() {
        let mark = |watermark, idle, ended| SourceMark {
            watermark,
            idle,
            ended,
        };
        assert_eq!(partition_watermark(&[mark(Some(5), false, false)]), Some(5));
        assert_eq!(
            partition_watermark(&[mark(Some(5), false, false), mark(Some(3), false, false)]),
            Some(3)
        );
        assert_eq!(
            partition_watermark(&[mark(Some(5), false, false), mark(None, false, false)]),
            None,
            "a source without a watermark holds it back"
        );
        assert_eq!(
            partition_watermark(&[mark(Some(5), false, false), mark(None, true, false)]),
            Some(5),
            "an idle source does not"
        );
        assert_eq!(
            partition_watermark(&[mark(Some(5), false, false), mark(Some(1), false, true)]),
            Some(5),
            "nor an ended one"
        );
        assert_eq!(
            partition_watermark(&[mark(Some(5), true, false), mark(Some(1), true, false)]),
            None,
            "all idle: the partition is idle"
        );
        assert_eq!(
            partition_watermark(&[mark(None, false, true), mark(Some(1), false, true)]),
            Some(END_OF_INPUT)
        );
    }

    #[test]
    fn the_merged_order_and_positions_do_not_depend_on_how_reads_interleave() {
        let a = [(0, 10, 100), (0, 11, 200), (0, 12, 300), (0, 13, 400)];
        let b = [(1, 70, 150), (1, 71, 250), (1, 72, 260), (1, 73, 500)];
        let all_a_first: Vec<_> = a.iter().chain(b.iter()).copied().collect();
        let all_b_first: Vec<_> = b.iter().chain(a.iter()).copied().collect();
        let interleaved: Vec<_> = a.iter().zip(b.iter()).flat_map(|(x, y)| [*x, *y]).collect();
        let expected = run(&all_a_first);
        assert_eq!(
            expected.0,
            [
                ("a10".to_owned(), 1),
                ("b70".to_owned(), 2),
                ("a11".to_owned(), 3),
                ("b71".to_owned(), 4),
                ("b72".to_owned(), 5),
                ("a12".to_owned(), 6),
                ("a13".to_owned(), 7),
                ("b73".to_owned(), 8),
            ]
        );
        // Each event comes after a mark at its own time and position; the end closes after them.
        assert_eq!(expected.1.first(), Some(&(100, 1)));
        assert_eq!(expected.1.last(), Some(&(END_OF_INPUT, 9)));
        assert_eq!(run(&all_b_first), expected);
        assert_eq!(run(&interleaved), expected);
    }

    #[test]
    fn a_source_without_events_holds_the_partition_back_until_idle() {
        let mut merge = SourceMerge::new(&[settings(0), settings(0)]);
        let mut out = Admitted::default();
        merge.admit(0, event("a", 1, 100), &mut out);
        merge.admit(0, event("a", 2, 200), &mut out);
        assert!(out.released.is_empty(), "b has no watermark yet");
        assert!(merge.set_idle(1, true, &mut out));
        assert_eq!(
            out.released.len(),
            1,
            "a's watermark is 200: the event at 100 goes"
        );
        assert_eq!(merge.watermark(), Some(100));
        out.clear();
        // b comes back behind what the stages were told: adjusted to it.
        merge.admit(1, event("b", 1, 50), &mut out);
        merge.admit(1, event("b", 2, 300), &mut out);
        assert_eq!(out.adjusted_out_of_order, 1);
        // The partition's watermark is a's, 200: b's event (now at 100) goes, a's at 200 waits.
        let bodies: Vec<_> = out.released.iter().map(|e| e.body.clone()).collect();
        assert_eq!(bodies, ["b1"]);
    }

    #[test]
    fn when_every_source_is_idle_what_their_clocks_let_go_is_released() {
        let mut merge = SourceMerge::new(&[settings(0), settings(0)]);
        let mut out = Admitted::default();
        merge.admit(0, event("a", 1, 100), &mut out);
        merge.admit(1, event("b", 1, 150), &mut out);
        merge.admit(0, event("a", 2, 200), &mut out);
        let bodies = |out: &Admitted| -> Vec<_> {
            out.released
                .iter()
                .map(|e| String::from_utf8_lossy(&e.body).into_owned())
                .collect()
        };
        assert_eq!(
            bodies(&out),
            ["a1"],
            "b's watermark 150 holds b1 and a2 back"
        );
        out.clear();
        assert!(!merge.set_idle(0, true, &mut out), "b is still active");
        assert!(
            merge.set_idle(1, true, &mut out),
            "now every source is idle"
        );
        assert_eq!(bodies(&out), ["b1", "a2"], "released in merged order");
        assert_eq!(merge.sequence(), 3);
        out.clear();
        // A source coming back behind what was released is adjusted (by its own clock and to
        // the partition's last mark), as before.
        assert!(!merge.set_idle(1, false, &mut out));
        merge.admit(1, event("b", 2, 120), &mut out);
        assert!(out.adjusted_out_of_order >= 1);
        assert!(
            out.released.is_empty(),
            "a is idle, b's watermark is still 150"
        );
    }

    #[test]
    fn a_snapshot_restores_the_same_merge() {
        let mut merge = SourceMerge::new(&[settings(10), settings(0)]);
        let mut out = Admitted::default();
        merge.admit(0, event("a", 1, 100), &mut out);
        merge.admit(1, event("b", 1, 90), &mut out);
        merge.admit(0, event("a", 2, 130), &mut out);
        merge.admit(1, event("b", 2, 95), &mut out);
        let names: Vec<std::sync::Arc<str>> = vec!["a".into(), "b".into()];
        let restored =
            SourceMerge::restore(&[settings(10), settings(0)], &names, &merge.snapshot())
                .expect("restores");
        assert_eq!(restored.sequence(), merge.sequence());
        assert_eq!(restored.watermark(), merge.watermark());
        assert_eq!(restored.buffered(), merge.buffered());
        let Err(_) = SourceMerge::restore(&[settings(10)], &names, &merge.snapshot()) else {
            panic!("a merge of two sources is not one of one");
        };
    }
}
