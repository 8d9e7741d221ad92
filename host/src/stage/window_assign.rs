//! Window assignment and closing: which (key, window) groups an event belongs to, which windows
//! that opens or extends, and which windows a watermark closes, in order. Pure code: events,
//! keys and marks in; groups, refusals and closed windows out. The window stage
//! ([`super::window`]) keeps this state between batches and calls the plugin on what it gives.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::window::{AsaWindow, WindowSpec};

/// The stage's maps: looked up several times per event with keys of some 60 bytes, where
/// foldhash costs a fraction of the standard hasher (the keys are the stage's own group keys).
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use crate::event::{Event, Position};
use crate::time::{END_OF_INPUT, Mark};

/// A group: a key (JSON object text) and the start of one of its windows.
pub(super) type GroupId = (Arc<str>, i64);

/// An open window.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OpenWindow {
    /// Where it ends (exclusive).
    pub(super) end: i64,
    /// Time of the newest event (session windows).
    pub(super) last_event: i64,
    /// The plugin's accumulator; empty before the first fold.
    pub(super) accumulator: Vec<u8>,
}

/// Everything the stage keeps between batches (and in the checkpoint).
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct WindowState {
    /// The open windows.
    pub(super) windows: FastMap<GroupId, OpenWindow>,
    /// Open windows in the order they close: (end, key, start).
    pub(super) closing: BTreeSet<(i64, Arc<str>, i64)>,
    /// Session windows: the start of each key's current session.
    pub(super) sessions: FastMap<Arc<str>, i64>,
    /// Sliding windows: each key's events of the last `size`, in time order.
    pub(super) recent: FastMap<Arc<str>, VecDeque<Event>>,
    /// The last watermark (not counting the end of the input).
    pub(super) watermark: Option<i64>,
}

/// A window that closed, with the position of the mark that closed it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Closed {
    /// Its group.
    pub(super) id: GroupId,
    /// The window as it was when it closed.
    pub(super) window: OpenWindow,
    /// The position of the mark that closed it.
    pub(super) position: Position,
}

/// The events of a batch that go into one window: its id, its end when the first of them was
/// assigned (a session may grow later in the batch), and their indices in the batch.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    /// The group.
    pub(super) id: GroupId,
    /// The window's end.
    pub(super) end: i64,
    /// Indices of the events in the batch, in order.
    pub(super) members: Vec<u32>,
}

/// Why an event was not assigned to any window.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Refusal {
    /// Its group key could not be made.
    NoKey(String),
    /// Its window (ending at `end`) has already closed.
    Late {
        /// The end reported: the closed window's, or the event's time when all of its windows
        /// have closed.
        end: i64,
    },
}

/// What a batch's assignment came to.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Assigned {
    /// The groups to fold, in the order their first event came.
    pub(super) groups: Vec<Group>,
    /// The events refused, by index in the batch, in order.
    pub(super) refused: Vec<(u32, Refusal)>,
}

/// What became of one event.
#[derive(Debug, PartialEq)]
enum Assignment {
    /// The windows `(start, end)` it goes into, opened if new.
    Windows(Vec<(i64, i64)>),
    /// Sliding windows: kept among its key's recent events, folded when its window closes.
    Kept,
    /// Too late, see [`Refusal::Late`].
    Late {
        /// The end reported.
        end: i64,
    },
}

impl WindowState {
    /// Assigns `events` (with the group key `key` makes of each) to the windows of `spec`,
    /// opening or extending windows and sessions as they come.
    pub(super) fn assign(
        &mut self,
        spec: WindowSpec,
        events: &[Event],
        mut key: impl FnMut(&Event) -> Result<Arc<str>, String>,
    ) -> Assigned {
        let mut assigned = Assigned::default();
        let mut index: FastMap<GroupId, usize> = FastMap::default();
        for (member, event) in events.iter().enumerate() {
            let member = u32::try_from(member).unwrap_or(u32::MAX);
            let key = match key(event) {
                Ok(key) => key,
                Err(reason) => {
                    assigned.refused.push((member, Refusal::NoKey(reason)));
                    continue;
                }
            };
            match self.assign_one(spec, &key, event) {
                Assignment::Windows(windows) => {
                    for (start, end) in windows {
                        let id = (key.clone(), start);
                        let groups = &mut assigned.groups;
                        let slot = *index.entry(id.clone()).or_insert_with(|| {
                            groups.push(Group {
                                id,
                                end,
                                members: Vec::new(),
                            });
                            groups.len() - 1
                        });
                        groups[slot].members.push(member);
                    }
                }
                Assignment::Kept => {}
                Assignment::Late { end } => {
                    assigned.refused.push((member, Refusal::Late { end }));
                }
            }
        }
        assigned
    }

    /// The windows of `key` that `event` goes into.
    fn assign_one(&mut self, spec: WindowSpec, key: &Arc<str>, event: &Event) -> Assignment {
        let time = event.time();
        let windows: Vec<(i64, i64)> = match spec {
            WindowSpec::Tumbling { size } => window_starts(time, size, size, 0)
                .map(|s| (s, s + size))
                .collect(),
            WindowSpec::Hopping { size, hop } => window_starts(time, size, hop, 0)
                .map(|s| (s, s + size))
                .collect(),
            WindowSpec::StreamAnalytics(asa) => return self.assign_asa(asa, key, event),
            WindowSpec::Snapshot => vec![(time, time.saturating_add(1))],
            WindowSpec::Sliding { size } => {
                let end = time.saturating_add(1);
                if self.closed_before(end) {
                    return Assignment::Late { end };
                }
                self.open(key, end - size, end, time);
                self.keep_recent(key, event);
                return Assignment::Kept;
            }
            WindowSpec::Session { gap, max_duration } => {
                if self.closed_before(time.saturating_add(gap)) {
                    return Assignment::Late {
                        end: time.saturating_add(gap),
                    };
                }
                let start = self.session(key, time, gap, max_duration);
                self.session_window(key, start)
            }
        };
        self.open_all(key, windows, time)
    }

    /// Opens the window `(key, start)` ending at `end` if it is not open yet.
    fn open(&mut self, key: &Arc<str>, start: i64, end: i64, time: i64) {
        let closing = &mut self.closing;
        self.windows.entry((key.clone(), start)).or_insert_with(|| {
            closing.insert((end, key.clone(), start));
            OpenWindow {
                end,
                last_event: time,
                accumulator: Vec::new(),
            }
        });
    }

    /// Opens those of `windows` (start, end) of `key` that have not closed yet, for an event at
    /// `time`; the event is late when none is left.
    fn open_all(&mut self, key: &Arc<str>, windows: Vec<(i64, i64)>, time: i64) -> Assignment {
        let mut open = Vec::with_capacity(windows.len());
        for (start, end) in windows {
            if self.closed_before(end) {
                continue;
            }
            self.open(key, start, end, time);
            open.push((start, end));
        }
        if open.is_empty() {
            Assignment::Late { end: time }
        } else {
            Assignment::Windows(open)
        }
    }

    /// Sliding windows: keeps `event` among `key`'s recent events, in time order.
    fn keep_recent(&mut self, key: &Arc<str>, event: &Event) {
        let time = event.time();
        let recent = self.recent.entry(key.clone()).or_default();
        let at = recent.partition_point(|e| e.time() <= time);
        recent.insert(at, event.clone());
    }

    /// The session window of `key` starting at `start`, with its end as it is now.
    fn session_window(&self, key: &Arc<str>, start: i64) -> Vec<(i64, i64)> {
        let end = self
            .windows
            .get(&(key.clone(), start))
            .map_or(start, |w| w.end);
        vec![(start, end)]
    }

    /// Opens `key`'s current session at `start`, ending at `end`, its newest event at `last`.
    fn start_session(&mut self, key: &Arc<str>, start: i64, end: i64, last: i64) {
        self.sessions.insert(key.clone(), start);
        self.windows.insert(
            (key.clone(), start),
            OpenWindow {
                end,
                last_event: last,
                accumulator: Vec::new(),
            },
        );
        self.closing.insert((end, key.clone(), start));
    }

    /// The session of `key` that an event at `time` belongs to (opening or extending one); its
    /// start.
    fn session(&mut self, key: &Arc<str>, time: i64, gap: i64, max_duration: Option<i64>) -> i64 {
        let cap = |start: i64, end: i64| {
            max_duration.map_or(end, |max| end.min(start.saturating_add(max)))
        };
        if let Some(&start) = self.sessions.get(key)
            && let Some(window) = self.windows.get_mut(&(key.clone(), start))
        {
            // A gap of `gap` or more ends the session: an event exactly `gap` after the last
            // one is at the session's (exclusive) end, so it starts a new session.
            let within_gap = time < window.last_event.saturating_add(gap);
            let within_max = max_duration.is_none_or(|max| time < start.saturating_add(max));
            if within_gap && within_max {
                let last = window.last_event.max(time);
                let end = cap(start, last.saturating_add(gap));
                extend(&mut self.closing, window, (key, start), end, last);
                return start;
            }
        }
        // A new session; the previous one (if any) closes when the watermark passes its end.
        self.start_session(key, time, cap(time, time.saturating_add(gap)), time);
        time
    }

    /// Stream Analytics' windows of `key` that `event` goes into, as [`Self::assign_one`].
    /// Bounds `(s, e]` are kept as `[s + 1, e + 1)`.
    fn assign_asa(&mut self, asa: AsaWindow, key: &Arc<str>, event: &Event) -> Assignment {
        let time = event.time();
        let windows: Vec<(i64, i64)> = match asa {
            AsaWindow::Tumbling { size, offset } => asa_windows(time, size, size, offset).collect(),
            AsaWindow::Hopping { size, hop, offset } => {
                asa_windows(time, size, hop, offset).collect()
            }
            AsaWindow::Sliding { size } => {
                // The window the event enters, ending at its time, and the one it leaves,
                // ending `size` later.
                let end = time.saturating_add(1);
                if self.closed_before(end) {
                    return Assignment::Late { end: time };
                }
                self.open(key, end - size, end, time);
                self.open(key, end, end.saturating_add(size), time);
                self.keep_recent(key, event);
                return Assignment::Kept;
            }
            AsaWindow::Session {
                timeout,
                max_duration,
            } => {
                let end = time.saturating_add(timeout);
                if self.closed_before(end.saturating_add(1)) {
                    return Assignment::Late { end };
                }
                let start = self.asa_session(key, time, timeout, max_duration);
                self.session_window(key, start)
            }
        };
        self.open_all(key, windows, time)
    }

    /// Stream Analytics' session of `key` that an event at `time` belongs to (opening or
    /// extending one); its start. A session `(start, end]` keeps events at most `timeout`
    /// apart and is cut at its check point ([`asa_cut`]); an event past the check point but
    /// within `timeout` of the last one opens the next session at the last check point
    /// before it.
    fn asa_session(
        &mut self,
        key: &Arc<str>,
        time: i64,
        timeout: i64,
        max_duration: Option<i64>,
    ) -> i64 {
        // The held end: the (inclusive) end plus 1 ms.
        let end = |start: i64, last: i64| {
            let natural = last.saturating_add(timeout);
            max_duration
                .map_or(natural, |max| natural.min(asa_cut(start, max)))
                .saturating_add(1)
        };
        let mut start = time;
        if let Some(&current) = self.sessions.get(key)
            && let Some(window) = self.windows.get_mut(&(key.clone(), current))
            && time <= window.last_event.saturating_add(timeout)
        {
            if max_duration.is_none_or(|max| time <= asa_cut(current, max)) {
                let last = window.last_event.max(time);
                extend(
                    &mut self.closing,
                    window,
                    (key, current),
                    end(current, last),
                    last,
                );
                return current;
            }
            if let Some(max) = max_duration {
                // The last check point before `time`; the windows between (if any) are empty.
                start = time.saturating_sub(1).div_euclid(max).saturating_mul(max);
            }
        }
        self.start_session(key, start, end(start, time), time);
        start
    }

    /// Whether a window ending at `end` has already closed.
    fn closed_before(&self, end: i64) -> bool {
        self.watermark.is_some_and(|w| end <= w)
    }

    /// Closes, mark by mark, the windows whose end the mark's watermark reaches, in the order
    /// they close (end, then key, then start), each with the position of the mark that closed
    /// it; moves the watermark forward (never back, and not to the end of the input).
    pub(super) fn close(&mut self, spec: WindowSpec, marks: &[Mark]) -> Vec<Closed> {
        let mut closed: Vec<Closed> = Vec::new();
        for mark in marks {
            while let Some(first) = self.closing.first()
                && first.0 <= mark.watermark
            {
                let Some((_, key, start)) = self.closing.pop_first() else {
                    break;
                };
                let id = (key, start);
                let Some(window) = self.windows.remove(&id) else {
                    continue;
                };
                if self.sessions.get(&id.0) == Some(&start) {
                    self.sessions.remove(&id.0);
                    self.continue_session(spec, &id, &window);
                }
                closed.push(Closed {
                    id,
                    window,
                    position: mark.position,
                });
            }
            if mark.watermark != END_OF_INPUT {
                self.watermark = Some(
                    self.watermark
                        .map_or(mark.watermark, |w| w.max(mark.watermark)),
                );
            }
        }
        closed
    }

    /// Stream Analytics' sessions: a session cut at its check point while events could still
    /// follow within the timeout goes on as the next session, opened at the check point with
    /// no event yet (it makes no output unless an event comes).
    fn continue_session(&mut self, spec: WindowSpec, id: &GroupId, window: &OpenWindow) {
        let WindowSpec::StreamAnalytics(AsaWindow::Session {
            timeout,
            max_duration: Some(max),
        }) = spec
        else {
            return;
        };
        let cut = asa_cut(id.1, max);
        let natural = window.last_event.saturating_add(timeout);
        if window.end != cut.saturating_add(1) || natural <= cut {
            return;
        }
        let end = natural.min(asa_cut(cut, max)).saturating_add(1);
        self.start_session(&id.0, cut, end, window.last_event);
    }

    /// Sliding windows: forgets the recent events no window can hold any more (at or before the
    /// watermark minus `size`), and all of them once the input `ended`.
    pub(super) fn forget_recent(&mut self, size: i64, ended: bool) {
        let horizon = self.watermark.map(|w| w.saturating_sub(size));
        self.recent.retain(|_, events| {
            if ended {
                return false;
            }
            if let Some(horizon) = horizon {
                while events.front().is_some_and(|e| e.time() <= horizon) {
                    events.pop_front();
                }
            }
            !events.is_empty()
        });
    }
}

/// Moves the open window `(key, start)` to end at `end`, keeping the closing order in step, with
/// its newest event at `last`.
fn extend(
    closing: &mut BTreeSet<(i64, Arc<str>, i64)>,
    window: &mut OpenWindow,
    (key, start): (&Arc<str>, i64),
    end: i64,
    last: i64,
) {
    if end != window.end {
        closing.remove(&(window.end, key.clone(), start));
        closing.insert((end, key.clone(), start));
        window.end = end;
    }
    window.last_event = last;
}

/// Starts of the tumbling or hopping windows `[start, start + size)` that contain `time`,
/// latest first, the starts falling on `align` plus multiples of `hop`.
fn window_starts(time: i64, size: i64, hop: i64, align: i64) -> impl Iterator<Item = i64> {
    let last = align + (time - align).div_euclid(hop) * hop;
    (0..)
        .map(move |k: i64| last - k * hop)
        .take_while(move |start| start + size > time)
}

/// Stream Analytics' tumbling or hopping windows `(e − size, e]` containing `time`, their ends
/// `e` on `offset` plus multiples of `hop`, as held: `(e − size + 1, e + 1)`, latest first.
fn asa_windows(time: i64, size: i64, hop: i64, offset: i64) -> impl Iterator<Item = (i64, i64)> {
    // `(e − size, e]` is `[e − size + 1, e + 1)`: starts on `offset + 1 − size` plus hops.
    let align = (offset + 1 - size).rem_euclid(hop);
    window_starts(time, size, hop, align).map(move |s| (s, s + size))
}

/// Stream Analytics' check point of a session starting at `start`: the first multiple of `max`
/// (since the epoch) at least `max` after `start`. A session still going there ends there.
pub(super) fn asa_cut(start: i64, max: i64) -> i64 {
    let at_least = start.saturating_add(max);
    at_least
        .saturating_add(max - 1)
        .div_euclid(max)
        .saturating_mul(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event whose body is its group key (see [`key`]) at `time`.
    fn event(position: u64, key: &str, time: i64) -> Event {
        let mut event = Event::new(0, position, key.as_bytes().to_vec());
        event.event_time = Some(time);
        event
    }

    /// The body is the key; `!` has none.
    fn key(event: &Event) -> Result<Arc<str>, String> {
        match std::str::from_utf8(&event.body) {
            Ok("!") => Err("no key".to_owned()),
            Ok(key) => Ok(Arc::from(key)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn events(events: &[(&str, i64)]) -> Vec<Event> {
        events
            .iter()
            .enumerate()
            .map(|(i, (key, time))| event(i as u64 + 1, key, *time))
            .collect()
    }

    /// The open windows as (key, start, end), in the order they close; checks that the closing
    /// order and the windows agree.
    fn open_windows(state: &WindowState) -> Vec<(String, i64, i64)> {
        assert_eq!(state.closing.len(), state.windows.len());
        state
            .closing
            .iter()
            .map(|(end, key, start)| {
                let window = state.windows.get(&(key.clone(), *start));
                assert_eq!(
                    window.map(|w| w.end),
                    Some(*end),
                    "closing order of {key} {start}"
                );
                (key.to_string(), *start, *end)
            })
            .collect()
    }

    type Groups = &'static [(&'static str, i64, i64, &'static [u32])];

    struct Case {
        name: &'static str,
        spec: WindowSpec,
        watermark: Option<i64>,
        events: &'static [(&'static str, i64)],
        /// (key, start, end when first assigned, members).
        groups: Groups,
        /// (event, refusal): `Some(end)` late, `None` no key.
        refused: &'static [(u32, Option<i64>)],
        /// Open windows afterwards, in the order they close.
        open: &'static [(&'static str, i64, i64)],
        /// Sliding windows: each key's recent event times afterwards.
        recent: &'static [(&'static str, &'static [i64])],
    }

    const TUMBLING: WindowSpec = WindowSpec::Tumbling { size: 10 };
    const HOPPING: WindowSpec = WindowSpec::Hopping { size: 10, hop: 5 };
    const SLIDING: WindowSpec = WindowSpec::Sliding { size: 10 };
    const SESSION: WindowSpec = WindowSpec::Session {
        gap: 10,
        max_duration: None,
    };

    const ASA_TUMBLING: WindowSpec = WindowSpec::StreamAnalytics(AsaWindow::Tumbling {
        size: 10,
        offset: 0,
    });
    const ASA_HOPPING: WindowSpec = WindowSpec::StreamAnalytics(AsaWindow::Hopping {
        size: 10,
        hop: 5,
        offset: 0,
    });
    const ASA_SLIDING: WindowSpec = WindowSpec::StreamAnalytics(AsaWindow::Sliding { size: 10 });
    const ASA_SESSION: WindowSpec = WindowSpec::StreamAnalytics(AsaWindow::Session {
        timeout: 10,
        max_duration: None,
    });
    const ASA_SESSION_MAX: WindowSpec = WindowSpec::StreamAnalytics(AsaWindow::Session {
        timeout: 10,
        max_duration: Some(20),
    });

    #[test]
    fn events_are_assigned_to_their_windows() {
        let cases = [
            Case {
                name: "tumbling: one window per event, grouped by key and start",
                spec: TUMBLING,
                watermark: None,
                events: &[("a", 3), ("a", 12), ("b", 7), ("a", 9)],
                groups: &[
                    ("a", 0, 10, &[0, 3]),
                    ("a", 10, 20, &[1]),
                    ("b", 0, 10, &[2]),
                ],
                refused: &[],
                open: &[("a", 0, 10), ("b", 0, 10), ("a", 10, 20)],
                recent: &[],
            },
            Case {
                name: "tumbling: an event at a window's end starts the next; times before 1970",
                spec: TUMBLING,
                watermark: None,
                events: &[("a", 10), ("a", -3)],
                groups: &[("a", 10, 20, &[0]), ("a", -10, 0, &[1])],
                refused: &[],
                open: &[("a", -10, 0), ("a", 10, 20)],
                recent: &[],
            },
            Case {
                name: "tumbling: late when its window ended at or before the watermark",
                spec: TUMBLING,
                watermark: Some(20),
                events: &[("a", 15), ("a", 20), ("a", 19)],
                groups: &[("a", 20, 30, &[1])],
                refused: &[(0, Some(15)), (2, Some(19))],
                open: &[("a", 20, 30)],
                recent: &[],
            },
            Case {
                name: "tumbling: a window ending just after the watermark is still open",
                spec: TUMBLING,
                watermark: Some(19),
                events: &[("a", 15)],
                groups: &[("a", 10, 20, &[0])],
                refused: &[],
                open: &[("a", 10, 20)],
                recent: &[],
            },
            Case {
                name: "hopping: every window containing the event, latest first",
                spec: HOPPING,
                watermark: None,
                events: &[("a", 12), ("a", 14)],
                groups: &[("a", 10, 20, &[0, 1]), ("a", 5, 15, &[0, 1])],
                refused: &[],
                open: &[("a", 5, 15), ("a", 10, 20)],
                recent: &[],
            },
            Case {
                name: "hopping: only the windows still open; late when none is",
                spec: HOPPING,
                watermark: Some(15),
                events: &[("a", 12), ("a", 9)],
                groups: &[("a", 10, 20, &[0])],
                refused: &[(1, Some(9))],
                open: &[("a", 10, 20)],
                recent: &[],
            },
            Case {
                name: "sliding: a window (t - size, t] per event, the event kept in time order",
                spec: SLIDING,
                watermark: None,
                events: &[("a", 5), ("a", 3), ("b", 5)],
                groups: &[],
                refused: &[],
                open: &[("a", -6, 4), ("a", -4, 6), ("b", -4, 6)],
                recent: &[("a", &[3, 5]), ("b", &[5])],
            },
            Case {
                name: "sliding: late when its window ends at or before the watermark",
                spec: SLIDING,
                watermark: Some(10),
                events: &[("a", 9), ("a", 10)],
                groups: &[],
                refused: &[(0, Some(10))],
                open: &[("a", 1, 11)],
                recent: &[("a", &[10])],
            },
            Case {
                name: "session: extended within the gap, a new one after it, per key",
                spec: SESSION,
                watermark: None,
                events: &[("a", 0), ("a", 5), ("a", 20), ("b", 3)],
                groups: &[
                    ("a", 0, 10, &[0, 1]),
                    ("a", 20, 30, &[2]),
                    ("b", 3, 13, &[3]),
                ],
                refused: &[],
                open: &[("b", 3, 13), ("a", 0, 15), ("a", 20, 30)],
                recent: &[],
            },
            Case {
                name: "session: an event exactly `gap` after the last starts a new session",
                spec: SESSION,
                watermark: None,
                events: &[("a", 0), ("a", 10), ("a", 21)],
                groups: &[("a", 0, 10, &[0]), ("a", 10, 20, &[1]), ("a", 21, 31, &[2])],
                refused: &[],
                open: &[("a", 0, 10), ("a", 10, 20), ("a", 21, 31)],
                recent: &[],
            },
            Case {
                name: "session: an event 1 ms short of the gap extends it",
                spec: SESSION,
                watermark: None,
                events: &[("a", 0), ("a", 9)],
                groups: &[("a", 0, 10, &[0, 1])],
                refused: &[],
                open: &[("a", 0, 19)],
                recent: &[],
            },
            // Stream Analytics' windows `(s, e]` are held as `[s + 1, e + 1)`.
            Case {
                name: "asa tumbling: an event on a boundary ends its window, (0,10] (10,20]",
                spec: ASA_TUMBLING,
                watermark: None,
                events: &[("a", 10), ("a", 11), ("a", 20), ("a", 0)],
                groups: &[
                    ("a", 1, 11, &[0]),
                    ("a", 11, 21, &[1, 2]),
                    ("a", -9, 1, &[3]),
                ],
                refused: &[],
                open: &[("a", -9, 1), ("a", 1, 11), ("a", 11, 21)],
                recent: &[],
            },
            Case {
                name: "asa tumbling: the offset moves the ends, (3,13] (13,23]",
                spec: WindowSpec::StreamAnalytics(AsaWindow::Tumbling {
                    size: 10,
                    offset: 3,
                }),
                watermark: None,
                events: &[("a", 13), ("a", 14), ("a", 4), ("a", 3)],
                groups: &[
                    ("a", 4, 14, &[0, 2]),
                    ("a", 14, 24, &[1]),
                    ("a", -6, 4, &[3]),
                ],
                refused: &[],
                open: &[("a", -6, 4), ("a", 4, 14), ("a", 14, 24)],
                recent: &[],
            },
            Case {
                name: "asa tumbling: an event at the watermark still ends its open window",
                spec: ASA_TUMBLING,
                watermark: Some(10),
                events: &[("a", 10)],
                groups: &[("a", 1, 11, &[0])],
                refused: &[],
                open: &[("a", 1, 11)],
                recent: &[],
            },
            Case {
                name: "asa tumbling: late once the watermark passed the end",
                spec: ASA_TUMBLING,
                watermark: Some(11),
                events: &[("a", 10), ("a", 11)],
                groups: &[("a", 11, 21, &[1])],
                refused: &[(0, Some(10))],
                open: &[("a", 11, 21)],
                recent: &[],
            },
            Case {
                name: "asa hopping: every window (e - 10, e] with e >= t, e a multiple of 5",
                spec: ASA_HOPPING,
                watermark: None,
                events: &[("a", 10), ("a", 11)],
                groups: &[
                    ("a", 6, 16, &[0, 1]),
                    ("a", 1, 11, &[0]),
                    ("a", 11, 21, &[1]),
                ],
                refused: &[],
                open: &[("a", 1, 11), ("a", 6, 16), ("a", 11, 21)],
                recent: &[],
            },
            Case {
                name: "asa hopping: a hop not dividing the size keeps the ends aligned",
                spec: WindowSpec::StreamAnalytics(AsaWindow::Hopping {
                    size: 10,
                    hop: 4,
                    offset: 0,
                }),
                watermark: None,
                events: &[("a", 10), ("a", 12)],
                // (2,12] (6,16] for 10; (6,16] (10,20] and (2,12] for 12.
                groups: &[
                    ("a", 7, 17, &[0, 1]),
                    ("a", 3, 13, &[0, 1]),
                    ("a", 11, 21, &[1]),
                ],
                refused: &[],
                open: &[("a", 3, 13), ("a", 7, 17), ("a", 11, 21)],
                recent: &[],
            },
            Case {
                name: "asa sliding: a window where each event enters and where it leaves",
                spec: ASA_SLIDING,
                watermark: None,
                events: &[("a", 5), ("a", 3)],
                // (-5,5] and (5,15] for 5; (-7,3] and (3,13] for 3.
                groups: &[],
                refused: &[],
                open: &[("a", -6, 4), ("a", -4, 6), ("a", 4, 14), ("a", 6, 16)],
                recent: &[("a", &[3, 5])],
            },
            Case {
                name: "asa sliding: an event leaving where another enters shares its window",
                spec: ASA_SLIDING,
                watermark: None,
                events: &[("a", 0), ("a", 10)],
                groups: &[],
                refused: &[],
                open: &[("a", -9, 1), ("a", 1, 11), ("a", 11, 21)],
                recent: &[("a", &[0, 10])],
            },
            Case {
                name: "asa sliding: late when the window it enters has closed",
                spec: ASA_SLIDING,
                watermark: Some(10),
                events: &[("a", 9), ("a", 10)],
                groups: &[],
                refused: &[(0, Some(9))],
                open: &[("a", 1, 11), ("a", 11, 21)],
                recent: &[("a", &[10])],
            },
            Case {
                name: "asa session: an event exactly `timeout` after the last extends it",
                spec: ASA_SESSION,
                watermark: None,
                events: &[("a", 0), ("a", 10), ("a", 21)],
                groups: &[("a", 0, 11, &[0, 1]), ("a", 21, 32, &[2])],
                refused: &[],
                open: &[("a", 0, 21), ("a", 21, 32)],
                recent: &[],
            },
            Case {
                name: "asa session: cut exactly at max_duration from a start on a check point",
                spec: WindowSpec::StreamAnalytics(AsaWindow::Session {
                    timeout: 10,
                    max_duration: Some(20),
                }),
                watermark: None,
                events: &[("a", 0), ("a", 10), ("a", 20), ("a", 30)],
                // (0..20] is cut at the check point 20, the event at 20 in it; 30 opens (20, 40].
                groups: &[("a", 0, 11, &[0, 1, 2]), ("a", 20, 41, &[3])],
                refused: &[],
                open: &[("a", 0, 21), ("a", 20, 41)],
                recent: &[],
            },
            Case {
                name: "asa session: checked at multiples of max_duration, the next at the check point",
                spec: WindowSpec::StreamAnalytics(AsaWindow::Session {
                    timeout: 10,
                    max_duration: Some(20),
                }),
                watermark: None,
                events: &[
                    ("a", 5),
                    ("a", 15),
                    ("a", 25),
                    ("a", 35),
                    ("a", 40),
                    ("a", 45),
                ],
                // Started at 5, first checked at 40 (the first multiple of 20 at least 20 later).
                groups: &[("a", 5, 16, &[0, 1, 2, 3, 4]), ("a", 40, 56, &[5])],
                refused: &[],
                open: &[("a", 5, 41), ("a", 40, 56)],
                recent: &[],
            },
            Case {
                name: "asa session: late when event time plus timeout is behind the watermark",
                spec: ASA_SESSION,
                watermark: Some(20),
                events: &[("a", 9), ("a", 10)],
                groups: &[("a", 10, 21, &[1])],
                refused: &[(0, Some(19))],
                open: &[("a", 10, 21)],
                recent: &[],
            },
            Case {
                name: "session: an earlier event joins the current session without moving it",
                spec: SESSION,
                watermark: None,
                events: &[("a", 10), ("a", 4)],
                groups: &[("a", 10, 20, &[0, 1])],
                refused: &[],
                open: &[("a", 10, 20)],
                recent: &[],
            },
            Case {
                name: "session: cut at max_duration, the next event starts a new one",
                spec: WindowSpec::Session {
                    gap: 10,
                    max_duration: Some(12),
                },
                watermark: None,
                events: &[("a", 0), ("a", 8), ("a", 11), ("a", 12)],
                groups: &[("a", 0, 10, &[0, 1, 2]), ("a", 12, 22, &[3])],
                refused: &[],
                open: &[("a", 0, 12), ("a", 12, 22)],
                recent: &[],
            },
            Case {
                name: "session: late when event time plus gap is at or before the watermark",
                spec: WindowSpec::Session {
                    gap: 5,
                    max_duration: None,
                },
                watermark: Some(20),
                events: &[("a", 15), ("a", 16)],
                groups: &[("a", 16, 21, &[1])],
                refused: &[(0, Some(20))],
                open: &[("a", 16, 21)],
                recent: &[],
            },
            Case {
                name: "session: opened, then refused when max_duration ends it before the watermark",
                spec: WindowSpec::Session {
                    gap: 10,
                    max_duration: Some(1),
                },
                watermark: Some(5),
                events: &[("a", 3)],
                groups: &[],
                refused: &[(0, Some(3))],
                open: &[("a", 3, 4)],
                recent: &[],
            },
            Case {
                name: "snapshot: the events of one instant, per key",
                spec: WindowSpec::Snapshot,
                watermark: Some(5),
                events: &[("a", 5), ("b", 5), ("a", 5), ("a", 6), ("a", 4)],
                groups: &[("a", 5, 6, &[0, 2]), ("b", 5, 6, &[1]), ("a", 6, 7, &[3])],
                refused: &[(4, Some(4))],
                open: &[("a", 5, 6), ("b", 5, 6), ("a", 6, 7)],
                recent: &[],
            },
            Case {
                name: "an event without a key is refused; the others keep their indices",
                spec: TUMBLING,
                watermark: None,
                events: &[("a", 1), ("!", 2), ("a", 3)],
                groups: &[("a", 0, 10, &[0, 2])],
                refused: &[(1, None)],
                open: &[("a", 0, 10)],
                recent: &[],
            },
            Case {
                name: "nothing to assign",
                spec: SESSION,
                watermark: Some(0),
                events: &[],
                groups: &[],
                refused: &[],
                open: &[],
                recent: &[],
            },
        ];
        for case in &cases {
            let mut state = WindowState {
                watermark: case.watermark,
                ..WindowState::default()
            };
            let assigned = state.assign(case.spec, &events(case.events), key);
            let groups: Vec<(String, i64, i64, Vec<u32>)> = assigned
                .groups
                .iter()
                .map(|g| (g.id.0.to_string(), g.id.1, g.end, g.members.clone()))
                .collect();
            let expected: Vec<(String, i64, i64, Vec<u32>)> = case
                .groups
                .iter()
                .map(|(k, start, end, members)| (k.to_string(), *start, *end, members.to_vec()))
                .collect();
            assert_eq!(groups, expected, "{}: groups", case.name);
            let refused: Vec<(u32, Option<i64>)> = assigned
                .refused
                .iter()
                .map(|(member, refusal)| match refusal {
                    Refusal::Late { end } => (*member, Some(*end)),
                    Refusal::NoKey(_) => (*member, None),
                })
                .collect();
            assert_eq!(refused, case.refused, "{}: refused", case.name);
            let open: Vec<(String, i64, i64)> = case
                .open
                .iter()
                .map(|(k, start, end)| (k.to_string(), *start, *end))
                .collect();
            assert_eq!(open_windows(&state), open, "{}: open windows", case.name);
            let mut recent: Vec<(String, Vec<i64>)> = state
                .recent
                .iter()
                .map(|(k, events)| (k.to_string(), events.iter().map(Event::time).collect()))
                .collect();
            recent.sort();
            let expected: Vec<(String, Vec<i64>)> = case
                .recent
                .iter()
                .map(|(k, times)| (k.to_string(), times.to_vec()))
                .collect();
            assert_eq!(recent, expected, "{}: recent events", case.name);
            assert_eq!(state.watermark, case.watermark, "{}: watermark", case.name);
        }
    }

    struct CloseCase {
        name: &'static str,
        spec: WindowSpec,
        events: &'static [(&'static str, i64)],
        /// (watermark, position).
        marks: &'static [(i64, u64)],
        /// (key, start, end, position of the closing mark), in order.
        closed: &'static [(&'static str, i64, i64, u64)],
        /// The watermark afterwards.
        watermark: Option<i64>,
        /// Windows still open.
        left: usize,
    }

    #[test]
    fn watermarks_close_windows_in_order() {
        let cases = [
            CloseCase {
                name: "a mark before the end closes nothing",
                spec: TUMBLING,
                events: &[("a", 3)],
                marks: &[(9, 1)],
                closed: &[],
                watermark: Some(9),
                left: 1,
            },
            CloseCase {
                name: "a mark at the end closes it",
                spec: TUMBLING,
                events: &[("a", 3)],
                marks: &[(10, 1)],
                closed: &[("a", 0, 10, 1)],
                watermark: Some(10),
                left: 0,
            },
            CloseCase {
                name: "by end, then key, each with the position of the mark that closed it",
                spec: TUMBLING,
                events: &[("b", 3), ("a", 3), ("a", 13), ("b", 25)],
                marks: &[(10, 1), (20, 2)],
                closed: &[("a", 0, 10, 1), ("b", 0, 10, 1), ("a", 10, 20, 2)],
                watermark: Some(20),
                left: 1,
            },
            CloseCase {
                name: "hopping windows close one by one",
                spec: HOPPING,
                events: &[("a", 12)],
                marks: &[(15, 4), (19, 5), (20, 6)],
                closed: &[("a", 5, 15, 4), ("a", 10, 20, 6)],
                watermark: Some(20),
                left: 0,
            },
            CloseCase {
                name: "a mark behind the watermark does not move it back",
                spec: TUMBLING,
                events: &[("a", 25)],
                marks: &[(20, 1), (15, 2)],
                closed: &[],
                watermark: Some(20),
                left: 1,
            },
            CloseCase {
                name: "the end of the input closes everything and leaves the watermark",
                spec: TUMBLING,
                events: &[("a", 3), ("b", 25)],
                marks: &[(END_OF_INPUT, 7)],
                closed: &[("a", 0, 10, 7), ("b", 20, 30, 7)],
                watermark: None,
                left: 0,
            },
            CloseCase {
                name: "sessions close at their last event plus the gap",
                spec: SESSION,
                events: &[("a", 0), ("a", 8), ("b", 5)],
                marks: &[(15, 1), (18, 2)],
                closed: &[("b", 5, 15, 1), ("a", 0, 18, 2)],
                watermark: Some(18),
                left: 0,
            },
            CloseCase {
                name: "asa tumbling: (0,10] closes once the watermark passes 10",
                spec: ASA_TUMBLING,
                events: &[("a", 10)],
                marks: &[(10, 1), (11, 2)],
                closed: &[("a", 1, 11, 2)],
                watermark: Some(11),
                left: 0,
            },
            CloseCase {
                name: "asa session: cut at its check point, it goes on there with no event yet",
                spec: ASA_SESSION_MAX,
                events: &[("a", 0), ("a", 10), ("a", 20)],
                marks: &[(21, 1), (31, 2)],
                closed: &[("a", 0, 21, 1), ("a", 20, 31, 2)],
                watermark: Some(31),
                left: 0,
            },
            CloseCase {
                name: "asa session: ended by its timeout before the check point, it does not go on",
                spec: ASA_SESSION_MAX,
                events: &[("a", 0), ("a", 5)],
                marks: &[(16, 1)],
                closed: &[("a", 0, 16, 1)],
                watermark: Some(16),
                left: 0,
            },
            CloseCase {
                name: "no marks",
                spec: SESSION,
                events: &[("a", 0)],
                marks: &[],
                closed: &[],
                watermark: None,
                left: 1,
            },
        ];
        for case in &cases {
            let mut state = WindowState::default();
            state.assign(case.spec, &events(case.events), key);
            let marks: Vec<Mark> = case
                .marks
                .iter()
                .map(|(watermark, position)| Mark {
                    watermark: *watermark,
                    position: *position,
                })
                .collect();
            let closed: Vec<(String, i64, i64, u64)> = state
                .close(case.spec, &marks)
                .into_iter()
                .map(|c| (c.id.0.to_string(), c.id.1, c.window.end, c.position))
                .collect();
            let expected: Vec<(String, i64, i64, u64)> = case
                .closed
                .iter()
                .map(|(k, start, end, position)| (k.to_string(), *start, *end, *position))
                .collect();
            assert_eq!(closed, expected, "{}: closed", case.name);
            assert_eq!(state.watermark, case.watermark, "{}: watermark", case.name);
            assert_eq!(
                open_windows(&state).len(),
                case.left,
                "{}: still open",
                case.name
            );
        }
    }

    #[test]
    fn a_closed_session_is_forgotten_unless_a_newer_one_is_current() {
        let mut state = WindowState::default();
        state.assign(SESSION, &events(&[("a", 0), ("a", 30), ("b", 0)]), key);
        let closed = state.close(
            SESSION,
            &[Mark {
                watermark: 10,
                position: 1,
            }],
        );
        assert_eq!(closed.len(), 2, "a's first session and b's");
        assert_eq!(
            state.sessions.get("a"),
            Some(&30),
            "a's current session stays"
        );
        assert_eq!(state.sessions.get("b"), None, "b's session is gone");
        // The next event of b starts a new session, even within the gap of the closed one.
        let assigned = state.assign(SESSION, &events(&[("b", 9)]), key);
        let starts: Vec<i64> = assigned.groups.iter().map(|g| g.id.1).collect();
        assert_eq!(starts, [9]);
    }

    #[test]
    fn an_asa_session_cut_at_its_check_point_goes_on_from_there() {
        let mut state = WindowState::default();
        state.assign(
            ASA_SESSION_MAX,
            &events(&[("a", 0), ("a", 10), ("a", 20)]),
            key,
        );
        let closed = state.close(
            ASA_SESSION_MAX,
            &[Mark {
                watermark: 21,
                position: 1,
            }],
        );
        assert_eq!(closed.len(), 1, "(0, 20] closed at its check point");
        // 25 is within the timeout of 20: it joins the session opened at the check point 20.
        let assigned = state.assign(ASA_SESSION_MAX, &events(&[("a", 25)]), key);
        let groups: Vec<(i64, i64)> = assigned.groups.iter().map(|g| (g.id.1, g.end)).collect();
        assert_eq!(groups, [(20, 36)]);
        // After the timeout, a new session starts at the event.
        let assigned = state.assign(ASA_SESSION_MAX, &events(&[("a", 36)]), key);
        let starts: Vec<i64> = assigned.groups.iter().map(|g| g.id.1).collect();
        assert_eq!(starts, [36]);
    }

    #[test]
    fn asa_check_points_are_multiples_of_max_duration() {
        assert_eq!(
            asa_cut(0, 20),
            20,
            "a start on a check point: max_duration later"
        );
        assert_eq!(asa_cut(1, 20), 40, "up to twice max_duration");
        assert_eq!(asa_cut(20, 20), 40);
        assert_eq!(asa_cut(-5, 20), 20);
    }

    #[test]
    fn recent_events_are_forgotten_behind_the_horizon() {
        let mut state = WindowState::default();
        state.assign(SLIDING, &events(&[("a", 1), ("a", 5), ("b", 2)]), key);
        state.close(
            SLIDING,
            &[Mark {
                watermark: 12,
                position: 1,
            }],
        );
        state.forget_recent(10, false);
        let times: Vec<i64> = state.recent.get("a").map_or(Vec::new(), |events| {
            events.iter().map(Event::time).collect()
        });
        assert_eq!(times, [5], "at or before 12 - 10 is forgotten");
        assert!(
            !state.recent.contains_key("b"),
            "a key left with nothing is dropped"
        );
        state.forget_recent(10, true);
        assert!(
            state.recent.is_empty(),
            "the end of the input forgets everything"
        );
    }

    #[test]
    fn tumbling_and_hopping_starts() {
        let tumbling: Vec<i64> = window_starts(12, 5, 5, 0).collect();
        assert_eq!(tumbling, [10]);
        let hopping: Vec<i64> = window_starts(12, 10, 5, 0).collect();
        assert_eq!(hopping, [10, 5]);
        let negative: Vec<i64> = window_starts(-3, 10, 5, 0).collect();
        assert_eq!(negative, [-5, -10]);
        assert_eq!(window_starts(10, 5, 5, 0).collect::<Vec<_>>(), [10]);
    }
}
