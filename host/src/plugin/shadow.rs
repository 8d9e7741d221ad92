//! Shadow runs: a candidate version runs beside a stage's active version on the next N live
//! events of each partition, on a copy of the keyed state, and its outputs are compared with the
//! active version's instead of being delivered. The slot holds the run ([`ShadowBoard`]); each
//! partition worker's stage feeds it what both versions made of the same events
//! ([`ShadowRun::record`]); the admin API reports it ([`ShadowReport`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Every partition is done.
    pub done: bool,
    /// Done, nothing differs and the candidate never failed.
    pub equal: bool,
}

/// A candidate version running in the shadow of a stage's active one.
#[derive(Debug)]
pub struct ShadowRun<P> {
    id: u64,
    plugin: Arc<P>,
    events: u64,
    report: Mutex<ShadowReport>,
}

impl<P: super::LoadedPlugin> ShadowRun<P> {
    /// A run of `plugin` over the next `events` events of each of `partitions`.
    pub fn new(id: u64, plugin: Arc<P>, events: u64, partitions: &[u32]) -> Self {
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
            done: partitions.is_empty() && events == 0,
            equal: false,
        };
        ShadowRun {
            id,
            plugin,
            events,
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

    /// The run as it stands.
    pub fn report(&self) -> ShadowReport {
        self.lock().clone()
    }

    /// What both versions made of `events` more events of `partition`.
    pub fn record(
        &self,
        partition: u32,
        events: u64,
        active: &ShadowOutputs,
        shadow: &ShadowOutputs,
    ) {
        let mut report = self.lock();
        let limit = self.events;
        let progress = report.partitions.entry(partition).or_default();
        progress.events += events;
        progress.done = progress.events >= limit;
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
        Self::settle(&mut report);
    }

    /// The candidate stopped on `partition` for `reason`.
    pub fn fail(&self, partition: u32, reason: String) {
        let mut report = self.lock();
        let progress = report.partitions.entry(partition).or_default();
        progress.done = true;
        progress.failed = Some(reason);
        Self::settle(&mut report);
    }

    fn settle(report: &mut ShadowReport) {
        report.done = report.partitions.values().all(|p| p.done);
        report.equal = report.done
            && report.partitions.values().all(|p| p.failed.is_none())
            && report.outputs.values().all(|o| o.differing == 0);
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

    #[test]
    fn a_run_counts_records_and_keeps_the_first_differing_pairs() {
        let run: ShadowRun<()> = ShadowRun {
            id: 1,
            plugin: Arc::new(()),
            events: 3,
            report: Mutex::new(ShadowReport {
                id: 1,
                version: "v".into(),
                name: None,
                crate_version: None,
                events_per_partition: 3,
                partitions: [(0, PartitionProgress::default()), (1, Default::default())]
                    .into_iter()
                    .collect(),
                outputs: BTreeMap::new(),
                done: false,
                equal: false,
            }),
        };
        run.record(
            0,
            3,
            &outputs(&[("rows", 1, "a"), ("rows", 2, "b"), ("alerts", 2, "x")]),
            &outputs(&[("rows", 1, "a"), ("rows", 2, "B")]),
        );
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
        let report = run.report();
        assert!(report.done && !report.equal);
    }
}
