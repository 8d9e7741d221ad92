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
        vec![source],
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

/// The ownership plan, row by row: records, owned, now → renewals and claims.
mod plan {
    use std::collections::BTreeSet;

    use super::super::plan::{self, Renewal, View};
    use crate::checkpoint::Ownership;
    use crate::event::PartitionId;

    const NOW: i64 = 1_000_000;
    const EXPIRY_MS: i64 = 30_000;
    /// An age beyond the expiry.
    const EXPIRED: i64 = 40_000;

    /// A record of `partition` by `owner`, written `age` ms ago, at version `r<partition>`.
    fn record(partition: PartitionId, owner: &str, age: i64) -> Ownership {
        Ownership {
            partition,
            owner: owner.to_owned(),
            last_modified: NOW - age,
            version: Some(format!("r{partition}")),
        }
    }

    fn set(partitions: &[PartitionId]) -> BTreeSet<PartitionId> {
        partitions.iter().copied().collect()
    }

    struct Case {
        name: &'static str,
        partitions: u32,
        records: Vec<Ownership>,
        owned: &'static [PartitionId],
        ended: &'static [PartitionId],
        paused: &'static [PartitionId],
        /// How many claims to make.
        count: usize,
        /// Where they are taken from (all of it when `count` is its length).
        from: &'static [PartitionId],
    }

    fn claims(case: &Case, random: &mut dyn FnMut() -> u64) -> Vec<Ownership> {
        let (owned, ended, paused) = (set(case.owned), set(case.ended), set(case.paused));
        let view = View {
            owner: "me",
            partitions: case.partitions,
            records: &case.records,
            owned: &owned,
            ended: &ended,
            paused: &paused,
            now: NOW,
            expiry_ms: EXPIRY_MS,
        };
        plan::claims(&view, random)
    }

    #[test]
    fn claims_move_towards_an_even_share() {
        let held = |owner: &str, partitions: &[PartitionId], age: i64| -> Vec<Ownership> {
            partitions.iter().map(|p| record(*p, owner, age)).collect()
        };
        let cases = [
            Case {
                name: "alone, nothing owned: every partition",
                partitions: 4,
                records: vec![],
                owned: &[],
                ended: &[],
                paused: &[],
                count: 4,
                from: &[0, 1, 2, 3],
            },
            Case {
                name: "alone, everything owned: nothing to do",
                partitions: 4,
                records: held("me", &[0, 1, 2, 3], 0),
                owned: &[0, 1, 2, 3],
                ended: &[],
                paused: &[],
                count: 0,
                from: &[],
            },
            Case {
                name: "two owners: half each, the free half",
                partitions: 4,
                records: held("a", &[0, 1], 1_000),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 2,
                from: &[2, 3],
            },
            Case {
                name: "an odd count: up to the minimum first",
                partitions: 5,
                records: held("a", &[0, 1, 2], 0),
                owned: &[3],
                ended: &[],
                paused: &[],
                count: 1,
                from: &[4],
            },
            Case {
                name: "an odd count: the extra partition is held by the other owner",
                partitions: 5,
                records: [held("a", &[0, 1, 2], 0), held("me", &[3, 4], 0)].concat(),
                owned: &[3, 4],
                ended: &[],
                paused: &[],
                count: 0,
                from: &[],
            },
            Case {
                name: "an odd count: nobody holds the extra partition yet",
                partitions: 5,
                records: held("a", &[0, 1], 0),
                owned: &[2, 3],
                ended: &[],
                paused: &[],
                count: 1,
                from: &[4],
            },
            Case {
                name: "expired claims are free and their owner is not counted",
                partitions: 4,
                records: [held("a", &[0, 1], 0), held("b", &[2, 3], EXPIRED)].concat(),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 2,
                from: &[2, 3],
            },
            Case {
                name: "a claim exactly at the expiry is expired",
                partitions: 2,
                records: held("a", &[0, 1], EXPIRY_MS),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 2,
                from: &[0, 1],
            },
            Case {
                name: "released claims are free",
                partitions: 4,
                records: [held("a", &[0, 1], 0), held("", &[2, 3], 0)].concat(),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 2,
                from: &[2, 3],
            },
            Case {
                name: "partitions read to their end are never claimed",
                partitions: 4,
                records: vec![],
                owned: &[],
                ended: &[2],
                paused: &[],
                count: 3,
                from: &[0, 1, 3],
            },
            Case {
                name: "partitions another reader took are not claimed while paused",
                partitions: 4,
                records: vec![],
                owned: &[],
                ended: &[],
                paused: &[0, 3],
                count: 2,
                from: &[1, 2],
            },
            Case {
                name: "nothing free: steal from an overloaded owner down to the share",
                partitions: 4,
                records: held("a", &[0, 1, 2, 3], 0),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 2,
                from: &[0, 1, 2, 3],
            },
            Case {
                name: "steal from the most loaded owner",
                partitions: 6,
                records: [held("a", &[0, 1, 2, 3], 0), held("b", &[4, 5], 0)].concat(),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 2,
                from: &[0, 1, 2, 3],
            },
            Case {
                name: "below the minimum: steal from an owner at the largest share",
                partitions: 4,
                records: [held("a", &[0, 1], 0), held("b", &[2, 3], 0)].concat(),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 1,
                from: &[0, 1, 2, 3],
            },
            Case {
                name: "at the minimum: no stealing from owners at the largest share",
                partitions: 5,
                records: [held("a", &[0, 1], 0), held("b", &[2, 3], 0)].concat(),
                owned: &[4],
                ended: &[],
                paused: &[],
                count: 0,
                from: &[],
            },
            Case {
                name: "at the minimum with the extra partitions held: the owner below the \
                       minimum steals, not this one",
                partitions: 7,
                records: [
                    held("a", &[0, 1, 2, 3], 0),
                    held("b", &[4], 0),
                    held("me", &[5, 6], 0),
                ]
                .concat(),
                owned: &[5, 6],
                ended: &[],
                paused: &[],
                count: 0,
                from: &[],
            },
            Case {
                name: "the extra partition is paused and nobody is above the share",
                partitions: 4,
                records: [held("a", &[0], 0), held("b", &[1], 0)].concat(),
                owned: &[2],
                ended: &[],
                paused: &[3],
                count: 0,
                from: &[],
            },
            Case {
                name: "a live record of ours the process does not hold is neither free nor stolen",
                partitions: 2,
                records: held("me", &[0, 1], 0),
                owned: &[],
                ended: &[],
                paused: &[],
                count: 0,
                from: &[],
            },
        ];
        for case in &cases {
            let claims = claims(case, &mut || 0);
            let partitions: Vec<PartitionId> = claims.iter().map(|c| c.partition).collect();
            assert_eq!(claims.len(), case.count, "{}: {partitions:?}", case.name);
            assert_eq!(
                set(&partitions).len(),
                partitions.len(),
                "{}: a partition claimed twice: {partitions:?}",
                case.name
            );
            assert!(
                partitions.iter().all(|p| case.from.contains(p)),
                "{}: {partitions:?} not all from {:?}",
                case.name,
                case.from
            );
            for claim in &claims {
                let seen = case.records.iter().find(|r| r.partition == claim.partition);
                assert_eq!(claim.owner, "me", "{}", case.name);
                assert_eq!(claim.last_modified, 0, "{}", case.name);
                assert_eq!(
                    claim.version,
                    seen.and_then(|r| r.version.clone()),
                    "{}: a claim carries the version it saw",
                    case.name
                );
            }
        }
    }

    #[test]
    fn a_paused_partition_is_not_stolen() {
        // With 0 for every random number the steal takes the first of the owner's partitions,
        // whose place the last one takes: 0, then 3 (paused, skipped); then the owner is at its
        // share.
        let case = Case {
            name: "paused",
            partitions: 4,
            records: (0..4).map(|p| record(p, "a", 0)).collect(),
            owned: &[],
            ended: &[],
            paused: &[3],
            count: 1,
            from: &[0],
        };
        let partitions: Vec<PartitionId> = claims(&case, &mut || 0)
            .into_iter()
            .map(|c| c.partition)
            .collect();
        assert_eq!(partitions, [0]);
    }

    #[test]
    fn the_choice_among_free_partitions_follows_the_random_numbers() {
        // Six partitions, one other owner with one: a share of three out of the five free.
        let case = Case {
            name: "random",
            partitions: 6,
            records: vec![record(0, "a", 0)],
            owned: &[],
            ended: &[],
            paused: &[],
            count: 3,
            from: &[1, 2, 3, 4, 5],
        };
        let chosen = |random: &mut dyn FnMut() -> u64| -> Vec<PartitionId> {
            claims(&case, random)
                .into_iter()
                .map(|c| c.partition)
                .collect()
        };
        assert_eq!(chosen(&mut || 0), [2, 3, 4]);
        assert_eq!(chosen(&mut || 1), [1, 3, 4]);
        let mut first = plan::Xorshift(7);
        let mut second = plan::Xorshift(7);
        assert_eq!(chosen(&mut || first.next()), chosen(&mut || second.next()));
    }

    #[test]
    fn renewals_keep_what_is_still_ours() {
        let mine = |partition: PartitionId, version: Option<&str>| Ownership {
            partition,
            owner: "me".to_owned(),
            last_modified: 0,
            version: version.map(str::to_owned),
        };
        let rows: Vec<(&str, Vec<Ownership>, Vec<Ownership>, Renewal)> = vec![
            (
                "nothing held",
                vec![record(0, "a", 0)],
                vec![],
                Renewal::default(),
            ),
            (
                "still ours: renewed at the version in the store",
                vec![record(0, "me", 0), record(1, "me", 0)],
                vec![mine(0, Some("old")), mine(1, None)],
                Renewal {
                    taken: vec![],
                    renew: vec![mine(0, Some("r0")), mine(1, Some("r1"))],
                },
            ),
            (
                "a record without a version: renewed at the version held",
                vec![Ownership {
                    version: None,
                    ..record(0, "me", 0)
                }],
                vec![mine(0, Some("held"))],
                Renewal {
                    taken: vec![],
                    renew: vec![mine(0, Some("held"))],
                },
            ),
            (
                "written over by another owner, released, or gone: taken",
                vec![
                    record(0, "a", 0),
                    record(1, "", 0),
                    record(3, "me", EXPIRED),
                ],
                vec![mine(0, None), mine(1, None), mine(2, None), mine(3, None)],
                Renewal {
                    taken: vec![0, 1, 2],
                    renew: vec![mine(3, Some("r3"))],
                },
            ),
        ];
        for (name, records, held, expected) in rows {
            assert_eq!(plan::renewal("me", &records, &held), expected, "{name}");
        }
    }
}
