//! Shadow runs: a candidate version runs beside a stage's active version on the next N live
//! events of each partition, on a copy of the keyed state, and its outputs are compared with the
//! active version's instead of being delivered. The slot holds the run ([`ShadowBoard`]); each
//! partition worker's stage feeds it what both versions made of the same events
//! ([`ShadowRun::record`]); the admin API reports it ([`ShadowReport`]).
//!
//! Transform stages run the candidate on a copy of the keyed state; window and join stages on a
//! copy of their whole state (open windows and their accumulators, waiting join events), with the
//! same watermarks as the active version, so a window's or a pair's records are compared as the
//! two versions made them.
//!
//! A run ends when every partition taking part got its N events, or when its time bound (if
//! any) passes: partitions that got fewer events by then are reported as partly covered, or not
//! covered when they got none. A partition this process acquires during the run (a hand-off in
//! scale-out) joins it and is reported as joined late; one it loses during the run is reported
//! as handed off, covered as far as it got.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How many differing pairs a report keeps per output.
pub const FIRST_DIFFERENCES: usize = 5;

/// The name under which a report counts rejected events (their reasons are compared).
pub const REJECTED_OUTPUT: &str = "(rejected)";

/// One record of one version in a shadow comparison: the position of the event it derives from
/// and its body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRecord {
    /// Position of the input event.
    pub position: u64,
    /// The body (a rejection's reason for [`REJECTED_OUTPUT`]).
    pub body: String,
}

/// What two versions made of the same events, by output name.
pub type ShadowOutputs = BTreeMap<String, Vec<ShadowRecord>>;

/// One pair of records that differ.
#[derive(Debug, Clone, Serialize)]
pub struct DifferingPair {
    /// The partition.
    pub partition: u32,
    /// Position of the input event.
    pub position: u64,
    /// What the active version made (`None`: nothing at that place).
    pub active: Option<String>,
    /// What the candidate made (`None`: nothing at that place).
    pub shadow: Option<String>,
}

/// One output's comparison.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputComparison {
    /// Records the active version made.
    pub active: u64,
    /// Records the candidate made.
    pub shadow: u64,
    /// Places (n-th record of the output for the same events) where they differ.
    pub differing: u64,
    /// The first differing pairs.
    pub first_differences: Vec<DifferingPair>,
}

/// One partition's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionProgress {
    /// Events both versions got.
    pub events: u64,
    /// Whether it got the run's events (or stopped: see `failed`).
    pub done: bool,
    /// Why the candidate stopped early (it trapped, or could not be instantiated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The partition was acquired by this process after the run started.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub joined_late: bool,
    /// The partition was handed to another process before it got the run's events.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub handed_off: bool,
}

/// A shadow run, as the admin API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    /// The run's number (per process).
    pub id: u64,
    /// The candidate's version (content hash).
    pub version: String,
    /// The candidate's crate name, when its component records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The candidate's crate version, when its component records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crate_version: Option<String>,
    /// Events each partition runs both versions on.
    pub events_per_partition: u64,
    /// Progress by partition (the partitions this process owned when the run started).
    pub partitions: BTreeMap<u32, PartitionProgress>,
    /// Comparison by output.
    pub outputs: BTreeMap<String, OutputComparison>,
    /// The run's time bound in seconds: when it passes, the run ends with what it compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_seconds: Option<u64>,
    /// The run ended at its time bound, before every partition got its events.
    pub timed_out: bool,
    /// The run ended: every partition is done, or the time bound passed.
    pub done: bool,
    /// Done, at least one event compared, nothing differs and the candidate never failed.
    pub equal: bool,
}

/// A candidate version running in the shadow of a stage's active one.
#[derive(Debug)]
pub struct ShadowRun<P> {
    id: u64,
    plugin: Arc<P>,
    events: u64,
    /// When the run started, and how long it may last.
    started: Instant,
    within: Option<Duration>,
    /// Set once the run ended (stages stop running the candidate).
    over: AtomicBool,
    report: Mutex<ShadowReport>,
}

impl<P: super::LoadedPlugin> ShadowRun<P> {
    /// A run of `plugin` over the next `events` events of each of `partitions`, ending after
    /// `within` at the latest.
    pub fn new(
        id: u64,
        plugin: Arc<P>,
        events: u64,
        partitions: &[u32],
        within: Option<Duration>,
    ) -> Self {
        let package = plugin.package();
        let report = ShadowReport {
            id,
            version: plugin.version().to_string(),
            name: package.map(|p| p.name.clone()),
            crate_version: package.map(|p| p.version.clone()),
            events_per_partition: events,
            partitions: partitions
                .iter()
                .map(|p| (*p, PartitionProgress::default()))
                .collect(),
            outputs: BTreeMap::new(),
            within_seconds: within.map(|w| w.as_secs()),
            timed_out: false,
            done: partitions.is_empty() && events == 0,
            equal: false,
        };
        ShadowRun {
            id,
            plugin,
            events,
            started: Instant::now(),
            within,
            over: AtomicBool::new(false),
            report: Mutex::new(report),
        }
    }
}

impl<P> ShadowRun<P> {
    /// The run's number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The candidate.
    pub fn plugin(&self) -> &Arc<P> {
        &self.plugin
    }

    /// Events each partition runs both versions on.
    pub fn events(&self) -> u64 {
        self.events
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ShadowReport> {
        self.report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The run as it stands (ended, if its time bound passed).
    pub fn report(&self) -> ShadowReport {
        let mut report = self.lock();
        self.check_time(&mut report);
        report.clone()
    }

    /// Whether the run ended: stages no longer run the candidate.
    pub fn is_over(&self) -> bool {
        if self.over.load(Ordering::Acquire) {
            return true;
        }
        if self.within.is_some_and(|w| self.started.elapsed() >= w) {
            let mut report = self.lock();
            self.check_time(&mut report);
        }
        self.over.load(Ordering::Acquire)
    }

    /// Ends the run when its time bound passed.
    fn check_time(&self, report: &mut ShadowReport) {
        if report.done || self.within.is_none_or(|w| self.started.elapsed() < w) {
            return;
        }
        report.timed_out = true;
        report.done = true;
        self.settle(report);
    }

    /// `partition`'s stage takes part in the run: how many events it already got (a stage made
    /// again for a partition goes on where the last one stopped), or `None` when the run is
    /// over or the partition's part is done. A partition the run did not list joined late.
    pub fn join(&self, partition: u32) -> Option<u64> {
        if self.is_over() {
            return None;
        }
        let mut report = self.lock();
        let progress = report
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionProgress {
                joined_late: true,
                ..PartitionProgress::default()
            });
        // A partition handed off and acquired again goes on where it stopped.
        if progress.done && !progress.handed_off {
            return None;
        }
        progress.handed_off = false;
        progress.done = false;
        Some(progress.events)
    }

    /// `partition`'s stage is gone before its part was done (the partition was handed to
    /// another process, or the stage stopped): it is covered as far as it got.
    pub fn leave(&self, partition: u32) {
        let mut report = self.lock();
        if report.done {
            return;
        }
        let progress = report.partitions.entry(partition).or_default();
        if progress.done {
            return;
        }
        progress.handed_off = true;
        progress.done = true;
        self.settle(&mut report);
    }

    /// What both versions made of `events` more events of `partition` (see
    /// [`ShadowRun::complete`] for the end of its part).
    pub fn record(
        &self,
        partition: u32,
        events: u64,
        active: &ShadowOutputs,
        shadow: &ShadowOutputs,
    ) {
        let mut report = self.lock();
        if report.done {
            return;
        }
        let progress = report.partitions.entry(partition).or_default();
        progress.events += events;
        let empty = Vec::new();
        let names: std::collections::BTreeSet<&String> =
            active.keys().chain(shadow.keys()).collect();
        for name in names {
            let (a, s) = (
                active.get(name).unwrap_or(&empty),
                shadow.get(name).unwrap_or(&empty),
            );
            let comparison = report.outputs.entry(name.clone()).or_default();
            comparison.active += a.len() as u64;
            comparison.shadow += s.len() as u64;
            for index in 0..a.len().max(s.len()) {
                let (left, right) = (a.get(index), s.get(index));
                if left.map(|r| &r.body) == right.map(|r| &r.body) {
                    continue;
                }
                comparison.differing += 1;
                if comparison.first_differences.len() < FIRST_DIFFERENCES {
                    comparison.first_differences.push(DifferingPair {
                        partition,
                        position: left.or(right).map_or(0, |r| r.position),
                        active: left.map(|r| r.body.clone()),
                        shadow: right.map(|r| r.body.clone()),
                    });
                }
            }
        }
        self.settle(&mut report);
    }

    /// `partition`'s part is done: it got its events (and, for a window or join stage, the
    /// watermarks after them).
    pub fn complete(&self, partition: u32) {
        let mut report = self.lock();
        if report.done {
            return;
        }
        report.partitions.entry(partition).or_default().done = true;
        self.settle(&mut report);
    }

    /// The candidate stopped on `partition` for `reason`.
    pub fn fail(&self, partition: u32, reason: String) {
        let mut report = self.lock();
        if report.done {
            return;
        }
        let progress = report.partitions.entry(partition).or_default();
        progress.done = true;
        progress.failed = Some(reason);
        self.settle(&mut report);
    }

    fn settle(&self, report: &mut ShadowReport) {
        report.done = report.done || report.partitions.values().all(|p| p.done);
        let compared: u64 = report.partitions.values().map(|p| p.events).sum();
        report.equal = report.done
            && compared > 0
            && report.partitions.values().all(|p| p.failed.is_none())
            && report.outputs.values().all(|o| o.differing == 0);
        if report.done {
            self.over.store(true, Ordering::Release);
        }
    }
}

/// A slot's shadow run, if any: the one the stages of its partitions feed.
#[derive(Debug)]
pub struct ShadowBoard<P> {
    current: Mutex<Option<Arc<ShadowRun<P>>>>,
    /// Changes with each new run, so that a stage looks at the board only when it changed.
    generation: AtomicU64,
}

impl<P> Default for ShadowBoard<P> {
    fn default() -> Self {
        ShadowBoard {
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }
}

impl<P> ShadowBoard<P> {
    /// Starts `run`, replacing the one before (whose report is gone).
    pub fn start(&self, run: ShadowRun<P>) -> Arc<ShadowRun<P>> {
        let run = Arc::new(run);
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(run.clone());
        self.generation.fetch_add(1, Ordering::Release);
        run
    }

    /// The board's generation: it changes when a run starts.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current run.
    pub fn current(&self) -> Option<Arc<ShadowRun<P>>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(records: &[(&str, u64, &str)]) -> ShadowOutputs {
        let mut outputs = ShadowOutputs::new();
        for (name, position, body) in records {
            outputs
                .entry((*name).to_owned())
                .or_default()
                .push(ShadowRecord {
                    position: *position,
                    body: (*body).to_owned(),
                });
        }
        outputs
    }

    /// A run over `events` events of each of `partitions`, ending after `within`.
    fn run(events: u64, partitions: &[u32], within: Option<Duration>) -> ShadowRun<()> {
        ShadowRun {
            id: 1,
            plugin: Arc::new(()),
            events,
            started: Instant::now(),
            within,
            over: AtomicBool::new(false),
            report: Mutex::new(ShadowReport {
                id: 1,
                version: "v".into(),
                name: None,
                crate_version: None,
                events_per_partition: events,
                partitions: partitions
                    .iter()
                    .map(|p| (*p, PartitionProgress::default()))
                    .collect(),
                outputs: BTreeMap::new(),
                within_seconds: within.map(|w| w.as_secs()),
                timed_out: false,
                done: false,
                equal: false,
            }),
        }
    }

    #[test]
    fn a_run_counts_records_and_keeps_the_first_differing_pairs() {
        let run = run(3, &[0, 1], None);
        run.record(
            0,
            3,
            &outputs(&[("rows", 1, "a"), ("rows", 2, "b"), ("alerts", 2, "x")]),
            &outputs(&[("rows", 1, "a"), ("rows", 2, "B")]),
        );
        run.complete(0);
        let report = run.report();
        assert!(!report.done, "partition 1 has seen nothing");
        let rows = &report.outputs["rows"];
        assert_eq!((rows.active, rows.shadow, rows.differing), (2, 2, 1));
        assert_eq!(rows.first_differences[0].position, 2);
        assert_eq!(rows.first_differences[0].shadow.as_deref(), Some("B"));
        let alerts = &report.outputs["alerts"];
        assert_eq!((alerts.active, alerts.shadow, alerts.differing), (1, 0, 1));
        assert_eq!(alerts.first_differences[0].shadow, None);

        run.record(
            1,
            3,
            &outputs(&[("rows", 7, "c")]),
            &outputs(&[("rows", 7, "c")]),
        );
        assert!(!run.report().done, "partition 1's part is not complete yet");
        run.complete(1);
        let report = run.report();
        assert!(report.done && !report.equal);
        assert!(run.is_over());
        assert_eq!(run.join(2), None, "no partition joins a run that ended");
    }

    #[test]
    fn a_partition_without_events_ends_the_run_at_its_time_bound_uncovered() {
        let run = run(2, &[0, 1], Some(Duration::from_millis(50)));
        run.record(
            0,
            2,
            &outputs(&[("rows", 1, "a")]),
            &outputs(&[("rows", 1, "a")]),
        );
        run.complete(0);
        assert!(!run.report().done, "partition 1 may still get events");
        assert!(!run.is_over());
        std::thread::sleep(Duration::from_millis(60));
        assert!(run.is_over());
        let report = run.report();
        assert!(report.done && report.timed_out, "{report:?}");
        assert!(report.equal, "what was compared agrees: {report:?}");
        assert_eq!(report.partitions[&1].events, 0);
        assert!(!report.partitions[&1].done);
        // Nothing is recorded after the end.
        run.record(
            1,
            2,
            &outputs(&[("rows", 2, "a")]),
            &outputs(&[("rows", 2, "b")]),
        );
        assert_eq!(run.report().outputs["rows"].differing, 0);
    }

    #[test]
    fn nothing_compared_is_not_equal() {
        let run = run(2, &[0], Some(Duration::ZERO));
        let report = run.report();
        assert!(
            report.done && report.timed_out && !report.equal,
            "{report:?}"
        );
    }

    #[test]
    fn partitions_acquired_or_lost_during_the_run_are_reported() {
        let run = run(2, &[0], None);
        assert_eq!(run.join(0), Some(0));
        assert_eq!(run.join(5), Some(0), "a partition acquired late joins");
        run.record(5, 1, &ShadowOutputs::new(), &ShadowOutputs::new());
        // Its stage is made again (the partition came back): it goes on where it stopped.
        assert_eq!(run.join(5), Some(1));
        run.leave(5);
        assert!(run.report().partitions[&5].handed_off);
        // Acquired again: it goes on; then handed off for good.
        assert_eq!(run.join(5), Some(1));
        run.leave(5);
        run.record(0, 2, &ShadowOutputs::new(), &ShadowOutputs::new());
        run.complete(0);
        let report = run.report();
        let late = &report.partitions[&5];
        assert!(
            late.joined_late && late.handed_off && late.done,
            "{report:?}"
        );
        assert_eq!(late.events, 1);
        assert!(!report.partitions[&0].joined_late);
        assert!(report.done && report.equal, "{report:?}");
    }
}
