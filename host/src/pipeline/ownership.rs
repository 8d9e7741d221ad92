//! Sharing a pipeline's partitions between processes through ownership claims in the checkpoint
//! store, with the load-balancing of the Azure SDKs' event processors:
//!
//! - every cycle (`renew_interval`, a third of the expiry by default) the manager lists the
//!   claims, renews its own (a conditional write on the version it holds: a failed renewal means
//!   another process took the partition), and counts the live owners (claims renewed within the
//!   expiry);
//! - it then aims at an even share: `partitions / owners`, one more for as many owners as the
//!   division leaves over. Below its share it claims partitions nobody owns (never claimed,
//!   released, or whose owner stopped renewing), and when none are left it steals from owners
//!   above their share;
//! - a partition acquired starts a worker that resumes from the partition's checkpoint (whoever
//!   wrote it); a partition lost stops its worker, which finishes its batch and checkpoints; at
//!   shutdown every worker stops and every claim is released, so the others take the partitions
//!   at their next cycle instead of waiting for the expiry.
//!
//! A worker whose partition another reader took (an Event Hubs reader with a higher owner level,
//! outside Weir's claims) stops and checkpoints; its claim is released and the partition is not
//! claimed again here for one expiry, after which the balancing may claim it again. A reader
//! refused again gives it up again, and the pause doubles each time the partition is lost
//! without an event read, up to [`MAX_TAKEN_PAUSE`] (or the expiry, if longer).
//!
//! A process that is killed keeps its claims until they expire: its partitions move within the
//! expiry plus one cycle. While a stolen partition's old owner has not noticed yet, both may
//! process it; the Delta sink's per-partition transactions make the second commit of the same
//! positions a no-op, and at-least-once sinks carry deterministic ids.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::worker::PartitionWorker;
use super::{PipelineContext, WorkerError, WorkerReport, build_worker};
use crate::checkpoint::Ownership;
use crate::config::OwnershipConfig;
use crate::event::{PartitionId, now_millis};
use crate::metrics::names;
use crate::source::{PartitionStart, Source};

/// The longest pause before claiming again a partition another reader keeps taking (the Azure SDKs'
/// ownership expiry: their processors retry a partition about as often).
const MAX_TAKEN_PAUSE: Duration = Duration::from_secs(120);

/// A partition this process owns and the worker reading it.
struct Owned {
    /// The claim as last written by this process.
    claim: Ownership,
    /// When the claim was last written successfully.
    renewed_at: Instant,
    stop: watch::Sender<bool>,
    /// The task that opens the partition after its checkpoint, then runs its worker. Opening
    /// (a connection, the plugins' instances) can take seconds: it runs beside the manager, so
    /// that the claims are renewed meanwhile.
    handle: JoinHandle<WorkerOutcome>,
}

/// How a partition's task ended.
enum WorkerOutcome {
    /// The partition could not be opened: the claim is given back, to be tried again.
    NotStarted(String),
    /// The worker ran and stopped, or failed.
    Ran(Result<WorkerReport, WorkerError>),
}

/// Claims, renews, balances and releases the partitions of one pipeline, starting and stopping
/// their workers.
pub(crate) struct OwnershipManager {
    context: Arc<PipelineContext>,
    /// The pipeline's sources: a claimed partition opens partition i of each.
    sources: Vec<Arc<dyn Source>>,
    owner: String,
    expiry: Duration,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
    partitions: u32,
    owned: BTreeMap<PartitionId, Owned>,
    /// Partitions whose worker reached the end of its partition here (sources that end).
    ended: BTreeSet<PartitionId>,
    /// Partitions another reader took, and until when they are not claimed again.
    taken_until: BTreeMap<PartitionId, Instant>,
    /// Partitions another reader took, and the pause before the next claim.
    taken_pause: BTreeMap<PartitionId, Duration>,
    reports: Vec<WorkerReport>,
    /// Workers say here that they finished.
    done_sender: mpsc::UnboundedSender<PartitionId>,
    done: mpsc::UnboundedReceiver<PartitionId>,
    random: plan::Xorshift,
}

/// Why a cycle could not use the store.
type CycleResult = Result<(), WorkerError>;

impl OwnershipManager {
    pub(crate) fn new(
        context: Arc<PipelineContext>,
        sources: Vec<Arc<dyn Source>>,
        config: &OwnershipConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let seed = seed();
        let owner = config
            .owner_id
            .clone()
            .unwrap_or_else(|| format!("weir-{}-{seed:016x}", std::process::id()));
        let expiry = config.expiry.get();
        let interval = config
            .renew_interval
            .map_or(expiry / 3, |interval| interval.get());
        let (done_sender, done) = mpsc::unbounded_channel();
        OwnershipManager {
            partitions: sources.first().map_or(0, |s| s.partition_count()),
            context,
            sources,
            owner,
            expiry,
            interval,
            shutdown,
            owned: BTreeMap::new(),
            ended: BTreeSet::new(),
            taken_until: BTreeMap::new(),
            taken_pause: BTreeMap::new(),
            reports: Vec::new(),
            done_sender,
            done,
            random: plan::Xorshift(seed | 1),
        }
    }

    /// This process's owner id.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs until shutdown (or until every partition has ended here), then stops the workers,
    /// releases the claims and returns the workers' reports.
    pub(crate) async fn run(mut self) -> Result<Vec<WorkerReport>, WorkerError> {
        let outcome = self.balance_until_stopped().await;
        // Whatever ended the loop, the workers stop cleanly and the claims are given back.
        let partitions: Vec<PartitionId> = self.owned.keys().copied().collect();
        let stopped = self.stop_workers(&partitions, "shutdown").await;
        outcome?;
        stopped?;
        self.reports.sort_by_key(|r| r.partition);
        Ok(self.reports)
    }

    async fn balance_until_stopped(&mut self) -> CycleResult {
        loop {
            if *self.shutdown.borrow() {
                return Ok(());
            }
            self.reap_finished().await?;
            if self.ended.len() as u32 >= self.partitions {
                tracing::info!(pipeline = %self.context.name, "every partition was read to its end");
                return Ok(());
            }
            self.cycle().await?;
            let next = Instant::now() + self.interval;
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                _ = self.shutdown.changed() => {}
                Some(_) = self.done.recv() => {}
            }
        }
    }

    /// Collects the workers that ended by themselves: their partition reached its end, another
    /// reader took it, or they failed (which stops the process, as in a pipeline without
    /// ownership).
    async fn reap_finished(&mut self) -> CycleResult {
        let finished: Vec<PartitionId> = self
            .owned
            .iter()
            .filter(|(_, owned)| owned.handle.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in finished {
            let Some(owned) = self.owned.remove(&partition) else {
                continue;
            };
            let report = match join(owned.handle, &self.context.name, partition).await {
                Some(outcome) => outcome?,
                None => {
                    self.release(vec![owned.claim]).await;
                    continue;
                }
            };
            if let Some(reason) = &report.lost {
                // A worker that read nothing was refused at once: wait longer before the next try.
                let pause = match self.taken_pause.get(&partition) {
                    Some(previous) if report.events_in == 0 => {
                        (*previous * 2).min(MAX_TAKEN_PAUSE.max(self.expiry))
                    }
                    _ => self.expiry,
                };
                self.taken_pause.insert(partition, pause);
                self.taken_until.insert(partition, Instant::now() + pause);
                tracing::warn!(
                    pipeline = %self.context.name, partition, %reason,
                    claim_again_in_ms = pause.as_millis() as u64,
                    "partition taken by another reader; its worker checkpointed and stopped; releasing it"
                );
                self.count_change("lost");
            } else {
                self.ended.insert(partition);
                tracing::info!(pipeline = %self.context.name, partition, "partition read to its end; releasing it");
            }
            self.reports.push(report);
            self.release(vec![owned.claim]).await;
        }
        Ok(())
    }

    /// One round of the protocol: see which claims are still ours, renew them, balance.
    async fn cycle(&mut self) -> CycleResult {
        let records = match self
            .context
            .checkpoints
            .list_ownership(&self.context.name)
            .await
        {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(pipeline = %self.context.name, %error, "cannot list ownership claims; retrying next cycle");
                return self.drop_stale_claims().await;
            }
        };
        let held: Vec<Ownership> = self.owned.values().map(|o| o.claim.clone()).collect();
        let plan::Renewal { taken, renew } = plan::renewal(&self.owner, &records, &held);
        if !taken.is_empty() {
            self.stop_workers(&taken, "taken by another process")
                .await?;
        }
        if !self.renew(renew).await? {
            return self.drop_stale_claims().await;
        }
        self.balance(&records).await;
        Ok(())
    }

    /// Writes `renewals` (the claims still ours) again and stops the workers of those another
    /// process took meanwhile. Returns false when the store could not be written.
    async fn renew(&mut self, renewals: Vec<Ownership>) -> Result<bool, WorkerError> {
        if renewals.is_empty() {
            return Ok(true);
        }
        let won = match self
            .context
            .checkpoints
            .claim_ownership(&self.context.name, &renewals)
            .await
        {
            Ok(won) => won,
            Err(error) => {
                tracing::warn!(pipeline = %self.context.name, %error, "cannot renew ownership claims; retrying next cycle");
                return Ok(false);
            }
        };
        let won: HashMap<PartitionId, Ownership> =
            won.into_iter().map(|o| (o.partition, o)).collect();
        let lost: Vec<PartitionId> = self
            .owned
            .keys()
            .copied()
            .filter(|p| !won.contains_key(p))
            .collect();
        for (partition, claim) in won {
            if let Some(owned) = self.owned.get_mut(&partition) {
                owned.claim = claim;
                owned.renewed_at = Instant::now();
            }
        }
        if !lost.is_empty() {
            self.stop_workers(&lost, "renewal lost to another process")
                .await?;
        }
        Ok(true)
    }

    /// Claims what the plan says (see [`plan::claims`]) and starts the won partitions' workers.
    async fn balance(&mut self, records: &[Ownership]) {
        let now_instant = Instant::now();
        self.taken_until.retain(|_, until| *until > now_instant);
        let owned: BTreeSet<PartitionId> = self.owned.keys().copied().collect();
        let paused: BTreeSet<PartitionId> = self.taken_until.keys().copied().collect();
        let view = plan::View {
            owner: &self.owner,
            partitions: self.partitions,
            records,
            owned: &owned,
            ended: &self.ended,
            paused: &paused,
            now: now_millis(),
            expiry_ms: i64::try_from(self.expiry.as_millis()).unwrap_or(i64::MAX),
        };
        let random = &mut self.random;
        let claims = plan::claims(&view, &mut || random.next());
        if !claims.is_empty() && !self.claim(records, &claims).await {
            return;
        }
        self.report_owned();
    }

    /// Writes `claims` and starts a worker for each partition won. Returns false when the store
    /// could not be written.
    async fn claim(&mut self, records: &[Ownership], claims: &[Ownership]) -> bool {
        let pipeline = self.context.name.clone();
        let won = match self
            .context
            .checkpoints
            .claim_ownership(&pipeline, claims)
            .await
        {
            Ok(won) => won,
            Err(error) => {
                tracing::warn!(pipeline = %pipeline, %error, "cannot claim partitions; retrying next cycle");
                return false;
            }
        };
        for claim in won {
            let partition = claim.partition;
            // The last record of the partition, as the plan read them.
            let previous = records
                .iter()
                .rfind(|r| r.partition == partition)
                .map(|r| r.owner.clone())
                .filter(|owner| !owner.is_empty());
            self.start_worker(claim);
            self.count_change("acquired");
            tracing::info!(
                pipeline = %pipeline, partition, owner = %self.owner,
                previous_owner = previous.as_deref().unwrap_or("(none)"),
                "partition acquired"
            );
        }
        true
    }

    /// Without the store, claims not renewed within the expiry may have been taken: stop them.
    async fn drop_stale_claims(&mut self) -> CycleResult {
        let stale: Vec<PartitionId> = self
            .owned
            .iter()
            .filter(|(_, owned)| owned.renewed_at.elapsed() >= self.expiry)
            .map(|(partition, _)| *partition)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        self.stop_workers(&stale, "claim expired while the store was unreachable")
            .await
    }

    /// Starts the partition's task: it opens the partition after its checkpoint and runs its
    /// worker. The claim counts as owned (and is renewed) from now on.
    fn start_worker(&mut self, claim: Ownership) {
        let partition = claim.partition;
        let context = self.context.clone();
        let sources = self.sources.clone();
        let (stop, stop_receiver) = watch::channel(false);
        let done = self.done_sender.clone();
        let handle = tokio::spawn(async move {
            let outcome = match open_worker(&context, &sources, partition, stop_receiver).await {
                Ok(worker) => WorkerOutcome::Ran(worker.run().await),
                Err(reason) => WorkerOutcome::NotStarted(reason),
            };
            let _ = done.send(partition);
            outcome
        });
        self.owned.insert(
            partition,
            Owned {
                claim,
                renewed_at: Instant::now(),
                stop,
                handle,
            },
        );
    }

    /// Stops the workers of `partitions` (each finishes its batch and checkpoints) and forgets
    /// their claims. A worker that fails while stopping fails the run only at shutdown: a
    /// partition lost to another process is that process's now.
    async fn stop_workers(&mut self, partitions: &[PartitionId], why: &str) -> CycleResult {
        let mut stopping = Vec::new();
        for partition in partitions {
            if let Some(owned) = self.owned.remove(partition) {
                owned.stop.send_replace(true);
                stopping.push((*partition, owned));
            }
        }
        let mut first_error = None;
        for (partition, owned) in stopping {
            match join(owned.handle, &self.context.name, partition).await {
                None => {}
                Some(Ok(report)) => self.reports.push(report),
                Some(Err(error)) if why == "shutdown" => {
                    first_error.get_or_insert(error);
                }
                Some(Err(error)) => {
                    tracing::warn!(pipeline = %self.context.name, partition, %error, "the worker of a lost partition failed while stopping");
                }
            }
            if why == "shutdown" {
                self.release(vec![owned.claim]).await;
            } else {
                self.count_change("lost");
                tracing::info!(pipeline = %self.context.name, partition, reason = why, "partition lost; its worker stopped");
            }
        }
        self.report_owned();
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Gives claims back (empty owner), so others need not wait for the expiry.
    async fn release(&self, claims: Vec<Ownership>) {
        let releases: Vec<Ownership> = claims
            .into_iter()
            .map(|claim| Ownership {
                owner: String::new(),
                ..claim
            })
            .collect();
        if releases.is_empty() {
            return;
        }
        match self
            .context
            .checkpoints
            .claim_ownership(&self.context.name, &releases)
            .await
        {
            Ok(released) => {
                for claim in &released {
                    tracing::info!(pipeline = %self.context.name, partition = claim.partition, "partition released");
                }
                self.context.metrics.add(
                    names::OWNERSHIP_CHANGES,
                    &[("pipeline", &self.context.name), ("change", "released")],
                    released.len() as u64,
                );
            }
            Err(error) => {
                tracing::warn!(pipeline = %self.context.name, %error, "cannot release ownership claims; they expire by themselves");
            }
        }
    }

    fn count_change(&self, change: &'static str) {
        self.context.metrics.add(
            names::OWNERSHIP_CHANGES,
            &[("pipeline", &self.context.name), ("change", change)],
            1,
        );
    }

    fn report_owned(&self) {
        self.context.metrics.set(
            names::OWNED_PARTITIONS,
            &[("pipeline", &self.context.name)],
            self.owned.len() as f64,
        );
    }
}

/// Opens `partition` after its checkpoint and builds its worker.
async fn open_worker(
    context: &PipelineContext,
    sources: &[Arc<dyn Source>],
    partition: PartitionId,
    stop: watch::Receiver<bool>,
) -> Result<PartitionWorker, String> {
    let checkpoint = context
        .checkpoints
        .load(&context.name, partition)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let mut readers = Vec::with_capacity(sources.len());
    for source in sources {
        let after = super::inputs::resume_after(&checkpoint, sources.len(), source.name());
        let reader = source
            .open(vec![PartitionStart { partition, after }])
            .await
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| format!("source `{}` opened no reader", source.name()))?;
        readers.push(reader);
    }
    build_worker(context, readers, checkpoint, stop)
        .await
        .map_err(|e| e.to_string())
}

/// Waits for a partition's task: `None` when the partition could not be opened (logged here),
/// else the worker's outcome, a panic turned into a worker error.
async fn join(
    handle: JoinHandle<WorkerOutcome>,
    pipeline: &str,
    partition: PartitionId,
) -> Option<Result<WorkerReport, WorkerError>> {
    match handle.await {
        Ok(WorkerOutcome::Ran(outcome)) => Some(outcome),
        Ok(WorkerOutcome::NotStarted(reason)) => {
            tracing::error!(pipeline = %pipeline, partition, %reason, "cannot start the partition's worker; releasing it");
            None
        }
        Err(join_error) => Some(Err(WorkerError::Stage(
            crate::stage::StageError::worker_task(pipeline.into(), partition, &join_error),
        ))),
    }
}

/// A seed that differs between processes and starts.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_i64(now_millis());
    hasher.finish()
}

#[path = "ownership_plan.rs"]
mod plan;

#[cfg(test)]
#[path = "ownership_tests.rs"]
mod tests;
