//! What every generator shares: when its first event is (its start time, kept across restarts),
//! how fast it sends (one pacing loop over numbered steps: readings, booking slots, `rate` per
//! second, up to a limit), and how its events reach the partitions (one [`Source`] for all).

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{Instant, MissedTickBehavior};

use crate::checkpoint::CheckpointStore;
use crate::event::{Event, Position, now_millis};
use crate::source::{
    Dispatcher, PartitionReader, PartitionStart, Source, SourceError, SourceErrorKind,
};

/// How often a paced generator sends the steps that have come due.
const PACING_TICK: Duration = Duration::from_millis(10);

/// A generator's start time and whether it was chosen now (rather than configured or saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StartTime {
    /// Milliseconds since the Unix epoch.
    pub(crate) millis: i64,
    /// Whether it was chosen (and saved) by this call.
    pub(crate) chosen: bool,
}

/// The event time of a generator's first event: `configured` (RFC 3339) when given; else the one
/// saved under `key` in the checkpoint store; else now (to the whole second), saved there so that
/// a restart replays the same event times.
pub(crate) async fn resolve_start_time(
    key: &str,
    configured: Option<&str>,
    checkpoints: &dyn CheckpointStore,
) -> Result<StartTime, (SourceErrorKind, String)> {
    if let Some(text) = configured {
        return chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| StartTime {
                millis: t.timestamp_millis(),
                chosen: false,
            })
            .map_err(|e| {
                (
                    SourceErrorKind::Misconfigured,
                    format!("start_time `{text}` is not an RFC 3339 timestamp: {e}"),
                )
            });
    }
    let saved = checkpoints.load_meta(key).await.map_err(|e| {
        (
            e.kind.into(),
            format!("cannot read the saved start time: {e}"),
        )
    })?;
    if let Some(saved) = saved {
        return saved
            .trim()
            .parse::<i64>()
            .map(|millis| StartTime {
                millis,
                chosen: false,
            })
            .map_err(|e| {
                (
                    SourceErrorKind::Unreadable,
                    format!(
                        "the start time saved under `{key}` is `{saved}`, not epoch milliseconds: {e}"
                    ),
                )
            });
    }
    let now = now_millis().div_euclid(1000) * 1000;
    checkpoints
        .save_meta(key, &now.to_string())
        .await
        .map_err(|e| (e.kind.into(), format!("cannot save the start time: {e}")))?;
    Ok(StartTime {
        millis: now,
        chosen: true,
    })
}

/// Calls `emit` for the steps `first..end` in order, `rate` steps per second (0: as fast as the
/// readers take them, the dispatcher's bounded channels holding the generator back). Stops when
/// `emit` returns false (nobody reads any more) or the dispatcher is closed.
pub(crate) async fn pace<F, Fut>(
    first: u64,
    end: u64,
    rate: u32,
    dispatcher: &Dispatcher,
    mut emit: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut step = first;
    if rate == 0 {
        while step < end {
            if !emit(step).await {
                return;
            }
            step += 1;
        }
        return;
    }
    let rate = u64::from(rate);
    let mut ticks = tokio::time::interval(PACING_TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    // Steps sent since `started`, as far as pacing is concerned.
    let mut paced: u64 = 0;
    while step < end {
        ticks.tick().await;
        if dispatcher.is_closed() {
            return;
        }
        let due = u64::try_from(started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000)
            .unwrap_or(u64::MAX);
        // After a stall (slow readers), catch up by at most one second's worth.
        paced = paced.max(due.saturating_sub(rate));
        while paced < due && step < end {
            if !emit(step).await {
                return;
            }
            paced += 1;
            step += 1;
        }
    }
}

/// A generator's model: numbered steps (a reading, a booking slot), each a pure function of the
/// seed and its number, sent as events whose positions grow with the step.
pub trait Steps: Send + Sync + 'static {
    /// Refuses settings the model cannot run with (a source built without the configuration's
    /// checks, as benchmarks do); `partitions` is the source's.
    fn check(&self, _partitions: u32) -> Result<(), String> {
        Ok(())
    }

    /// The steps to send when every partition's checkpoint covers the positions up to `after`,
    /// with `limit` the configured most (readings, orders; `None`: endless).
    fn steps(&self, after: Option<Position>, limit: Option<u64>) -> Range<u64>;

    /// Sends step `step` through `out`; false once nobody reads any more.
    fn emit(
        &self,
        step: u64,
        limit: Option<u64>,
        out: &Output,
    ) -> impl Future<Output = bool> + Send;

    /// Called as source `source` starts producing after `after`.
    fn starting(&self, _source: &str, _after: Option<Position>) {}
}

/// Where a generator's events go: the dispatcher, minus the positions every partition's
/// checkpoint covers.
pub struct Output {
    dispatcher: Dispatcher,
    after: Option<Position>,
    partitions: u32,
}

impl Output {
    /// Whether `position` is beyond what every partition's checkpoint covers, so must be sent.
    pub(crate) fn wanted(&self, position: Position) -> bool {
        self.after.is_none_or(|after| position > after)
    }

    /// The number of partitions events are spread over.
    pub(crate) fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Sends one event; false once every reader is gone.
    pub(crate) async fn send(&self, event: Event) -> bool {
        self.dispatcher.send(event).await || !self.dispatcher.is_closed()
    }
}

/// A generator as a source: its model's steps, `rate` per second, dispatched over `partitions`.
#[derive(Debug)]
pub struct GeneratorSource<M> {
    pub(super) name: String,
    pub(super) partitions: u32,
    pub(super) rate: u32,
    /// The most steps' worth (readings, orders); `None`: endless.
    pub(super) limit: Option<u64>,
    pub(super) model: Arc<M>,
}

#[async_trait]
impl<M: Steps> Source for GeneratorSource<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        self.partitions
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        self.model.check(self.partitions).map_err(|reason| {
            SourceError::start(SourceErrorKind::Misconfigured, &self.name, reason)
        })?;
        let (dispatcher, readers) = Dispatcher::new(&self.name, self.partitions, &starts)?;
        let after = dispatcher.resume_from();
        self.model.starting(&self.name, after);
        let out = Output {
            dispatcher,
            after,
            partitions: self.partitions,
        };
        let model = Arc::clone(&self.model);
        let (rate, limit) = (self.rate, self.limit);
        tokio::spawn(async move {
            let steps = model.steps(after, limit);
            pace(steps.start, steps.end, rate, &out.dispatcher, |step| {
                model.emit(step, limit, &out)
            })
            .await;
        });
        Ok(readers)
    }
}
