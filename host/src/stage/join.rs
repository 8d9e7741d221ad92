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
//! traps on is enriched by the version it replaced (see [`super::plugin_stage`]), and only a pair both
//! trap on goes to the dead letters. The stage follows its version slot at batch boundaries
//! ([`Stage::batch_boundary`](super::Stage::batch_boundary)).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::batch::{empty_batch, fill_batch};
use super::plugin_stage::Restored;
use super::plugin_stage::{
    AnswerError, AnswerRecord, Answers, PluginCall, PluginCore, PluginStage, SnapshotFormat,
    StageKind, StatefulKind, Trapped, Turn, Units, laid_out, read_answer, read_snapshot_start,
    restored, write_snapshot_start,
};
use super::transform::labelled_lineage;
use super::{StageError, StageOutput};
use crate::codec::DecodeError;
use crate::config::{JoinConfig, UnmatchedPolicy};
use crate::event::{Event, Position};
use crate::json::{FieldValue, top_level_field};
use crate::metrics::names;
use crate::plugin::bindings::{EventBatch, JoinPair, JoinRequest, OutputBatch};
use crate::plugin::{CallError, KeyedState, PluginInstance};
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

/// The interval-join kind of [`PluginStage`]: both inputs' waiting events, and how they pair.
pub struct Joins {
    settings: JoinSettings,
    state: JoinState,
}

/// The interval join of one partition.
pub type JoinStage = PluginStage<Joins>;

impl PluginStage<Joins> {
    /// Events waiting for a match now.
    pub fn waiting(&self) -> usize {
        self.kind().state.waiting.len()
    }
}

impl StatefulKind for Joins {
    type Settings = JoinSettings;

    fn restore(settings: Self::Settings, snapshot: Option<&[u8]>) -> Restored<Self> {
        let (keyed, state) = restored(snapshot, restore)?;
        Ok((keyed, Joins { settings, state }))
    }
}

impl Joins {
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
        core: &mut PluginCore,
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
            let Some(key) = out.checked(event, self.key(side, event)) else {
                continue;
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
        core.count(names::JOIN_PAIRS, &[], pairs.len() as u64);
        self.enrich(core, &members, &pairs, out)?;
        Ok(pairs.len() as u64)
    }

    /// Calls the plugin on `pairs` (indices into `members`), isolating a pair that traps.
    fn enrich(
        &mut self,
        core: &mut PluginCore,
        members: &[Event],
        pairs: &[Pending],
        out: &mut StageOutput,
    ) -> Result<(), StageError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut call = EnrichCall {
            members,
            pairs,
            laid_out: pairs,
            batch: empty_batch(0),
            request: RefCell::new(JoinRequest {
                events: empty_batch(0),
                pairs: Vec::new(),
            }),
        };
        core.run(&mut call, Trapped::Enrich { pairs: pairs.len() }, out)?;
        Ok(())
    }

    /// Lets go of the waiting events `marks` rule out further matches for, enriching the unmatched
    /// ones alone where the side's policy says so; how many it enriched.
    fn expire(
        &mut self,
        core: &mut PluginCore,
        marks: &[Mark],
        out: &mut StageOutput,
    ) -> Result<u64, StageError> {
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
            core.count(
                names::JOIN_UNMATCHED,
                &[("side", side.label()), ("policy", "drop")],
                dropped[side as usize],
            );
            core.count(
                names::JOIN_UNMATCHED,
                &[("side", side.label()), ("policy", "emit")],
                emitted[side as usize],
            );
        }
        self.enrich(core, &members, &alone, out)?;
        Ok(alone.len() as u64)
    }
}

/// An `enrich` call: the pairs at once, or, after a trap, one by one.
struct EnrichCall<'a> {
    members: &'a [Event],
    pairs: &'a [Pending],
    /// The pairs the request laid out last.
    laid_out: &'a [Pending],
    /// The batch layout the request is filled from.
    batch: EventBatch,
    /// In a cell: the call adds the instance's projection to the request's events.
    request: RefCell<JoinRequest>,
}

impl PluginCall for EnrichCall<'_> {
    type Answer = OutputBatch;

    fn lay_out(&mut self, units: Units) {
        self.laid_out = laid_out(self.pairs, units);
        *self.request.get_mut() = join_request(&mut self.batch, self.members, self.laid_out);
    }

    fn call(&self, instance: &mut PluginInstance) -> Result<OutputBatch, CallError> {
        instance.enrich(&mut self.request.borrow_mut())
    }

    fn read(&mut self, output: OutputBatch, to: &mut Answers<'_>) -> Result<(), AnswerError> {
        let (members, pairs) = (self.members, self.laid_out);
        let (records, rejected) = read_answer(output, pairs.len(), "pair")?;
        for AnswerRecord { unit, target, body } in records {
            let pair = &pairs[unit];
            let anchor = pair
                .left
                .or(pair.right)
                .and_then(|i| members.get(i))
                .ok_or(AnswerError::PairWithoutEvents)?;
            let time = [pair.left, pair.right]
                .into_iter()
                .flatten()
                .filter_map(|i| members.get(i))
                .map(Event::time)
                .max()
                .unwrap_or_else(|| anchor.time());
            let mut properties = Vec::new();
            let upstream = [pair.left, pair.right]
                .into_iter()
                .flatten()
                .filter_map(|i| members.get(i))
                .filter_map(labelled_lineage);
            to.label(&mut properties, upstream);
            to.emit(
                target,
                Event {
                    partition: anchor.partition,
                    source: anchor.source.clone(),
                    position: pair.position,
                    key: anchor.key.clone(),
                    event_time: Some(time),
                    enqueued_time: anchor.enqueued_time,
                    properties,
                    body,
                },
            );
        }
        for (unit, reason) in rejected {
            to.reject(pair_letter(members, &pairs[unit]), reason);
        }
        Ok(())
    }

    fn dead_letters(&self, unit: usize) -> Vec<Event> {
        self.pairs
            .get(unit)
            .map(|pair| pair_letter(self.members, pair))
            .into_iter()
            .collect()
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
        events: std::mem::replace(batch, empty_batch(0)),
        pairs: pairs
            .iter()
            .map(|p| JoinPair {
                left: p.left.map(offset),
                right: p.right.map(offset),
            })
            .collect(),
    }
}

impl StageKind for Joins {
    const NAME: &'static str = "JoinStage";

    fn process(&mut self, turn: Turn<'_>, events: &[Event]) -> Result<(), StageError> {
        turn.counted(|core, out| self.arrive(core, Side::Left, events, out))
    }

    fn process_right(&mut self, turn: Turn<'_>, events: &[Event]) -> Result<(), StageError> {
        turn.counted(|core, out| self.arrive(core, Side::Right, events, out))
    }

    fn watermarks(&mut self, turn: Turn<'_>, marks: &[Mark]) -> Result<(), StageError> {
        turn.counted(|core, out| self.expire(core, marks, out))
    }

    fn snapshot(&self, keyed: &KeyedState) -> Vec<u8> {
        let mut w = write_snapshot_start(keyed);
        w.u64(self.state.next_id);
        w.len(self.state.expiry.len());
        let mut sources = Vec::with_capacity(self.state.expiry.len());
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
            sources.push(&waiting.event.source);
        }
        // The waiting events' sources, in the same order, after them: state written before
        // pipelines had several sources ends here, and still restores.
        w.len(sources.len());
        for source in sources {
            w.str(source);
        }
        w.finish()
    }

    fn describe(&self, f: &mut std::fmt::DebugStruct<'_, '_>) {
        f.field("settings", &self.settings)
            .field("waiting", &self.state.waiting.len());
    }

    fn shadow_copy(&self) -> Option<Self> {
        Some(Joins {
            settings: self.settings.clone(),
            state: self.state.clone(),
        })
    }
}

/// How the join state's format version is named in decoding errors.
const SNAPSHOT: SnapshotFormat = SnapshotFormat {
    field: "the join state's format version",
    expected: "join state format version 1",
};

fn restore(bytes: &[u8]) -> Result<(KeyedState, JoinState), DecodeError> {
    let (mut r, keyed) = read_snapshot_start(bytes, &SNAPSHOT)?;
    let mut state = JoinState {
        next_id: r.u64("the next waiting id")?,
        ..JoinState::default()
    };
    let count = r.len("the number of waiting events")?;
    let mut order = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.u64("a waiting event's id")?;
        order.push(id);
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
    if !r.is_empty() {
        let sources = r.len("the number of waiting events' sources")?;
        for id in order.iter().take(sources) {
            let source: Arc<str> = Arc::from(r.str("a waiting event's source")?);
            if let Some((_, waiting)) = state.waiting.get_mut(id) {
                waiting.event.source = source;
            }
        }
    }
    Ok((keyed, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Writer;

    #[test]
    fn state_snapshot_round_trips() {
        let mut state = JoinState::default();
        let key: Arc<str> = Arc::from("order-1");
        let mut event = Event::new(0, 4, &b"{\"OrderId\":\"order-1\"}"[..]);
        event.event_time = Some(1000);
        event.source = Arc::from("payments");
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
        // State written before several sources: the events' sources are unknown.
        let (_, old) = restore(&w.clone().finish()).expect("restore an old snapshot");
        assert_eq!(&*old.waiting[&7].1.event.source, "");
        w.len(1);
        w.str("payments");
        let (_, restored) = restore(&w.finish()).expect("restore");
        assert_eq!(restored, state);
        assert_eq!(&*restored.waiting[&7].1.event.source, "payments");
    }
}
