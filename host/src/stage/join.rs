//! The interval join: two inputs joined on a key within a time bound in event time, pairs enriched
//! by a join-enrichment plugin.
//!
//! A left event `l` and a right event `r` with the same key join when
//! `l.time − before ≤ r.time ≤ l.time + within`. Both inputs are buffered per key, in the
//! partition's checkpointed state; each arriving event is paired with every buffered event of the
//! other input it joins. A buffered event leaves when the watermark makes further matches
//! impossible (a left event when it passes `time + within`, a right one when it passes
//! `time + before`); if it never matched, the side's policy emits it alone (the plugin gets it with
//! the other side absent) or drops it, and either is counted.
//!
//! Pairs carry the later of their two events' positions, events emitted alone the position of the
//! mark that expired them; both are decided by the partition's events alone, so a replay after a
//! crash makes the same records with the same positions.
//!
//! A trap in `enrich` is retried pair by pair; while a new version is on probation, a pair it
//! traps on is enriched by the version it replaced (see [`super::fallback`]), and only a pair both
//! trap on goes to the dead letters. The stage follows its version slot at batch boundaries
//! ([`Stage::batch_boundary`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::fill_batch;
use super::fallback::{TrapCounter, call_with_fallback};
use super::transform::PLUGIN_VERSION_PROPERTY;
use super::window::plugin_rejections;
use super::{Rejected, Stage, StageError, StageOutput};
use crate::codec::{DecodeError, Reader, Writer};
use crate::config::{JoinConfig, UnmatchedPolicy};
use crate::event::{Event, Position};
use crate::json::{FieldValue, top_level_field};
use crate::metrics::{Metrics, names};
use crate::plugin::bindings::{EventBatch, JoinPair, JoinRequest, OutputBatch};
use crate::plugin::slot::CallTally;
use crate::plugin::{CallError, InstanceSlot, KeyedState};
use crate::time::{END_OF_INPUT, Mark};

/// An interval join's settings, durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSettings {
    /// Key field of left events.
    pub left_key: String,
    /// Key field of right events.
    pub right_key: String,
    /// How much later than the left event the right one may be.
    pub within: i64,
    /// How much earlier than the left event the right one may be.
    pub before: i64,
    /// Unmatched left events.
    pub unmatched_left: UnmatchedPolicy,
    /// Unmatched right events.
    pub unmatched_right: UnmatchedPolicy,
}

impl JoinSettings {
    /// The settings a stage's `join` table gives.
    pub fn from_config(config: &JoinConfig) -> Self {
        let millis = |d: crate::config::ConfigDuration| {
            i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX)
        };
        JoinSettings {
            left_key: config.key.clone(),
            right_key: config
                .right_key
                .clone()
                .unwrap_or_else(|| config.key.clone()),
            within: millis(config.within),
            before: config.before.map_or(0, millis),
            unmatched_left: config.unmatched_left,
            unmatched_right: config.unmatched_right,
        }
    }
}

/// The two inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Side {
    Left = 0,
    Right = 1,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }
}

/// A buffered event waiting for matches.
#[derive(Debug, Clone, PartialEq)]
struct Waiting {
    event: Event,
    /// Its key.
    key: Arc<str>,
    /// Whether it has joined at least once.
    matched: bool,
}

/// Everything the join keeps between batches (and in the checkpoint).
#[derive(Debug, Default, Clone, PartialEq)]
struct JoinState {
    /// Waiting events by id (a sequence number, unique within the stage).
    waiting: HashMap<u64, (Side, Waiting)>,
    /// Ids of the waiting events of each side and key.
    by_key: [HashMap<Arc<str>, Vec<u64>>; 2],
    /// (expiry time, id): the event leaves when the watermark reaches its expiry time.
    expiry: BTreeSet<(i64, u64)>,
    next_id: u64,
}

/// A pair to enrich: the events' ids in `events`, and the position its records carry.
struct Pending {
    left: Option<usize>,
    right: Option<usize>,
    position: Position,
}

/// The interval join of one partition.
pub struct JoinStage {
    name: Arc<str>,
    settings: JoinSettings,
    slot: InstanceSlot,
    state: JoinState,
    metrics: Metrics,
    traps: TrapCounter,
    /// Add the [`PLUGIN_VERSION_PROPERTY`] to every output.
    label_versions: bool,
    /// Pairs the running version trapped on in the current call of the stage, for its
    /// probation.
    trapped: u64,
    batch: EventBatch,
}

impl std::fmt::Debug for JoinStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinStage")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("waiting", &self.state.waiting.len())
            .finish_non_exhaustive()
    }
}

impl JoinStage {
    /// A join over `slot`'s join-enrichment plugin, starting from a checkpointed `snapshot` (or
    /// from nothing).
    pub fn new(
        name: Arc<str>,
        settings: JoinSettings,
        slot: impl FnOnce(KeyedState) -> InstanceSlot,
        snapshot: Option<&[u8]>,
        metrics: Metrics,
    ) -> Result<Self, DecodeError> {
        let (keyed, state) = match snapshot {
            Some(bytes) => restore(bytes)?,
            None => (KeyedState::default(), JoinState::default()),
        };
        let slot = slot(keyed);
        Ok(JoinStage {
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
            batch: super::batch::empty_batch(0),
        })
    }

    /// The same stage, adding the [`PLUGIN_VERSION_PROPERTY`] (the version that enriched it) to
    /// every output when `label` is set.
    pub fn with_version_labels(mut self, label: bool) -> Self {
        self.label_versions = label;
        self
    }

    /// Events waiting for a match now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.len()
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

    fn count(&self, name: &'static str, extra: &[(&'static str, &str)], delta: u64) {
        let scope = &self.slot.settings().scope;
        let partition = scope.partition.to_string();
        let mut labels: Vec<(&'static str, &str)> = vec![
            ("pipeline", &scope.pipeline),
            ("stage", &self.name),
            ("partition", &partition),
        ];
        labels.extend_from_slice(extra);
        self.metrics.add(name, &labels, delta);
    }

    fn key(&self, side: Side, event: &Event) -> Result<Arc<str>, String> {
        let field = match side {
            Side::Left => &self.settings.left_key,
            Side::Right => &self.settings.right_key,
        };
        match top_level_field(&event.body, field)? {
            Some(FieldValue::Text(text)) => Ok(Arc::from(text.as_ref())),
            Some(value @ FieldValue::Number(_)) => value
                .to_json()
                .map(Arc::from)
                .ok_or_else(|| format!("join key `{field}` is not a finite number")),
            Some(_) => Err(format!("join key `{field}` is not text or a number")),
            None => Err(format!("missing join key `{field}`")),
        }
    }

    /// Takes the events of one input: pairs each with the waiting events of the other input it
    /// joins, then waits for later matches.
    fn arrive(
        &mut self,
        side: Side,
        events: &[Event],
        out: &mut StageOutput,
    ) -> Result<u64, StageError> {
        let (within, before) = (self.settings.within, self.settings.before);
        let other = match side {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        };
        let mut pairs: Vec<Pending> = Vec::new();
        let mut members: Vec<Event> = Vec::new();
        for event in events {
            let key = match self.key(side, event) {
                Ok(key) => key,
                Err(reason) => {
                    out.rejected.push(Rejected {
                        event: event.clone(),
                        reason,
                        plugin_version: None,
                    });
                    continue;
                }
            };
            let time = event.time();
            // Left at l, right at r: l - before <= r <= l + within.
            let (low, high) = match side {
                Side::Left => (time.saturating_sub(before), time.saturating_add(within)),
                Side::Right => (time.saturating_sub(within), time.saturating_add(before)),
            };
            let mut matched = false;
            let candidates: Vec<u64> = self.state.by_key[other as usize]
                .get(&key)
                .cloned()
                .unwrap_or_default();
            for id in candidates {
                let Some((_, waiting)) = self.state.waiting.get_mut(&id) else {
                    continue;
                };
                let other_time = waiting.event.time();
                if other_time < low || other_time > high {
                    continue;
                }
                waiting.matched = true;
                matched = true;
                let this = members.len();
                members.push(event.clone());
                let that = members.len();
                members.push(waiting.event.clone());
                let position = event.position.max(waiting.event.position);
                pairs.push(match side {
                    Side::Left => Pending {
                        left: Some(this),
                        right: Some(that),
                        position,
                    },
                    Side::Right => Pending {
                        left: Some(that),
                        right: Some(this),
                        position,
                    },
                });
            }
            // It waits until the watermark rules out further matches.
            let expires = match side {
                Side::Left => time.saturating_add(within),
                Side::Right => time.saturating_add(before),
            }
            .saturating_add(1);
            let id = self.state.next_id;
            self.state.next_id += 1;
            self.state.by_key[side as usize]
                .entry(key.clone())
                .or_default()
                .push(id);
            self.state.expiry.insert((expires, id));
            self.state.waiting.insert(
                id,
                (
                    side,
                    Waiting {
                        event: event.clone(),
                        key,
                        matched,
                    },
                ),
            );
        }
        self.count(names::JOIN_PAIRS, &[], pairs.len() as u64);
        self.enrich(&members, &pairs, out)?;
        Ok(pairs.len() as u64)
    }

    /// Calls the plugin on `pairs` (indices into `members`), isolating a pair that traps.
    fn enrich(
        &mut self,
        members: &[Event],
        pairs: &[Pending],
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let request = join_request(&mut self.batch, members, pairs);
        match self.call(|instance| instance.enrich(&request))? {
            Ok(output) => {
                let version = self.slot.plugin().version().clone();
                self.decode(output, members, pairs, &version, out)
            }
            Err(trap) => {
                self.traps.count(&trap.version);
                let scope = &self.slot.settings().scope;
                tracing::warn!(
                    pipeline = %scope.pipeline, stage = %self.name, partition = scope.partition,
                    pairs = pairs.len(), version = %trap.version, reason = %trap.reason,
                    "plugin trapped enriching pairs; retrying them one by one"
                );
                for pair in pairs {
                    let one = std::slice::from_ref(pair);
                    let request = join_request(&mut self.batch, members, one);
                    let attempt = call_with_fallback(&mut self.slot, &self.traps, |instance| {
                        instance.enrich(&request)
                    })
                    .map_err(|e| self.error(format!("cannot instantiate plugin: {e}")))?;
                    self.trapped += u64::from(attempt.trapped);
                    match attempt.result {
                        Ok(output) => self.decode(output, members, one, &attempt.version, out)?,
                        Err(reason) => out.rejected.push(Rejected {
                            event: pair_letter(members, pair),
                            reason,
                            plugin_version: Some(attempt.version),
                        }),
                    }
                }
                Ok(())
            }
        }
    }

    fn call<R: Send>(
        &mut self,
        call: impl FnOnce(&mut crate::plugin::PluginInstance) -> Result<R, CallError>,
    ) -> Result<Result<R, CallError>, StageError> {
        match self.slot.call(call) {
            Ok(result) => Ok(result),
            Err(e) => Err(self.error(format!("cannot instantiate plugin: {e}"))),
        }
    }

    /// The outputs `version` made for `pairs`.
    fn decode(
        &self,
        output: OutputBatch,
        members: &[Event],
        pairs: &[Pending],
        version: &Arc<str>,
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        let targets: Vec<Arc<str>> = output.targets.into_iter().map(Arc::from).collect();
        let payloads = Bytes::from(output.payloads);
        let mut start = 0usize;
        for emitted in output.emitted {
            let pair = pairs.get(emitted.event as usize).ok_or_else(|| {
                self.error(format!(
                    "plugin emitted a record for pair {} of {}",
                    emitted.event,
                    pairs.len()
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
            if end < start || end > payloads.len() {
                return Err(self.error(format!(
                    "plugin gave payload end {end} after {start} in a buffer of {}",
                    payloads.len()
                )));
            }
            let body = payloads.slice(start..end);
            start = end;
            let anchor = pair
                .left
                .or(pair.right)
                .and_then(|i| members.get(i))
                .ok_or_else(|| self.error("a pair without events".to_owned()))?;
            let time = [pair.left, pair.right]
                .into_iter()
                .flatten()
                .filter_map(|i| members.get(i))
                .map(Event::time)
                .max()
                .unwrap_or_else(|| anchor.time());
            let properties = if self.label_versions {
                vec![(PLUGIN_VERSION_PROPERTY.to_owned(), version.to_string())]
            } else {
                Vec::new()
            };
            out.emitted.push((
                target.clone(),
                Event {
                    partition: anchor.partition,
                    position: pair.position,
                    key: anchor.key.clone(),
                    event_time: Some(time),
                    enqueued_time: anchor.enqueued_time,
                    properties,
                    body,
                },
            ));
        }
        for rejection in output.rejected {
            let pair = pairs.get(rejection.event as usize).ok_or_else(|| {
                self.error(format!(
                    "plugin rejected pair {} of {}",
                    rejection.event,
                    pairs.len()
                ))
            })?;
            out.rejected.push(Rejected {
                event: pair_letter(members, pair),
                reason: rejection.reason,
                plugin_version: Some(version.clone()),
            });
        }
        Ok(())
    }
}

/// The dead letter standing for a pair: its left event (or its right one, alone), with the
/// position the pair's records would have carried.
fn pair_letter(members: &[Event], pair: &Pending) -> Event {
    let mut event = pair
        .left
        .or(pair.right)
        .and_then(|i| members.get(i))
        .cloned()
        .unwrap_or_else(|| Event::new(0, pair.position, Bytes::new()));
    event.position = pair.position;
    event
}

fn join_request(batch: &mut EventBatch, members: &[Event], pairs: &[Pending]) -> JoinRequest {
    fill_batch(batch, members);
    let offset = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    JoinRequest {
        events: std::mem::replace(batch, super::batch::empty_batch(0)),
        pairs: pairs
            .iter()
            .map(|p| JoinPair {
                left: p.left.map(offset),
                right: p.right.map(offset),
            })
            .collect(),
    }
}

impl JoinStage {
    /// One side's batch, with what it made the running version do counted for its probation.
    fn arrive_batch(
        &mut self,
        side: Side,
        events: &[Event],
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        self.counted(out, |stage, out| stage.arrive(side, events, out))
    }

    /// Runs `work`, which enriches pairs, and reports to the version slot how many pairs the
    /// running version got, refused and trapped on.
    fn counted(
        &mut self,
        out: &mut StageOutput,
        work: impl FnOnce(&mut Self, &mut StageOutput) -> Result<u64, StageError>,
    ) -> Result<(), StageError> {
        let rejected_before = out.rejected.len();
        let version = self.slot.plugin().version().clone();
        self.trapped = 0;
        let result = work(self, out);
        let rejected = plugin_rejections(&out.rejected[rejected_before..], &version);
        let trapped = std::mem::take(&mut self.trapped);
        let pairs = result.as_ref().map_or(trapped, |pairs| *pairs);
        self.slot.tally(CallTally {
            events: pairs,
            rejected,
            trapped,
        });
        result.map(|_| ())
    }

    /// Lets go of the waiting events `marks` rule out further matches for, enriching the unmatched
    /// ones alone where the side's policy says so; how many it enriched.
    fn expire(&mut self, marks: &[Mark], out: &mut StageOutput) -> Result<u64, StageError> {
        let mut members: Vec<Event> = Vec::new();
        let mut alone: Vec<Pending> = Vec::new();
        let mut dropped = [0u64; 2];
        let mut emitted = [0u64; 2];
        for mark in marks {
            while let Some(&(expires, id)) = self.state.expiry.first()
                && expires <= mark.watermark
            {
                self.state.expiry.pop_first();
                let Some((side, waiting)) = self.state.waiting.remove(&id) else {
                    continue;
                };
                if let Some(ids) = self.state.by_key[side as usize].get_mut(&waiting.key) {
                    ids.retain(|other| *other != id);
                    if ids.is_empty() {
                        self.state.by_key[side as usize].remove(&waiting.key);
                    }
                }
                if waiting.matched {
                    continue;
                }
                let policy = match side {
                    Side::Left => self.settings.unmatched_left,
                    Side::Right => self.settings.unmatched_right,
                };
                match policy {
                    UnmatchedPolicy::Drop => dropped[side as usize] += 1,
                    UnmatchedPolicy::Emit => {
                        emitted[side as usize] += 1;
                        let index = members.len();
                        members.push(waiting.event);
                        alone.push(Pending {
                            left: (side == Side::Left).then_some(index),
                            right: (side == Side::Right).then_some(index),
                            position: mark.position,
                        });
                    }
                }
            }
            if mark.watermark == END_OF_INPUT {
                break;
            }
        }
        for side in [Side::Left, Side::Right] {
            self.count(
                names::JOIN_UNMATCHED,
                &[("side", side.label()), ("policy", "drop")],
                dropped[side as usize],
            );
            self.count(
                names::JOIN_UNMATCHED,
                &[("side", side.label()), ("policy", "emit")],
                emitted[side as usize],
            );
        }
        self.enrich(&members, &alone, out)?;
        Ok(alone.len() as u64)
    }
}

impl Stage for JoinStage {
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
        self.arrive_batch(Side::Left, events, out)
    }

    fn process_right(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        self.arrive_batch(Side::Right, events, out)
    }

    fn watermarks(&mut self, marks: &[Mark], out: &mut StageOutput) -> Result<(), StageError> {
        self.counted(out, |stage, out| stage.expire(marks, out))
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1);
        w.bytes(&self.slot.keyed_state().snapshot());
        w.u64(self.state.next_id);
        w.len(self.state.expiry.len());
        for (expires, id) in &self.state.expiry {
            let Some((side, waiting)) = self.state.waiting.get(id) else {
                continue;
            };
            w.u64(*id);
            w.i64(*expires);
            w.u8(*side as u8);
            w.u8(u8::from(waiting.matched));
            w.str(&waiting.key);
            w.event(&waiting.event);
        }
        w.finish()
    }

    fn take_counters(&mut self) -> Vec<(String, u64)> {
        self.slot.take_counters().into_iter().collect()
    }
}

fn restore(bytes: &[u8]) -> Result<(KeyedState, JoinState), DecodeError> {
    let mut r = Reader::new(bytes);
    if r.u8("the join state's format version")? != 1 {
        return Err(DecodeError {
            offset: 0,
            what: "join state format version 1",
        });
    }
    let keyed_bytes = r.bytes("the plugin's keyed state")?;
    let keyed = KeyedState::restore(keyed_bytes).map_err(|e| DecodeError {
        offset: e.offset,
        what: e.what,
    })?;
    let mut state = JoinState {
        next_id: r.u64("the next waiting id")?,
        ..JoinState::default()
    };
    let count = r.len("the number of waiting events")?;
    for _ in 0..count {
        let id = r.u64("a waiting event's id")?;
        let expires = r.i64("a waiting event's expiry")?;
        let side = match r.u8("a waiting event's side")? {
            0 => Side::Left,
            _ => Side::Right,
        };
        let matched = r.u8("a waiting event's match flag")? != 0;
        let key: Arc<str> = Arc::from(r.str("a waiting event's key")?);
        let event = r.event()?;
        state.by_key[side as usize]
            .entry(key.clone())
            .or_default()
            .push(id);
        state.expiry.insert((expires, id));
        state.waiting.insert(
            id,
            (
                side,
                Waiting {
                    event,
                    key,
                    matched,
                },
            ),
        );
    }
    Ok((keyed, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_snapshot_round_trips() {
        let mut state = JoinState::default();
        let key: Arc<str> = Arc::from("order-1");
        let mut event = Event::new(0, 4, &b"{\"OrderId\":\"order-1\"}"[..]);
        event.event_time = Some(1000);
        state.waiting.insert(
            7,
            (
                Side::Right,
                Waiting {
                    event,
                    key: key.clone(),
                    matched: true,
                },
            ),
        );
        state.by_key[1].insert(key, vec![7]);
        state.expiry.insert((1001, 7));
        state.next_id = 8;
        let keyed = KeyedState::default();
        let mut w = Writer::new();
        w.u8(1);
        w.bytes(&keyed.snapshot());
        w.u64(state.next_id);
        w.len(1);
        let (side, waiting) = &state.waiting[&7];
        w.u64(7);
        w.i64(1001);
        w.u8(*side as u8);
        w.u8(1);
        w.str(&waiting.key);
        w.event(&waiting.event);
        let (_, restored) = restore(&w.finish()).expect("restore");
        assert_eq!(restored, state);
    }
}
