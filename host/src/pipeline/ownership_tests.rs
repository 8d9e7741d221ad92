//! The manager keeps renewing its claims while the partitions it won open: opening one (a
//! connection, the plugins' instances) can take longer than the expiry, and a claim left that
//! long looks abandoned to the other processes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::OwnershipManager;
use crate::checkpoint::{CheckpointStore, LocalCheckpointStore};
use crate::config::OwnershipConfig;
use crate::event::{PartitionId, now_millis};
use crate::pipeline::worker::tests::context;
use crate::source::{PartitionReader, PartitionStart, ReadOutcome, Source, SourceError};

/// A source whose partitions each take `open_delay` to open, then never have an event.
struct SlowToOpen {
    partitions: u32,
    open_delay: Duration,
}

struct Quiet {
    partition: PartitionId,
}

#[async_trait]
impl PartitionReader for Quiet {
    fn partition(&self) -> PartitionId {
        self.partition
    }

    async fn next_batch(
        &mut self,
        _max: usize,
        wait: Duration,
    ) -> Result<ReadOutcome, SourceError> {
        tokio::time::sleep(wait.min(Duration::from_millis(50))).await;
        Ok(ReadOutcome::Idle)
    }
}

#[async_trait]
impl Source for SlowToOpen {
    fn name(&self) -> &str {
        "slow"
    }

    fn partition_count(&self) -> u32 {
        self.partitions
    }

    fn partitions_open_independently(&self) -> bool {
        true
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        tokio::time::sleep(self.open_delay).await;
        Ok(starts
            .into_iter()
            .map(|start| {
                Box::new(Quiet {
                    partition: start.partition,
                }) as Box<dyn PartitionReader>
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_renewed_while_partitions_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(LocalCheckpointStore::new(dir.path()));
    let config: OwnershipConfig =
        toml::from_str("expiry = \"2s\"\nrenew_interval = \"200ms\"").expect("ownership");
    // Four partitions opened one after another would take 6 s: three times the expiry.
    let source = Arc::new(SlowToOpen {
        partitions: 4,
        open_delay: Duration::from_millis(1500),
    });
    let (shutdown, shutdown_receiver) = watch::channel(false);
    let manager = OwnershipManager::new(
        Arc::new(context(store.clone())),
        source,
        &config,
        shutdown_receiver,
    );
    let owner = manager.owner().to_owned();
    let run = tokio::spawn(manager.run());

    // For the time the opens would take in a row, every claim of ours stays younger than the
    // expiry (it is renewed every 200 ms).
    let mut oldest_ms = 0;
    let mut claimed = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        let now = now_millis();
        let ours: Vec<i64> = store
            .list_ownership("p")
            .await
            .expect("list")
            .into_iter()
            .filter(|claim| claim.owner == owner)
            .map(|claim| now - claim.last_modified)
            .collect();
        claimed = claimed.max(ours.len());
        oldest_ms = ours.into_iter().fold(oldest_ms, i64::max);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.send_replace(true);
    let reports = run.await.expect("manager task").expect("manager");

    assert_eq!(claimed, 4, "every partition claimed");
    assert!(
        oldest_ms < 2_000,
        "a claim went {oldest_ms} ms without renewal (expiry 2 s, renewal every 200 ms)"
    );
    assert_eq!(reports.len(), 4, "every partition's worker ran and stopped");
}
