//! The deduplication stage: drops an event whose id was seen within a horizon of event time.
//!
//! The streaming-at-scale samples inject about 0.1% duplicated events (the same reading sent
//! twice); a window counting readings must not count those twice. The stage remembers each id with
//! its event time; an event whose id it remembers from at most `horizon` earlier or later is a
//! duplicate, dropped and counted (`weir_duplicates_total`). Ids older than the newest event time
//! minus the horizon are forgotten, so the state stays bounded by the horizon. Everything depends
//! only on the partition's events, and the state is in the checkpoint: a replay drops the same
//! events. Events without the id field pass unchanged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Stage, StageError, StageOutput};
use crate::codec::{DecodeError, Reader, Writer};
use crate::event::Event;
use crate::json::{FieldValue, top_level_field};
use crate::metrics::{Metrics, names};

/// The output every kept event goes to.
pub const DEDUP_OUTPUT: &str = "events";

/// Deduplication of one partition's events.
pub struct DedupStage {
    name: Arc<str>,
    pipeline: Arc<str>,
    partition: u32,
    id_field: String,
    horizon: i64,
    output: Arc<str>,
    /// Each remembered id and the event time it was seen at.
    seen: HashMap<Arc<str>, i64>,
    /// The same, by time, to forget the oldest first.
    by_time: BTreeSet<(i64, Arc<str>)>,
    newest: Option<i64>,
    metrics: Metrics,
}

impl std::fmt::Debug for DedupStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupStage")
            .field("name", &self.name)
            .field("id_field", &self.id_field)
            .field("horizon", &self.horizon)
            .field("remembered", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl DedupStage {
    /// A stage dropping events whose `id_field` was seen within `horizon` milliseconds, starting
    /// from a checkpointed `snapshot` (or from nothing).
    pub fn new(
        name: Arc<str>,
        pipeline: Arc<str>,
        partition: u32,
        id_field: String,
        horizon: i64,
        snapshot: Option<&[u8]>,
        metrics: Metrics,
    ) -> Result<Self, DecodeError> {
        let mut stage = DedupStage {
            name,
            pipeline,
            partition,
            id_field,
            horizon,
            output: Arc::from(DEDUP_OUTPUT),
            seen: HashMap::new(),
            by_time: BTreeSet::new(),
            newest: None,
            metrics,
        };
        if let Some(bytes) = snapshot {
            stage.restore(bytes)?;
        }
        Ok(stage)
    }

    /// Ids remembered now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn id(&self, event: &Event) -> Result<Option<Arc<str>>, String> {
        Ok(match top_level_field(&event.body, &self.id_field)? {
            Some(FieldValue::Text(text)) => Some(Arc::from(text.as_ref())),
            Some(value @ FieldValue::Number(_)) => value.to_json().map(Arc::from),
            _ => None,
        })
    }

    fn forget_before(&mut self, time: i64) {
        while let Some((oldest, _)) = self.by_time.first()
            && *oldest < time
        {
            if let Some((_, id)) = self.by_time.pop_first() {
                self.seen.remove(&id);
            }
        }
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8("the dedup state's format version")? != 1 {
            return Err(DecodeError {
                offset: 0,
                what: "dedup state format version 1",
            });
        }
        self.newest = r.opt_i64("the newest event time")?;
        let count = r.len("the number of remembered ids")?;
        for _ in 0..count {
            let id: Arc<str> = Arc::from(r.str("an id")?);
            let time = r.i64("an id's time")?;
            self.seen.insert(id.clone(), time);
            self.by_time.insert((time, id));
        }
        Ok(())
    }
}

impl Stage for DedupStage {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn process(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        let mut duplicates = 0u64;
        for event in events {
            let Some(id) = out.checked(event, self.id(event)) else {
                continue;
            };
            let Some(id) = id else {
                out.emitted.push((self.output.clone(), event.clone()));
                continue;
            };
            let time = event.time();
            if let Some(&seen) = self.seen.get(&id)
                && (time - seen).abs() <= self.horizon
            {
                duplicates += 1;
                continue;
            }
            if let Some(previous) = self.seen.insert(id.clone(), time) {
                self.by_time.remove(&(previous, id.clone()));
            }
            self.by_time.insert((time, id));
            let newest = self.newest.map_or(time, |n| n.max(time));
            self.newest = Some(newest);
            self.forget_before(newest.saturating_sub(self.horizon));
            out.emitted.push((self.output.clone(), event.clone()));
        }
        self.metrics.add(
            names::DUPLICATES,
            &[
                ("pipeline", &self.pipeline),
                ("stage", &self.name),
                ("partition", &self.partition.to_string()),
            ],
            duplicates,
        );
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1);
        w.opt_i64(self.newest);
        w.len(self.by_time.len());
        for (time, id) in &self.by_time {
            w.str(id);
            w.i64(*time);
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, id: &str, time: i64) -> Event {
        let mut e = Event::new(0, position, format!("{{\"EventId\":\"{id}\"}}"));
        e.event_time = Some(time);
        e
    }

    fn kept(stage: &mut DedupStage, events: &[Event]) -> Vec<u64> {
        let mut out = StageOutput::default();
        stage.process(events, &mut out).expect("process");
        out.emitted.iter().map(|(_, e)| e.position).collect()
    }

    fn stage(metrics: &Metrics) -> DedupStage {
        DedupStage::new(
            "dedup".into(),
            "p".into(),
            0,
            "EventId".into(),
            60_000,
            None,
            metrics.clone(),
        )
        .expect("stage")
    }

    #[test]
    fn drops_ids_seen_within_the_horizon_and_counts_them() {
        let metrics = Metrics::new();
        let mut dedup = stage(&metrics);
        let events = [
            event(1, "a", 0),
            event(2, "a", 0), // duplicate
            event(3, "b", 10_000),
            event(4, "a", 60_000), // 60 s after: still within the horizon
            event(5, "c", 200_000),
            event(6, "a", 200_000), // "a" was forgotten (older than 200 s - 60 s)
        ];
        assert_eq!(kept(&mut dedup, &events), [1, 3, 5, 6]);
        assert_eq!(metrics.total(names::DUPLICATES), 2.0);
        assert_eq!(
            dedup.remembered(),
            2,
            "only ids of the last minute are kept"
        );
        // Events without the id pass; malformed ones are refused.
        let mut out = StageOutput::default();
        let no_id = Event::new(0, 7, "{}");
        let broken = Event::new(0, 8, "{");
        dedup.process(&[no_id, broken], &mut out).expect("process");
        assert_eq!(out.emitted.len(), 1);
        assert_eq!(out.rejected.len(), 1);
    }

    #[test]
    fn the_snapshot_keeps_what_was_seen() {
        let metrics = Metrics::new();
        let mut dedup = stage(&metrics);
        kept(&mut dedup, &[event(1, "a", 1000), event(2, "b", 2000)]);
        let bytes = dedup.snapshot();
        let mut restored = DedupStage::new(
            "dedup".into(),
            "p".into(),
            0,
            "EventId".into(),
            60_000,
            Some(&bytes),
            metrics.clone(),
        )
        .expect("restore");
        assert_eq!(
            kept(&mut restored, &[event(3, "a", 1000), event(4, "c", 3000)]),
            [4]
        );
        assert_eq!(restored.remembered(), 3);
    }
}
