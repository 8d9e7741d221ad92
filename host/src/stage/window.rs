//! The window stage: tumbling, hopping, sliding and session windows in event time, grouped by
//! fields the pipeline names, with accumulators a window-aggregate plugin defines and the host
//! keeps.
//!
//! - [`Stage::process`] assigns each event to its (key, window) groups and folds the batch into
//!   the groups' accumulators in one call of the plugin's `fold` (sliding windows keep the key's
//!   recent events instead and fold them when a window closes).
//! - [`Stage::watermarks`] closes, mark by mark, the windows whose end the watermark passes, and
//!   calls `finish` once for all of them; each output carries the position of the mark that closed
//!   its window, the window's end (minus 1 ms) as event time, and the group's fields and the
//!   window's bounds, set by the host.
//! - Events arrive in event-time order (see [`crate::time`]), so folding a whole batch before
//!   closing its marks' windows is exact: an event is never behind a window that closed before it.
//!   An event for a window that has already closed (possible only for records of an earlier stage)
//!   is refused as late.
//! - A trap in `fold` or `finish` discards nothing the host holds: the call is retried one event
//!   (one window) at a time, and only the event (window) that traps goes to the dead letters.
//!   While a new version is on probation, an event (window) it traps on is folded (finished) by
//!   the version it replaced, with the same accumulators (see [`super::fallback`]); only if that
//!   traps too does it go to the dead letters.
//! - The stage follows its version slot at batch boundaries ([`Stage::batch_boundary`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{empty_batch, fill_batch};
use super::fallback::{TrapCounter, call_with_fallback};
use super::transform::PLUGIN_VERSION_PROPERTY;
use super::window_assign::{Closed, GroupId, OpenWindow, Refusal, WindowState};
use super::{Rejected, Stage, StageError, StageOutput};
use crate::codec::{DecodeError, Reader, Writer};
use crate::config::{WindowConfig, WindowKind};
use crate::event::Event;
use crate::json::{top_level_fields, top_level_keys};
use crate::metrics::{Metrics, names};
use crate::plugin::bindings::{
    EventBatch, FinishRequest, FoldRequest, OutputBatch, Window as WitWindow,
};
use crate::plugin::slot::CallTally;
use crate::plugin::{CallError, InstanceSlot, KeyedState};
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
    /// A key's events with no gap longer than `gap`, cut after `max_duration`.
    Session {
        /// Longest quiet time inside a session.
        gap: i64,
        /// Longest session.
        max_duration: Option<i64>,
    },
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

/// The window stage of one partition.
pub struct WindowStage {
    name: Arc<str>,
    settings: WindowSettings,
    slot: InstanceSlot,
    state: WindowState,
    metrics: Metrics,
    traps: TrapCounter,
    /// Add the [`PLUGIN_VERSION_PROPERTY`] to every output.
    label_versions: bool,
    /// Events (windows) the running version trapped on in the current call of the stage, for
    /// its probation.
    trapped: u64,
    batch: EventBatch,
}

impl std::fmt::Debug for WindowStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowStage")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("open_windows", &self.state.windows.len())
            .finish_non_exhaustive()
    }
}

impl WindowStage {
    /// A stage over `slot`'s window-aggregate plugin, starting from a checkpointed `snapshot`
    /// (or from nothing).
    pub fn new(
        name: Arc<str>,
        settings: WindowSettings,
        slot: impl FnOnce(KeyedState) -> InstanceSlot,
        snapshot: Option<&[u8]>,
        metrics: Metrics,
    ) -> Result<Self, DecodeError> {
        let (keyed, state) = match snapshot {
            Some(bytes) => restore(bytes)?,
            None => (KeyedState::default(), WindowState::default()),
        };
        let slot = slot(keyed);
        Ok(WindowStage {
            traps: TrapCounter {
                metrics: metrics.clone(),
                pipeline: slot.settings().scope.pipeline.clone(),
                stage: name.clone(),
            },
            name,
            settings,
            slot,
            state,
            metrics,
            label_versions: false,
            trapped: 0,
            batch: empty_batch(0),
        })
    }

    /// The same stage, adding the [`PLUGIN_VERSION_PROPERTY`] (the version whose `finish` made
    /// it) to every output when `label` is set.
    pub fn with_version_labels(mut self, label: bool) -> Self {
        self.label_versions = label;
        self
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.state.windows.len()
    }

    /// The plugin version the stage ran last (it follows its version slot at batch boundaries).
    pub fn plugin_version(&self) -> &Arc<str> {
        self.slot.plugin().version()
    }

    fn error(&self, reason: String) -> StageError {
        let scope = &self.slot.settings().scope;
        StageError {
            pipeline: scope.pipeline.clone(),
            stage: self.name.clone(),
            partition: scope.partition,
            reason,
        }
    }

    /// Folds `groups` (members index `events`) through the plugin, isolating an event that traps.
    /// Returns the new accumulators, in order; refused events go to `out`.
    fn fold(
        &mut self,
        events: &[Event],
        groups: &[FoldGroup],
        out: &mut StageOutput,
    ) -> Result<Vec<Vec<u8>>, StageError> {
        let request = fold_request(&mut self.batch, events, groups, None);
        let version = self.slot.plugin().version().clone();
        match self.call(|instance| instance.fold(&request))? {
            Ok(response) => {
                let accumulators = split(&response.accumulators, &response.accumulator_ends)
                    .filter(|accs| accs.len() == groups.len())
                    .ok_or_else(|| {
                        self.error(format!(
                            "plugin returned {} accumulators for {} windows",
                            response.accumulator_ends.len(),
                            groups.len()
                        ))
                    })?;
                let mut refused = BTreeSet::new();
                for rejection in response.rejected {
                    let Some(event) = events.get(rejection.event as usize) else {
                        return Err(self.error(format!(
                            "plugin rejected event {} of a batch of {}",
                            rejection.event,
                            events.len()
                        )));
                    };
                    // An event of overlapping windows is refused once per window: report it once.
                    if refused.insert(rejection.event) {
                        out.rejected.push(Rejected {
                            event: event.clone(),
                            reason: rejection.reason,
                            plugin_version: Some(version.clone()),
                        });
                    }
                }
                Ok(accumulators)
            }
            Err(trap) => {
                self.traps.count(&trap.version);
                let scope = &self.slot.settings().scope;
                tracing::warn!(
                    pipeline = %scope.pipeline, stage = %self.name, partition = scope.partition,
                    windows = groups.len(), version = %trap.version, reason = %trap.reason,
                    "plugin trapped folding a batch; retrying it event by event"
                );
                self.fold_event_by_event(events, groups, out)
            }
        }
    }

    /// The retry after a trap: one call per event, with the windows it belongs to (on the
    /// previous version too, during a probation).
    fn fold_event_by_event(
        &mut self,
        events: &[Event],
        groups: &[FoldGroup],
        out: &mut StageOutput,
    ) -> Result<Vec<Vec<u8>>, StageError> {
        let mut accumulators: Vec<Vec<u8>> = groups.iter().map(|g| g.accumulator.clone()).collect();
        let mut order: Vec<u32> = groups
            .iter()
            .flat_map(|g| g.members.iter().copied())
            .collect();
        order.sort_unstable();
        order.dedup();
        for member in order {
            let touched: Vec<usize> = groups
                .iter()
                .enumerate()
                .filter(|(_, g)| g.members.contains(&member))
                .map(|(i, _)| i)
                .collect();
            let single: Vec<FoldGroup> = touched
                .iter()
                .map(|&i| FoldGroup {
                    id: groups[i].id.clone(),
                    end: groups[i].end,
                    accumulator: accumulators[i].clone(),
                    members: vec![member],
                })
                .collect();
            let request = fold_request(&mut self.batch, events, &single, Some(member));
            let Some(event) = events.get(member as usize) else {
                continue;
            };
            let attempt = self.attempt(|instance| instance.fold(&request))?;
            self.trapped += u64::from(attempt.trapped);
            match attempt.result {
                Ok(response) => {
                    if let Some(rejection) = response.rejected.into_iter().next() {
                        out.rejected.push(Rejected {
                            event: event.clone(),
                            reason: rejection.reason,
                            plugin_version: Some(attempt.version),
                        });
                    }
                    if let Some(new) = split(&response.accumulators, &response.accumulator_ends)
                        && new.len() == touched.len()
                    {
                        for (i, accumulator) in touched.iter().zip(new) {
                            accumulators[*i] = accumulator;
                        }
                    }
                }
                Err(reason) => out.rejected.push(Rejected {
                    event: event.clone(),
                    reason,
                    plugin_version: Some(attempt.version),
                }),
            }
        }
        Ok(accumulators)
    }

    /// One isolated call, on the previous version too if the running one traps (probation).
    fn attempt<R>(
        &mut self,
        call: impl Fn(&mut crate::plugin::PluginInstance) -> Result<R, CallError>,
    ) -> Result<super::fallback::Attempt<R>, StageError> {
        call_with_fallback(&mut self.slot, &self.traps, call)
            .map_err(|e| self.error(format!("cannot instantiate plugin: {e}")))
    }

    fn call<R>(
        &mut self,
        call: impl FnOnce(&mut crate::plugin::PluginInstance) -> Result<R, CallError>,
    ) -> Result<Result<R, CallError>, StageError> {
        match self.slot.call(call) {
            Ok(result) => Ok(result),
            Err(e) => Err(self.error(format!("cannot instantiate plugin: {e}"))),
        }
    }

    /// Produces the outputs of `closed` windows.
    fn finish(&mut self, closed: &[Closed], out: &mut StageOutput) -> Result<(), StageError> {
        let request = finish_request(closed.iter());
        match self.call(|instance| instance.finish(&request))? {
            Ok(output) => {
                let version = self.slot.plugin().version().clone();
                self.decode_finish(output, closed, &version, out)
            }
            Err(trap) => {
                self.traps.count(&trap.version);
                let scope = &self.slot.settings().scope;
                tracing::warn!(
                    pipeline = %scope.pipeline, stage = %self.name, partition = scope.partition,
                    windows = closed.len(), version = %trap.version, reason = %trap.reason,
                    "plugin trapped finishing windows; retrying them one by one"
                );
                for one in closed.chunks(1) {
                    let request = finish_request(one.iter());
                    let attempt = self.attempt(|instance| instance.finish(&request))?;
                    self.trapped += u64::from(attempt.trapped);
                    match attempt.result {
                        Ok(output) => self.decode_finish(output, one, &attempt.version, out)?,
                        Err(reason) => {
                            for window in one {
                                out.rejected.push(Rejected {
                                    event: self.window_letter(window),
                                    reason: reason.clone(),
                                    plugin_version: Some(attempt.version.clone()),
                                });
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The outputs `version`'s `finish` made for `closed`.
    fn decode_finish(
        &self,
        output: OutputBatch,
        closed: &[Closed],
        version: &Arc<str>,
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        let targets: Vec<Arc<str>> = output.targets.into_iter().map(Arc::from).collect();
        let mut start = 0usize;
        for emitted in output.emitted {
            let window = closed.get(emitted.event as usize).ok_or_else(|| {
                self.error(format!(
                    "plugin emitted a record for window {} of {}",
                    emitted.event,
                    closed.len()
                ))
            })?;
            let target = targets.get(emitted.target as usize).ok_or_else(|| {
                self.error(format!(
                    "plugin emitted to target {} of {}",
                    emitted.target,
                    targets.len()
                ))
            })?;
            let end = emitted.payload_end as usize;
            let payload = output.payloads.get(start..end).ok_or_else(|| {
                self.error(format!(
                    "plugin gave payload end {end} after {start} in a buffer of {}",
                    output.payloads.len()
                ))
            })?;
            start = end;
            match self.complete(payload, window) {
                Ok(body) => {
                    let mut record = self.record(window, body);
                    if self.label_versions {
                        record
                            .properties
                            .push((PLUGIN_VERSION_PROPERTY.to_owned(), version.to_string()));
                    }
                    out.emitted.push((target.clone(), record));
                }
                Err(reason) => out.rejected.push(Rejected {
                    event: self.window_letter(window),
                    reason,
                    plugin_version: Some(version.clone()),
                }),
            }
        }
        for rejection in output.rejected {
            let window = closed.get(rejection.event as usize).ok_or_else(|| {
                self.error(format!(
                    "plugin rejected window {} of {}",
                    rejection.event,
                    closed.len()
                ))
            })?;
            out.rejected.push(Rejected {
                event: self.window_letter(window),
                reason: rejection.reason,
                plugin_version: Some(version.clone()),
            });
        }
        Ok(())
    }

    /// The window's bounds as its outputs show them: `[start, end)`, except sliding windows,
    /// shown as `(end − size, end]` (the event time that made them and the size before it).
    fn shown_bounds(&self, id: &GroupId, window: &OpenWindow) -> (i64, i64) {
        match self.settings.spec {
            WindowSpec::Sliding { size } => (window.end - 1 - size, window.end - 1),
            _ => (id.1, window.end),
        }
    }

    /// A plugin's output object with the group's fields and the window's bounds added (unless
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
    fn record(&self, closed: &Closed, body: Bytes) -> Event {
        let time = closed.window.end - 1;
        Event {
            partition: self.slot.settings().scope.partition,
            position: closed.position,
            key: None,
            event_time: Some(time),
            enqueued_time: time,
            properties: Vec::new(),
            body,
        }
    }

    /// A dead letter standing for a window whose outputs could not be made.
    fn window_letter(&self, closed: &Closed) -> Event {
        let (start, end) = self.shown_bounds(&closed.id, &closed.window);
        let key: serde_json::Value = serde_json::from_str(&closed.id.0).unwrap_or_default();
        let accumulator = String::from_utf8_lossy(&closed.window.accumulator).into_owned();
        let body = serde_json::json!({
            "window": { "key": key, "start": format_millis(start), "end": format_millis(end) },
            "accumulator": accumulator,
        });
        let mut record = self.record(closed, Bytes::from(body.to_string()));
        record.key = Some(Bytes::from(closed.id.0.as_bytes().to_vec()));
        record
    }

    fn late(&self, event: &Event, end: i64) -> Rejected {
        Rejected {
            event: event.clone(),
            reason: format!(
                "late: the window ending at {} closed when the watermark reached {}",
                format_millis(end),
                format_millis(self.state.watermark.unwrap_or(i64::MIN))
            ),
            plugin_version: None,
        }
    }

    fn count(&self, name: &'static str, delta: u64) {
        let scope = &self.slot.settings().scope;
        self.metrics.add(
            name,
            &[
                ("pipeline", &scope.pipeline),
                ("stage", &self.name),
                ("partition", &scope.partition.to_string()),
            ],
            delta,
        );
    }
}

/// Splits concatenated byte strings at `ends`.
fn split(bytes: &[u8], ends: &[u32]) -> Option<Vec<Vec<u8>>> {
    let mut start = 0usize;
    let mut out = Vec::with_capacity(ends.len());
    for &end in ends {
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
        events: empty_batch(0),
        windows: Vec::with_capacity(groups.len()),
        accumulators: Vec::new(),
        accumulator_ends: Vec::with_capacity(groups.len()),
        members: Vec::new(),
        member_ends: Vec::with_capacity(groups.len()),
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
        request
            .accumulator_ends
            .push(offset(request.accumulators.len()));
        match only {
            Some(_) => request.members.push(0),
            None => request.members.extend_from_slice(&group.members),
        }
        request.member_ends.push(offset(request.members.len()));
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
        request
            .accumulator_ends
            .push(offset(request.accumulators.len()));
    }
    request
}

/// The group key of `event`: a JSON object of the grouped fields.
fn group_key(group_by: &[String], event: &Event) -> Result<Arc<str>, String> {
    if group_by.is_empty() {
        return Ok(Arc::from("{}"));
    }
    let values = top_level_fields(&event.body, group_by)?;
    let mut key = String::with_capacity(64);
    key.push('{');
    for (index, (field, value)) in group_by.iter().zip(values).enumerate() {
        if index > 0 {
            key.push(',');
        }
        key.push_str(&serde_json::to_string(field).unwrap_or_default());
        key.push(':');
        let json = match value {
            None => "null".to_owned(),
            Some(value) => value.to_json().ok_or_else(|| {
                format!("group-by field `{field}` is not a string, a number or null")
            })?,
        };
        key.push_str(&json);
    }
    key.push('}');
    Ok(Arc::from(key))
}

impl Stage for WindowStage {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn running_version(&self) -> Option<Arc<str>> {
        Some(self.slot.plugin().version().clone())
    }

    fn batch_boundary(&mut self) {
        self.slot.refresh();
    }

    fn process(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        let rejected_before = out.rejected.len();
        let version = self.slot.plugin().version().clone();
        self.trapped = 0;
        let result = self.fold_events(events, out);
        let rejected = plugin_rejections(&out.rejected[rejected_before..], &version);
        // Sliding windows fold their events when they close, not here.
        let handed = match self.settings.spec {
            WindowSpec::Sliding { .. } => 0,
            _ => (events.len() as u64)
                .saturating_sub(host_rejections(&out.rejected[rejected_before..])),
        };
        self.tally(handed, rejected);
        result
    }

    fn watermarks(&mut self, marks: &[Mark], out: &mut StageOutput) -> Result<(), StageError> {
        let rejected_before = out.rejected.len();
        let version = self.slot.plugin().version().clone();
        self.trapped = 0;
        let mut closed = self.state.close(marks);
        if let WindowSpec::Sliding { size } = self.settings.spec {
            if !closed.is_empty() {
                self.fold_sliding(&mut closed, out)?;
            }
            let ended = marks.iter().any(|m| m.watermark == END_OF_INPUT);
            self.state.forget_recent(size, ended);
        }
        if closed.is_empty() {
            return Ok(());
        }
        self.count(names::WINDOWS_CLOSED, closed.len() as u64);
        let result = self.finish(&closed, out);
        let rejected = plugin_rejections(&out.rejected[rejected_before..], &version);
        self.tally(closed.len() as u64, rejected);
        result
    }

    fn snapshot(&self) -> Vec<u8> {
        snapshot(self.slot.keyed_state(), &self.state)
    }

    fn take_counters(&mut self) -> Vec<(String, u64)> {
        self.slot.take_counters().into_iter().collect()
    }
}

impl WindowStage {
    /// Reports what the running version did in this call of the stage for its probation: `events`
    /// events (windows) handed to it, `rejected` refused, and the ones it trapped on.
    fn tally(&mut self, events: u64, rejected: u64) {
        let trapped = std::mem::take(&mut self.trapped);
        self.slot.tally(CallTally {
            events,
            rejected,
            trapped,
        });
    }

    /// Assigns `events` to their windows and folds them into the windows' accumulators.
    fn fold_events(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        let group_by = &self.settings.group_by;
        let assigned = self.state.assign(self.settings.spec, events, |event| {
            group_key(group_by, event)
        });
        let mut late = 0u64;
        for (member, refusal) in assigned.refused {
            let Some(event) = events.get(member as usize) else {
                continue;
            };
            match refusal {
                Refusal::NoKey(reason) => out.rejected.push(Rejected {
                    event: event.clone(),
                    reason,
                    plugin_version: None,
                }),
                Refusal::Late { end } => {
                    late += 1;
                    out.rejected.push(self.late(event, end));
                }
            }
        }
        self.count(names::WINDOW_LATE_EVENTS, late);
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
        let accumulators = self.fold(events, &groups, out)?;
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
        closed: &mut [Closed],
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
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
        let accumulators = self.fold(&events, &groups, out)?;
        for (window, accumulator) in closed.iter_mut().zip(accumulators) {
            window.window.accumulator = accumulator;
        }
        Ok(())
    }
}

fn snapshot(keyed: &KeyedState, state: &WindowState) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(1);
    w.bytes(&keyed.snapshot());
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
    w.finish()
}

fn restore(bytes: &[u8]) -> Result<(KeyedState, WindowState), DecodeError> {
    let mut r = Reader::new(bytes);
    if r.u8("the window state's format version")? != 1 {
        return Err(DecodeError {
            offset: 0,
            what: "window state format version 1",
        });
    }
    let keyed_bytes = r.bytes("the plugin's keyed state")?;
    let keyed = KeyedState::restore(keyed_bytes).map_err(|e| DecodeError {
        offset: e.offset,
        what: e.what,
    })?;
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
    Ok((keyed, state))
}

/// How many of `rejected` the plugin's `version` refused (not late events, not traps, not what
/// the previous version refused during a probation), for the probation.
pub(super) fn plugin_rejections(rejected: &[Rejected], version: &Arc<str>) -> u64 {
    rejected
        .iter()
        .filter(|r| {
            r.plugin_version.as_ref() == Some(version) && !r.reason.starts_with("plugin trapped")
        })
        .count() as u64
}

/// How many of `rejected` the host refused before any plugin saw them (late, no key).
pub(super) fn host_rejections(rejected: &[Rejected]) -> u64 {
    rejected
        .iter()
        .filter(|r| r.plugin_version.is_none())
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let bytes = snapshot(&keyed, &state);
        let (keyed_back, state_back) = restore(&bytes).expect("restore");
        assert_eq!(keyed_back, keyed);
        assert_eq!(state_back, state);
        assert!(restore(&bytes[..bytes.len() - 1]).is_err());
    }
}
