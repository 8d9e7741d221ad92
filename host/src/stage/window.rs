//! The window stage: tumbling, hopping, sliding, session and snapshot windows in event time,
//! under Weir's semantics or Azure Stream Analytics' ([`WindowSpec`], [`AsaWindow`]), grouped by
//! fields the pipeline names, with accumulators a window-aggregate plugin defines and the host
//! keeps. Every window is held as a half-open `[start, end)` of whole milliseconds (ASA's
//! `(s, e]` as `[s + 1, e + 1)`), so assignment, closing and lateness are one code.
//!
//! - [`Stage::process`](super::Stage::process) assigns each event to its (key, window) groups and folds the batch into
//!   the groups' accumulators in one call of the plugin's `fold` (sliding windows keep the key's
//!   recent events instead and fold them when a window closes).
//! - [`Stage::watermarks`](super::Stage::watermarks) closes, mark by mark, the windows whose end the watermark passes, and
//!   calls `finish` once for all of them; each output carries the position of the mark that closed
//!   its window, the window's last instant as event time (the held end minus 1 ms: ASA's
//!   `System.Timestamp()`, the window's end, under its semantics), and the group's fields and the
//!   window's bounds as the semantics show them, set by the host.
//! - Events arrive in event-time order (see [`crate::time`]), so folding a whole batch before
//!   closing its marks' windows is exact: an event is never behind a window that closed before it.
//!   An event for a window that has already closed (possible only for records of an earlier stage)
//!   is refused as late.
//! - A trap in `fold` or `finish` discards nothing the host holds: the call is retried one event
//!   (one window) at a time, and only the event (window) that traps goes to the dead letters.
//!   While a new version is on probation, an event (window) it traps on is folded (finished) by
//!   the version it replaced, with the same accumulators (see [`super::plugin_stage`]); only if that
//!   traps too does it go to the dead letters.
//! - The stage follows its version slot at batch boundaries ([`Stage::batch_boundary`](super::Stage::batch_boundary)).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{empty_batch, fill_batch};
use super::plugin_stage::Restored;
use super::plugin_stage::{
    AnswerError, AnswerRecord, Answers, PluginCall, PluginCore, PluginStage, SnapshotFormat,
    StageKind, StatefulKind, Trapped, Turn, Units, host_rejections, laid_out, read_answer,
    read_snapshot_start, restored, write_snapshot_start,
};
use super::transform::labelled_lineage;
use super::window_assign::{Closed, GroupId, OpenWindow, Refusal, WindowState};
use super::{Rejected, RejectionKind, StageError, StageOutput};
use crate::codec::DecodeError;
use crate::config::{WindowConfig, WindowKind, WindowSemantics};
use crate::event::Event;
use crate::json::{FieldValue, top_level_fields, top_level_keys};
use crate::metrics::names;
use crate::plugin::bindings::{
    EventBatch, FinishRequest, FoldRequest, FoldResponse, OutputBatch, Window as WitWindow,
};
use crate::plugin::columns::{self, push_u32};
use crate::plugin::{CallError, KeyedState, PluginInstance};
use crate::time::{END_OF_INPUT, Mark, format_millis};

/// What kind of windows a stage makes, with durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// `[k·size, (k+1)·size)`.
    Tumbling {
        /// Window length.
        size: i64,
    },
    /// `[k·hop, k·hop + size)`.
    Hopping {
        /// Window length.
        size: i64,
        /// Distance between window starts.
        hop: i64,
    },
    /// For each event time `t` of a key, `(t − size, t]`.
    Sliding {
        /// Window length.
        size: i64,
    },
    /// A key's events with gaps shorter than `gap`, cut `max_duration` after its first event.
    Session {
        /// A gap this long or longer ends a session.
        gap: i64,
        /// Longest session.
        max_duration: Option<i64>,
    },
    /// Azure Stream Analytics' windows, bounds `(start, end]`.
    StreamAnalytics(AsaWindow),
    /// A key's events at the same instant `t` (either semantics), held as `[t, t + 1)`.
    Snapshot,
}

/// Azure Stream Analytics' windows, with durations in milliseconds. Their bounds are
/// `(start, end]`; the host keeps each as the equal half-open `[start + 1, end + 1)` of whole
/// milliseconds, so closing and lateness work as for Weir's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsaWindow {
    /// `(e − size, e]` for every `e = offset + k·size`.
    Tumbling {
        /// Window length.
        size: i64,
        /// Where the ends fall, after the epoch (below `size`).
        offset: i64,
    },
    /// `(e − size, e]` for every `e = offset + k·hop`: the ends are aligned, so with a hop that
    /// does not divide the size the starts are not.
    Hopping {
        /// Window length.
        size: i64,
        /// Distance between window ends.
        hop: i64,
        /// Where the ends fall, after the epoch (below `hop`).
        offset: i64,
    },
    /// `(t − size, t]` for every `t` at which an event of the key enters (its time) or leaves
    /// (its time plus `size`); windows left empty make no output.
    Sliding {
        /// Window length.
        size: i64,
    },
    /// A key's events with gaps of at most `timeout`; cut at the first multiple of
    /// `max_duration` (since the epoch) at least `max_duration` after the session's start, where
    /// the next session starts if the events go on within `timeout`.
    Session {
        /// A gap longer than this ends a session.
        timeout: i64,
        /// The maximum duration, and the distance between its check points.
        max_duration: Option<i64>,
    },
}

impl WindowSpec {
    /// Sliding windows (either semantics): their size.
    pub(super) fn sliding_size(self) -> Option<i64> {
        match self {
            WindowSpec::Sliding { size }
            | WindowSpec::StreamAnalytics(AsaWindow::Sliding { size }) => Some(size),
            _ => None,
        }
    }

    /// The bounds a window held as `[start, end)` has in these semantics, as outputs show them
    /// (the plugin's `window` record carries the held bounds, start inclusive and end exclusive,
    /// as the WIT contract says): Stream Analytics' `(start, end]` is `[start + 1, end + 1)`
    /// held, except
    /// that a session's start is its first event's time (included) or the check point it went
    /// on from. Weir's windows show what they hold (sliding windows aside, see
    /// [`Windows::shown_bounds`]).
    pub(super) fn shown(self, start: i64, end: i64) -> (i64, i64) {
        match self {
            WindowSpec::Snapshot => (start, start),
            WindowSpec::StreamAnalytics(AsaWindow::Session { .. }) => (start, end - 1),
            WindowSpec::StreamAnalytics(_) => (start - 1, end - 1),
            _ => (start, end),
        }
    }
}

/// A window stage's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSettings {
    /// The windows.
    pub spec: WindowSpec,
    /// Fields making up the group key.
    pub group_by: Vec<String>,
    /// Output field for the window's start.
    pub start_field: String,
    /// Output field for the window's end.
    pub end_field: String,
}

impl WindowSettings {
    /// The settings a stage's `window` table gives (validated when the configuration loaded).
    pub fn from_config(config: &WindowConfig) -> Self {
        let millis = |d: Option<crate::config::ConfigDuration>| {
            d.map_or(1, |d| {
                i64::try_from(d.get().as_millis())
                    .unwrap_or(i64::MAX)
                    .max(1)
            })
        };
        if config.semantics() == WindowSemantics::StreamAnalytics {
            // Unlike the lengths, an offset may be zero.
            let offset = config.offset.map_or(0, |d| {
                i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX)
            });
            let asa = match config.kind {
                WindowKind::Tumbling => AsaWindow::Tumbling {
                    size: millis(config.size),
                    offset,
                },
                WindowKind::Hopping => AsaWindow::Hopping {
                    size: millis(config.size),
                    hop: millis(config.hop),
                    offset,
                },
                WindowKind::Sliding => AsaWindow::Sliding {
                    size: millis(config.size),
                },
                WindowKind::Session => AsaWindow::Session {
                    timeout: millis(config.gap),
                    max_duration: config.max_duration.map(|d| millis(Some(d))),
                },
                // The same instant in both semantics.
                WindowKind::Snapshot => {
                    return WindowSettings {
                        spec: WindowSpec::Snapshot,
                        group_by: config.group_by.clone(),
                        start_field: config.start_field.clone(),
                        end_field: config.end_field.clone(),
                    };
                }
            };
            return WindowSettings {
                spec: WindowSpec::StreamAnalytics(asa),
                group_by: config.group_by.clone(),
                start_field: config.start_field.clone(),
                end_field: config.end_field.clone(),
            };
        }
        let spec = match config.kind {
            WindowKind::Tumbling => WindowSpec::Tumbling {
                size: millis(config.size),
            },
            WindowKind::Hopping => WindowSpec::Hopping {
                size: millis(config.size),
                hop: millis(config.hop),
            },
            WindowKind::Sliding => WindowSpec::Sliding {
                size: millis(config.size),
            },
            WindowKind::Session => WindowSpec::Session {
                gap: millis(config.gap),
                max_duration: config.max_duration.map(|d| millis(Some(d))),
            },
            WindowKind::Snapshot => WindowSpec::Snapshot,
        };
        WindowSettings {
            spec,
            group_by: config.group_by.clone(),
            start_field: config.start_field.clone(),
            end_field: config.end_field.clone(),
        }
    }
}

/// A window being folded: its id, its accumulator and its events (indices into a batch).
struct FoldGroup {
    id: GroupId,
    end: i64,
    accumulator: Vec<u8>,
    members: Vec<u32>,
}

/// The window-aggregate kind of [`PluginStage`]: the open windows, their accumulators and how
/// events are assigned to them.
pub struct Windows {
    settings: WindowSettings,
    state: WindowState,
    /// The lineage of the latest event the stage received (its rows name it before their own
    /// version): the versions of the stages upstream. Checkpointed with the windows, so that
    /// rows a restored window makes before the next event still name them.
    upstream: Option<String>,
}

/// The window stage of one partition.
pub type WindowStage = PluginStage<Windows>;

impl StatefulKind for Windows {
    type Settings = WindowSettings;

    fn restore(settings: Self::Settings, snapshot: Option<&[u8]>) -> Restored<Self> {
        let (keyed, (state, upstream)) = restored(snapshot, restore)?;
        Ok((
            keyed,
            Windows {
                settings,
                state,
                upstream,
            },
        ))
    }
}

impl PluginStage<Windows> {
    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.kind().state.windows.len()
    }
}

impl Windows {
    /// Folds `groups` (members index `events`) through the plugin, isolating an event that traps.
    /// Returns the new accumulators, in order; refused events go to `out`.
    fn fold(
        &mut self,
        core: &mut PluginCore,
        events: &[Event],
        groups: &[FoldGroup],
        out: &mut StageOutput,
    ) -> Result<Vec<Vec<u8>>, StageError> {
        let mut call = FoldCall {
            events,
            groups,
            batch: empty_batch(0),
            request: RefCell::new(empty_fold_request()),
            order: Vec::new(),
            unit: None,
            touched: Vec::new(),
            accumulators: Vec::new(),
        };
        let windows = groups.len();
        core.run(&mut call, Trapped::Fold { windows }, out)?;
        Ok(call.accumulators)
    }

    /// Produces the outputs of `closed` windows.
    fn finish(
        &self,
        core: &mut PluginCore,
        closed: &[Closed],
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        let mut call = FinishCall {
            windows: self,
            partition: core.partition(),
            closed,
            laid_out: closed,
            request: finish_request([].iter()),
        };
        let windows = closed.len();
        core.run(&mut call, Trapped::Finish { windows }, out)?;
        Ok(())
    }

    /// The window's bounds as its outputs show them: `[start, end)`, except sliding windows,
    /// shown as `(end − size, end]` (the event time that made them and the size before it), and
    /// Stream Analytics' windows, `(start, end]` (see [`WindowSpec::shown`]).
    fn shown_bounds(&self, id: &GroupId, window: &OpenWindow) -> (i64, i64) {
        match self.settings.spec {
            WindowSpec::Sliding { size } => (window.end - 1 - size, window.end - 1),
            spec => spec.shown(id.1, window.end),
        }
    }

    /// the plugin set them itself). The fields are spliced into the object's text, so that the
    /// plugin's own values reach the sinks byte for byte.
    fn complete(&self, payload: &[u8], closed: &Closed) -> Result<Bytes, String> {
        let keys = top_level_keys(payload).map_err(|e| {
            format!(
                "a window output must be a JSON object, to which the window's bounds are added: {e}"
            )
        })?;
        let (start, end) = self.shown_bounds(&closed.id, &closed.window);
        let mut added: Vec<(String, String)> = Vec::with_capacity(self.settings.group_by.len() + 2);
        if let Ok(group) =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&closed.id.0)
        {
            for (field, value) in group {
                added.push((field, value.to_string()));
            }
        }
        for (field, time) in [
            (&self.settings.start_field, start),
            (&self.settings.end_field, end),
        ] {
            added.push((field.clone(), format!("\"{}\"", format_millis(time))));
        }
        let text = payload.trim_ascii();
        // Checked above: the text is one object, `{...}`.
        let inner = text
            .get(1..text.len().saturating_sub(1))
            .unwrap_or_default()
            .trim_ascii();
        let mut out = Vec::with_capacity(text.len() + 128);
        out.push(b'{');
        out.extend_from_slice(inner);
        let mut first = inner.is_empty();
        for (field, value) in added {
            if keys.iter().any(|k| *k == field) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(serde_json::to_string(&field).unwrap_or_default().as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'}');
        Ok(Bytes::from(out))
    }

    /// The record of one output of a closed window.
    fn record(&self, partition: u32, closed: &Closed, body: Bytes) -> Event {
        let time = closed.window.end - 1;
        Event {
            partition,
            position: closed.position,
            source: crate::event::no_source(),
            key: None,
            event_time: Some(time),
            enqueued_time: time,
            properties: Vec::new(),
            body,
        }
    }

    /// A dead letter standing for a window whose outputs could not be made.
    fn window_letter(&self, partition: u32, closed: &Closed) -> Event {
        let (start, end) = self.shown_bounds(&closed.id, &closed.window);
        let key: serde_json::Value = serde_json::from_str(&closed.id.0).unwrap_or_default();
        let accumulator = String::from_utf8_lossy(&closed.window.accumulator).into_owned();
        let body = serde_json::json!({
            "window": { "key": key, "start": format_millis(start), "end": format_millis(end) },
            "accumulator": accumulator,
        });
        let mut record = self.record(partition, closed, Bytes::from(body.to_string()));
        record.key = Some(Bytes::from(closed.id.0.as_bytes().to_vec()));
        record
    }

    fn late(&self, event: &Event, end: i64) -> Rejected {
        Rejected {
            event: event.clone(),
            kind: RejectionKind::Late,
            reason: format!(
                "late: the window ending at {} closed when the watermark reached {}",
                format_millis(end),
                format_millis(self.state.watermark.unwrap_or(i64::MIN))
            ),
            plugin_version: None,
        }
    }
}

/// A `fold` call: the batch's windows at once, or, after a trap, one event with its windows.
struct FoldCall<'a> {
    events: &'a [Event],
    groups: &'a [FoldGroup],
    /// The batch layout the request is filled from.
    batch: EventBatch,
    /// The request laid out last; a cell because a call adds the instance's projection to it.
    request: RefCell<FoldRequest>,
    /// The members of the batch in order, one unit each in the retry.
    order: Vec<u32>,
    /// The unit laid out last, in the retry.
    unit: Option<usize>,
    /// The groups the event laid out last belongs to.
    touched: Vec<usize>,
    /// The groups' accumulators as folded so far.
    accumulators: Vec<Vec<u8>>,
}

impl PluginCall for FoldCall<'_> {
    type Answer = FoldResponse;

    fn isolate(&mut self, _windows: usize) -> usize {
        self.accumulators = self.groups.iter().map(|g| g.accumulator.clone()).collect();
        self.order = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter().copied())
            .filter(|&member| (member as usize) < self.events.len())
            .collect();
        self.order.sort_unstable();
        self.order.dedup();
        self.order.len()
    }

    fn lay_out(&mut self, units: Units) {
        self.unit = match units {
            Units::All => None,
            Units::One(unit) => Some(unit),
        };
        let Units::One(unit) = units else {
            *self.request.get_mut() = fold_request(&mut self.batch, self.events, self.groups, None);
            return;
        };
        let member = self.order[unit];
        self.touched = self
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.members.contains(&member))
            .map(|(i, _)| i)
            .collect();
        let single: Vec<FoldGroup> = self
            .touched
            .iter()
            .map(|&i| FoldGroup {
                id: self.groups[i].id.clone(),
                end: self.groups[i].end,
                accumulator: self.accumulators[i].clone(),
                members: vec![member],
            })
            .collect();
        *self.request.get_mut() = fold_request(&mut self.batch, self.events, &single, Some(member));
    }

    fn call(&self, instance: &mut PluginInstance) -> Result<FoldResponse, CallError> {
        instance.fold(&mut self.request.borrow_mut())
    }

    fn read(&mut self, response: FoldResponse, to: &mut Answers<'_>) -> Result<(), AnswerError> {
        let Some(unit) = self.unit else {
            return self.read_all(response, to);
        };
        let event = &self.events[self.order[unit] as usize];
        if let Some(rejection) = response.rejected.into_iter().next() {
            to.reject(event.clone(), rejection.reason);
        }
        if let Some(new) = split(&response.accumulators, &response.accumulator_ends)
            && new.len() == self.touched.len()
        {
            for (i, accumulator) in self.touched.iter().zip(new) {
                self.accumulators[*i] = accumulator;
            }
        }
        Ok(())
    }

    fn dead_letters(&self, unit: usize) -> Vec<Event> {
        vec![self.events[self.order[unit] as usize].clone()]
    }
}

impl FoldCall<'_> {
    /// The answer to the batch's call: every window's accumulator, and the events refused.
    fn read_all(
        &mut self,
        response: FoldResponse,
        to: &mut Answers<'_>,
    ) -> Result<(), AnswerError> {
        self.accumulators = split(&response.accumulators, &response.accumulator_ends)
            .filter(|accs| accs.len() == self.groups.len())
            .ok_or(AnswerError::Accumulators {
                accumulators: response.accumulator_ends.len() / 4,
                windows: self.groups.len(),
            })?;
        let mut refused = BTreeSet::new();
        for rejection in response.rejected {
            let Some(event) = self.events.get(rejection.event as usize) else {
                return Err(AnswerError::Rejection {
                    noun: "event",
                    index: rejection.event,
                    units: format!("a batch of {}", self.events.len()),
                });
            };
            // An event of overlapping windows is refused once per window: report it once.
            if refused.insert(rejection.event) {
                to.reject(event.clone(), rejection.reason);
            }
        }
        Ok(())
    }
}

/// A `finish` call: the closed windows at once, or, after a trap, one by one.
struct FinishCall<'a> {
    windows: &'a Windows,
    /// The partition of the records.
    partition: u32,
    closed: &'a [Closed],
    /// The windows the request laid out last.
    laid_out: &'a [Closed],
    request: FinishRequest,
}

impl PluginCall for FinishCall<'_> {
    type Answer = OutputBatch;

    fn lay_out(&mut self, units: Units) {
        self.laid_out = laid_out(self.closed, units);
        self.request = finish_request(self.laid_out.iter());
    }

    fn read(&mut self, output: OutputBatch, to: &mut Answers<'_>) -> Result<(), AnswerError> {
        let (windows, closed) = (self.windows, self.laid_out);
        let (records, rejected) = read_answer(output, closed.len(), "window")?;
        for AnswerRecord { unit, target, body } in records {
            let window = &closed[unit];
            match windows.complete(&body, window) {
                Ok(body) => {
                    let mut record = windows.record(self.partition, window, body);
                    to.label(&mut record.properties, windows.upstream.as_deref());
                    to.emit(target, record);
                }
                Err(reason) => to.refuse(
                    windows.window_letter(self.partition, window),
                    RejectionKind::InvalidOutput,
                    reason,
                ),
            }
        }
        for (unit, reason) in rejected {
            to.reject(windows.window_letter(self.partition, &closed[unit]), reason);
        }
        Ok(())
    }

    fn call(&self, instance: &mut PluginInstance) -> Result<OutputBatch, CallError> {
        instance.finish(&self.request)
    }

    fn dead_letters(&self, unit: usize) -> Vec<Event> {
        self.closed
            .get(unit)
            .map(|window| self.windows.window_letter(self.partition, window))
            .into_iter()
            .collect()
    }
}

/// Splits concatenated byte strings at `ends`.
fn split(bytes: &[u8], ends: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut start = 0usize;
    if !ends.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(columns::u32_count(ends));
    for end in columns::u32s(ends) {
        let end = end as usize;
        out.push(bytes.get(start..end)?.to_vec());
        start = end;
    }
    Some(out)
}

fn offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A fold request for `groups` over `events` (or only event `only`, for the retry).
fn fold_request(
    batch: &mut EventBatch,
    events: &[Event],
    groups: &[FoldGroup],
    only: Option<u32>,
) -> FoldRequest {
    let mut request = FoldRequest {
        windows: Vec::with_capacity(groups.len()),
        accumulator_ends: Vec::with_capacity(groups.len() * 4),
        member_ends: Vec::with_capacity(groups.len() * 4),
        ..empty_fold_request()
    };
    match only {
        Some(member) => {
            fill_batch(batch, std::slice::from_ref(&events[member as usize]));
        }
        None => fill_batch(batch, events),
    }
    request.events = std::mem::replace(batch, empty_batch(0));
    for group in groups {
        request.windows.push(WitWindow {
            key: group.id.0.to_string(),
            start: group.id.1,
            end: group.end,
        });
        request.accumulators.extend_from_slice(&group.accumulator);
        push_u32(
            &mut request.accumulator_ends,
            offset(request.accumulators.len()),
        );
        match only {
            Some(_) => push_u32(&mut request.members, 0),
            None => {
                for &member in &group.members {
                    push_u32(&mut request.members, member);
                }
            }
        }
        push_u32(&mut request.member_ends, offset(request.members.len() / 4));
    }
    request
}

fn finish_request<'a>(closed: impl Iterator<Item = &'a Closed>) -> FinishRequest {
    let mut request = FinishRequest {
        windows: Vec::new(),
        accumulators: Vec::new(),
        accumulator_ends: Vec::new(),
    };
    for window in closed {
        request.windows.push(WitWindow {
            key: window.id.0.to_string(),
            start: window.id.1,
            end: window.window.end,
        });
        request
            .accumulators
            .extend_from_slice(&window.window.accumulator);
        push_u32(
            &mut request.accumulator_ends,
            offset(request.accumulators.len()),
        );
    }
    request
}

/// The group key of `event`: a JSON object of the grouped fields (`quoted`: their names as JSON
/// text), built in `key` (a buffer kept across events).
fn group_key(
    group_by: &[String],
    quoted: &[String],
    event: &Event,
    key: &mut String,
) -> Result<Arc<str>, String> {
    if group_by.is_empty() {
        return Ok(Arc::from("{}"));
    }
    let values = top_level_fields(&event.body, group_by)?;
    key.clear();
    key.push('{');
    for (index, ((field, name), value)) in group_by.iter().zip(quoted).zip(values).enumerate() {
        if index > 0 {
            key.push(',');
        }
        key.push_str(name);
        key.push(':');
        match value {
            None => key.push_str("null"),
            // Text with nothing to escape is its JSON as it stands, quoted.
            Some(FieldValue::Text(text))
                if !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) =>
            {
                key.push('"');
                key.push_str(&text);
                key.push('"');
            }
            Some(value) => key.push_str(&value.to_json().ok_or_else(|| {
                format!("group-by field `{field}` is not a string, a number or null")
            })?),
        }
    }
    key.push('}');
    Ok(Arc::from(key.as_str()))
}

/// A fold request for nothing.
fn empty_fold_request() -> FoldRequest {
    FoldRequest {
        events: empty_batch(0),
        windows: Vec::new(),
        accumulators: Vec::new(),
        accumulator_ends: Vec::new(),
        members: Vec::new(),
        member_ends: Vec::new(),
    }
}

impl StageKind for Windows {
    const NAME: &'static str = "WindowStage";

    fn process(&mut self, turn: Turn<'_>, events: &[Event]) -> Result<(), StageError> {
        let Turn { core, out } = turn;
        if let Some(lineage) = events.iter().rev().find_map(labelled_lineage) {
            self.upstream = Some(lineage.to_owned());
        }
        let probe = core.probe(out);
        let result = self.fold_events(core, events, out);
        // Sliding windows fold their events when they close, not here.
        let handed = match self.settings.spec.sliding_size() {
            Some(_) => 0,
            None => (events.len() as u64).saturating_sub(host_rejections(probe.since(out))),
        };
        core.report(&probe, out, Some(handed));
        result
    }

    fn watermarks(&mut self, turn: Turn<'_>, marks: &[Mark]) -> Result<(), StageError> {
        let Turn { core, out } = turn;
        let probe = core.probe(out);
        let spec = self.settings.spec;
        let mut closed = self.state.close(spec, marks);
        if let Some(size) = spec.sliding_size() {
            if !closed.is_empty() {
                self.fold_sliding(core, &mut closed, out)?;
            }
            let ended = marks.iter().any(|m| m.watermark == END_OF_INPUT);
            self.state.forget_recent(size, ended);
        }
        if let WindowSpec::StreamAnalytics(AsaWindow::Session { .. }) = spec {
            // A session opened at a check point that no event followed holds nothing: like a
            // `GROUP BY` group without events, it makes no output.
            closed.retain(|c| !c.window.accumulator.is_empty());
        }
        if closed.is_empty() {
            return Ok(());
        }
        core.count(names::WINDOWS_CLOSED, &[], closed.len() as u64);
        let result = self.finish(core, &closed, out);
        core.report(&probe, out, Some(closed.len() as u64));
        result
    }

    fn snapshot(&self, keyed: &KeyedState) -> Vec<u8> {
        snapshot(keyed, &self.state, self.upstream.as_deref())
    }

    fn shadow_copy(&self) -> Option<Self> {
        Some(Windows {
            settings: self.settings.clone(),
            state: self.state.clone(),
            upstream: self.upstream.clone(),
        })
    }

    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        f.field("settings", &self.settings)
            .field("open_windows", &self.state.windows.len());
    }
}

impl Windows {
    /// Assigns `events` to their windows and folds them into the windows' accumulators.
    fn fold_events(
        &mut self,
        core: &mut PluginCore,
        events: &[Event],
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        let group_by = &self.settings.group_by;
        // The fields' names as JSON text, once per batch rather than once per event.
        let quoted: Vec<String> = group_by
            .iter()
            .map(|field| serde_json::to_string(field).unwrap_or_default())
            .collect();
        let mut key = String::with_capacity(64);
        let assigned = self.state.assign(self.settings.spec, events, |event| {
            group_key(group_by, &quoted, event, &mut key)
        });
        let mut late = 0u64;
        for (member, refusal) in assigned.refused {
            let Some(event) = events.get(member as usize) else {
                continue;
            };
            match refusal {
                Refusal::NoKey(reason) => out.rejected.push(Rejected {
                    event: event.clone(),
                    kind: RejectionKind::Unreadable,
                    reason,
                    plugin_version: None,
                }),
                Refusal::Late { end } => {
                    late += 1;
                    out.rejected.push(self.late(event, end));
                }
            }
        }
        core.count(names::WINDOW_LATE_EVENTS, &[], late);
        if assigned.groups.is_empty() {
            return Ok(());
        }
        // A window's accumulator and end as they are now (a session may have grown since its
        // first event of the batch).
        let groups: Vec<FoldGroup> = assigned
            .groups
            .into_iter()
            .map(|group| {
                let window = self.state.windows.get(&group.id);
                FoldGroup {
                    end: window.map_or(group.end, |w| w.end),
                    accumulator: window.map(|w| w.accumulator.clone()).unwrap_or_default(),
                    id: group.id,
                    members: group.members,
                }
            })
            .collect();
        let accumulators = self.fold(core, events, &groups, out)?;
        for (group, accumulator) in groups.iter().zip(accumulators) {
            if let Some(window) = self.state.windows.get_mut(&group.id) {
                window.accumulator = accumulator;
            }
        }
        Ok(())
    }

    /// Sliding windows fold their events when they close: each closed window's accumulator is
    /// made from the key's recent events in `(end − 1 − size, end − 1]`.
    fn fold_sliding(
        &mut self,
        core: &mut PluginCore,
        closed: &mut Vec<Closed>,
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        if let WindowSpec::StreamAnalytics(_) = self.settings.spec {
            // Stream Analytics' windows at an event's exit may be left empty: they make no
            // output (a `GROUP BY` group without events).
            let recent = &self.state.recent;
            closed.retain(|window| {
                let (start, end) = (window.id.1, window.window.end);
                recent.get(&window.id.0).is_some_and(|events| {
                    events.iter().any(|e| e.time() >= start && e.time() < end)
                })
            });
            if closed.is_empty() {
                return Ok(());
            }
        }
        let mut events: Vec<Event> = Vec::new();
        let mut groups: Vec<FoldGroup> = Vec::with_capacity(closed.len());
        for window in closed.iter() {
            let (start, end) = (window.id.1, window.window.end);
            let mut members = Vec::new();
            if let Some(recent) = self.state.recent.get(&window.id.0) {
                for event in recent {
                    let time = event.time();
                    if time >= start && time < end {
                        members.push(offset(events.len()));
                        events.push(event.clone());
                    }
                }
            }
            groups.push(FoldGroup {
                id: window.id.clone(),
                end,
                accumulator: Vec::new(),
                members,
            });
        }
        let accumulators = self.fold(core, &events, &groups, out)?;
        for (window, accumulator) in closed.iter_mut().zip(accumulators) {
            window.window.accumulator = accumulator;
        }
        Ok(())
    }
}

/// How the window state's format version is named in decoding errors.
const SNAPSHOT: SnapshotFormat = SnapshotFormat {
    field: "the window state's format version",
    expected: "window state format version 1",
};

/// The stage's state: the keyed state, the windows, and the upstream lineage after them (state
/// written before lineage was kept ends before it, and still restores).
fn snapshot(keyed: &KeyedState, state: &WindowState, upstream: Option<&str>) -> Vec<u8> {
    let mut w = write_snapshot_start(keyed);
    w.opt_i64(state.watermark);
    w.len(state.closing.len());
    for (end, key, start) in &state.closing {
        let window = state.windows.get(&(key.clone(), *start));
        w.str(key);
        w.i64(*start);
        w.i64(*end);
        w.i64(window.map_or(*start, |w| w.last_event));
        w.bytes(window.map_or(&[][..], |w| &w.accumulator));
    }
    let mut sessions: Vec<(&Arc<str>, &i64)> = state.sessions.iter().collect();
    sessions.sort();
    w.len(sessions.len());
    for (key, start) in sessions {
        w.str(key);
        w.i64(*start);
    }
    let mut recent: Vec<(&Arc<str>, &VecDeque<Event>)> = state.recent.iter().collect();
    recent.sort_by(|a, b| a.0.cmp(b.0));
    w.len(recent.len());
    for (key, events) in recent {
        w.str(key);
        w.len(events.len());
        for event in events {
            w.event(event);
        }
    }
    if let Some(upstream) = upstream {
        w.str(upstream);
    }
    w.finish()
}

/// The window state and the upstream lineage, as [`snapshot`] wrote them.
type WindowSnapshot = (WindowState, Option<String>);

fn restore(bytes: &[u8]) -> Result<(KeyedState, WindowSnapshot), DecodeError> {
    let (mut r, keyed) = read_snapshot_start(bytes, &SNAPSHOT)?;
    let mut state = WindowState {
        watermark: r.opt_i64("the stage's watermark")?,
        ..WindowState::default()
    };
    let mut keys: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |text: &str| -> Arc<str> {
        keys.entry(text.to_owned())
            .or_insert_with(|| Arc::from(text))
            .clone()
    };
    let windows = r.len("the number of open windows")?;
    for _ in 0..windows {
        let key = intern(r.str("a window's key")?);
        let start = r.i64("a window's start")?;
        let end = r.i64("a window's end")?;
        let last_event = r.i64("a window's newest event time")?;
        let accumulator = r.bytes("a window's accumulator")?.to_vec();
        state.closing.insert((end, key.clone(), start));
        state.windows.insert(
            (key, start),
            OpenWindow {
                end,
                last_event,
                accumulator,
            },
        );
    }
    let sessions = r.len("the number of sessions")?;
    for _ in 0..sessions {
        let key = intern(r.str("a session's key")?);
        let start = r.i64("a session's start")?;
        state.sessions.insert(key, start);
    }
    let recent = r.len("the number of keys with recent events")?;
    for _ in 0..recent {
        let key = intern(r.str("a key")?);
        let count = r.len("the number of recent events")?;
        let mut events = VecDeque::with_capacity(count);
        for _ in 0..count {
            events.push_back(r.event()?);
        }
        state.recent.insert(key, events);
    }
    let upstream = if r.is_empty() {
        None
    } else {
        Some(r.str("the upstream stages' versions")?.to_owned())
    };
    Ok((keyed, (state, upstream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_analytics_windows_show_their_inclusive_end() {
        let tumbling = WindowSpec::StreamAnalytics(AsaWindow::Tumbling {
            size: 10,
            offset: 0,
        });
        assert_eq!(tumbling.shown(1, 11), (0, 10), "(0, 10] held as [1, 11)");
        let session = WindowSpec::StreamAnalytics(AsaWindow::Session {
            timeout: 10,
            max_duration: None,
        });
        assert_eq!(
            session.shown(0, 21),
            (0, 20),
            "first event at 0, last at 10"
        );
        assert_eq!(WindowSpec::Snapshot.shown(7, 8), (7, 7), "the instant 7");
        let weir = WindowSpec::Tumbling { size: 10 };
        assert_eq!(weir.shown(0, 10), (0, 10));
    }

    #[test]
    fn state_snapshot_round_trips() {
        let mut state = WindowState {
            watermark: Some(42),
            ..WindowState::default()
        };
        let key: Arc<str> = Arc::from("{\"k\":1}");
        state.windows.insert(
            (key.clone(), 0),
            OpenWindow {
                end: 100,
                last_event: 7,
                accumulator: b"{\"n\":2}".to_vec(),
            },
        );
        state.closing.insert((100, key.clone(), 0));
        state.sessions.insert(key.clone(), 0);
        let mut event = Event::new(1, 9, &b"{}"[..]);
        event.event_time = Some(7);
        state.recent.insert(key, VecDeque::from([event]));
        let mut keyed = KeyedState::default();
        keyed.put(b"a".to_vec(), b"b".to_vec());
        keyed.commit();
        let bytes = snapshot(&keyed, &state, None);
        let (keyed_back, (state_back, upstream)) = restore(&bytes).expect("restore");
        assert_eq!(keyed_back, keyed);
        assert_eq!(state_back, state);
        assert_eq!(upstream, None);
        assert!(restore(&bytes[..bytes.len() - 1]).is_err());
        // With the upstream lineage after the windows; state without it still restores (above).
        let lineage = "route@0.1.0+abc,clean@def";
        let with = snapshot(&keyed, &state, Some(lineage));
        let (_, (state_back, upstream)) = restore(&with).expect("restore with lineage");
        assert_eq!(state_back, state);
        assert_eq!(upstream.as_deref(), Some(lineage));
    }
}
