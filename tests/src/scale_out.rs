//! What the scale-out tests check once one of the processes sharing a source is killed: that its
//! partitions moved because its claims expired (not sooner, and not much later), and that the
//! survivors continued each of them right after it, from its last checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::WeirProcess;
use crate::servers::wait_for;

/// Slack on top of the expiry and one balancing cycle: the time a survivor takes to list and
/// write the claims, and the test to see them (the Kafka test lists them through Python), on a
/// loaded 2-core machine.
pub const TAKEOVER_SLACK: Duration = Duration::from_secs(10);

/// Asserts that each partition of a killed process moved because its claim expired.
///
/// `renewed` is when the killed process last renewed each claim, as the store records it (read
/// just after the kill); `moved` is when the test first saw each partition owned by another
/// process (milliseconds since the epoch). Survivors take a claim once the store's time of it is
/// `expiry` old, so a partition cannot move sooner than `expiry` after its last renewal (sooner
/// would mean a live claim was taken). A killed process renewed at most one `renew_interval`
/// before it died and a survivor notices the expiry at its next balancing cycle, so every
/// partition moves within `expiry + renew_interval` of the kill; `TAKEOVER_SLACK` covers the
/// claim writes and the test's polling on a loaded machine (much later would mean the expiry did
/// not free them).
pub fn assert_takeover_by_expiry(
    renewed: &BTreeMap<u32, i64>,
    moved: &BTreeMap<u32, i64>,
    killed_at_ms: i64,
    expiry: Duration,
    renew_interval: Duration,
) {
    let expiry_ms = i64::try_from(expiry.as_millis()).expect("expiry");
    let latest = expiry + renew_interval + TAKEOVER_SLACK;
    let latest_ms = i64::try_from(latest.as_millis()).expect("bound");
    assert!(!renewed.is_empty(), "no partition to take over");
    for (partition, &renewed_at) in renewed {
        let moved_at = *moved
            .get(partition)
            .unwrap_or_else(|| panic!("partition {partition} was not seen moving"));
        assert!(
            moved_at - renewed_at >= expiry_ms,
            "partition {partition} moved {} ms after its claim was last renewed: before the expiry ({expiry:?})",
            moved_at - renewed_at
        );
        assert!(
            moved_at - killed_at_ms <= latest_ms,
            "partition {partition} moved {} ms after the kill: expected within {latest:?} (expiry {expiry:?} + renewal every {renew_interval:?} + {TAKEOVER_SLACK:?})",
            moved_at - killed_at_ms
        );
    }
}

/// A process killed while it held claims: what the store held for it at that moment.
pub struct Kill {
    /// The owner id it claimed under.
    pub owner: String,
    /// When it was killed.
    pub at: Instant,
    /// The same, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Its claims' last renewals, as the store records them.
    pub renewed: BTreeMap<u32, i64>,
    /// Its partitions: the claims it held (nobody else writes them until they expire).
    pub partitions: BTreeSet<u32>,
    /// Its partitions' last checkpointed positions.
    pub checkpoints: BTreeMap<u32, u64>,
}

/// Kills `process` (SIGKILL) once `owners` (partition to live owner, read independently of Weir)
/// shows it holding a claim, and reads its claims and checkpoints from the store `config` names
/// right after. Killing it while it holds live claims keeps the test from passing vacuously.
pub fn kill_while_claiming(
    process: WeirProcess,
    config: &Path,
    owners: impl Fn() -> BTreeMap<String, String>,
) -> Kill {
    let owner = crate::logged_owner_id(&process.log_text())
        .expect("the killed process logged its owner id");
    wait_for(
        "the process to kill to hold live claims",
        Duration::from_secs(120),
        || owners().values().any(|o| *o == owner),
    );
    process.kill9();
    let at = Instant::now();
    let at_ms = chrono::Utc::now().timestamp_millis();
    let claims_at_kill = claims(config);
    let renewed: BTreeMap<u32, i64> = claims_at_kill
        .iter()
        .filter(|(_, (o, _))| *o == owner)
        .map(|(partition, (_, renewed_at))| (*partition, *renewed_at))
        .collect();
    let partitions: BTreeSet<u32> = renewed.keys().copied().collect();
    assert!(
        !partitions.is_empty(),
        "{owner} owned no partition at the kill: {claims_at_kill:?}"
    );
    let checkpoints = last_checkpoints(config, &partitions);
    Kill {
        owner,
        at,
        at_ms,
        renewed,
        partitions,
        checkpoints,
    }
}

/// Waits until `owners` shows every partition of `kill` owned by another process, then asserts
/// with [`assert_takeover_by_expiry`] that they moved because the claims expired.
pub fn assert_taken_over(
    kill: &Kill,
    owners: impl Fn() -> BTreeMap<String, String>,
    expiry: Duration,
    renew_interval: Duration,
) {
    let mut moved: BTreeMap<u32, i64> = BTreeMap::new();
    wait_for(
        "the killed process's partitions to move",
        Duration::from_secs(120),
        || {
            let now = owners();
            let seen_at = chrono::Utc::now().timestamp_millis();
            for &p in &kill.partitions {
                if now
                    .get(&p.to_string())
                    .is_some_and(|owner| !owner.is_empty() && *owner != kill.owner)
                {
                    moved.entry(p).or_insert(seen_at);
                }
            }
            moved.len() == kill.partitions.len()
        },
    );
    println!(
        "partitions {:?} taken over {:.1} s after the kill (expiry {expiry:?}, renewal every {renew_interval:?}); ms after the last renewal: {:?}",
        kill.partitions,
        kill.at.elapsed().as_secs_f64(),
        moved
            .iter()
            .map(|(p, at)| (p, at - kill.renewed[p]))
            .collect::<Vec<_>>()
    );
    assert_takeover_by_expiry(&kill.renewed, &moved, kill.at_ms, expiry, renew_interval);
}

/// Each partition's claim in the checkpoint store the configuration at `config` names: the
/// owner id and when the store says it was last written (milliseconds since the epoch, as the
/// survivors see it). Read in-process: fast, just after a kill.
pub fn claims(config: &Path) -> BTreeMap<u32, (String, i64)> {
    claims_of(config, "telemetry")
}

/// [`claims`] of pipeline `pipeline`.
pub fn claims_of(config: &Path, pipeline: &str) -> BTreeMap<u32, (String, i64)> {
    let (runtime, store) = open_store(config);
    runtime.block_on(async {
        store
            .list_ownership(pipeline)
            .await
            .expect("list ownership")
            .into_iter()
            .map(|claim| (claim.partition, (claim.owner, claim.last_modified)))
            .collect()
    })
}

fn open_store(
    config: &Path,
) -> (
    tokio::runtime::Runtime,
    std::sync::Arc<dyn weir::checkpoint::CheckpointStore>,
) {
    let loaded = weir::config::load(config).expect("config");
    let store = weir::connectors::checkpoint_store(&loaded).expect("checkpoint store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (runtime, store)
}

/// The columns the scale-out tests add to the raw table: each row's source partition and position.
const SOURCE_COLUMNS: &str = r#"  { name = "SourcePartition", type = "integer", value = "partition" },
  { name = "SourcePosition", type = "long", value = "position" },
"#;

/// Adds `SourcePartition` and `SourcePosition` columns to the raw table of the configuration at
/// `config`, so the table says where each row came from.
pub fn add_source_columns(config: &Path) {
    let text = std::fs::read_to_string(config).expect("config");
    let anchor = "  { name = \"IngestionTime\"";
    assert!(text.contains(anchor), "no IngestionTime column in\n{text}");
    let text = text.replacen(anchor, &format!("{SOURCE_COLUMNS}{anchor}"), 1);
    std::fs::write(config, text).expect("config");
}

/// The checkpointed position of each of `partitions` of pipeline `telemetry` (`None`: no
/// checkpoint yet), from the checkpoint store the configuration at `config` names.
pub fn checkpoint_positions(
    config: &Path,
    partitions: &BTreeSet<u32>,
) -> BTreeMap<u32, Option<u64>> {
    checkpoint_positions_of(config, "telemetry", partitions)
}

/// [`checkpoint_positions`] of pipeline `pipeline`.
pub fn checkpoint_positions_of(
    config: &Path,
    pipeline: &str,
    partitions: &BTreeSet<u32>,
) -> BTreeMap<u32, Option<u64>> {
    let (runtime, store) = open_store(config);
    runtime.block_on(async {
        let mut out = BTreeMap::new();
        for &partition in partitions {
            // A running owner may replace the record and delete the state files of the one
            // read here before they are read (its sweep, or its compaction): read it again.
            let mut attempts = 0;
            let checkpoint = loop {
                match store.load(pipeline, partition).await {
                    Ok(checkpoint) => break checkpoint,
                    Err(e) if attempts < 20 => {
                        eprintln!("checkpoint of partition {partition} read again: {e}");
                        attempts += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("checkpoint of partition {partition}: {e}"),
                }
            };
            out.insert(partition, checkpoint.and_then(|c| c.position));
        }
        out
    })
}

/// The last checkpointed position of each of `partitions`, as [`checkpoint_positions`] reads
/// them (in-process, fast: read just after a kill, before a survivor can write a newer one);
/// panics if one has none.
pub fn last_checkpoints(config: &Path, partitions: &BTreeSet<u32>) -> BTreeMap<u32, u64> {
    checkpoint_positions(config, partitions)
        .into_iter()
        .map(|(partition, position)| {
            let position =
                position.unwrap_or_else(|| panic!("partition {partition} has no checkpoint"));
            (partition, position)
        })
        .collect()
}

/// One row's origin: source partition, source position, and when the sink received it.
fn origin(row: &Value) -> (u32, u64, i64) {
    let partition = row["SourcePartition"].as_u64().expect("SourcePartition");
    let position = row["SourcePosition"].as_u64().expect("SourcePosition");
    let ingested = crate::python_timestamp_ms(row["IngestionTime"].as_str().expect("time"));
    (
        u32::try_from(partition).expect("partition"),
        position,
        ingested,
    )
}

/// Asserts that the table holds each source position exactly once: for every partition, the
/// rows' positions are the positions the source holds (`source`, from the broker or endpoint),
/// none missing, none twice.
pub fn assert_each_position_once(rows: &[Value], source: &BTreeMap<u32, Vec<u64>>) {
    let mut table: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for row in rows {
        let (partition, position, _) = origin(row);
        table.entry(partition).or_default().push(position);
    }
    for positions in table.values_mut() {
        positions.sort_unstable();
    }
    for (partition, want) in source {
        let got = table.remove(partition).unwrap_or_default();
        if got != *want {
            let got_set: BTreeSet<u64> = got.iter().copied().collect();
            let missing: Vec<_> = want
                .iter()
                .filter(|p| !got_set.contains(p))
                .take(5)
                .collect();
            let twice: Vec<_> = got.windows(2).filter(|w| w[0] == w[1]).take(5).collect();
            panic!(
                "partition {partition}: {} rows for {} source positions; missing {missing:?}, twice {twice:?}",
                got.len(),
                want.len()
            );
        }
    }
    assert!(table.is_empty(), "rows of unknown partitions: {table:?}");
}

/// How one partition of the killed process was handed over.
#[derive(Debug, Clone, Copy)]
pub struct Handover {
    /// The killed process's last checkpointed position.
    pub checkpoint: u64,
    /// The last position in the table before the kill.
    pub last_before: u64,
    /// The first position the survivor wrote.
    pub first_after: u64,
}

/// Asserts, for each partition of the killed process (with its last checkpointed position in
/// `checkpoints`; `source` holds the positions of every partition), that the rows received before
/// the kill (`killed_at_ms`) and after it split the
/// partition cleanly: the table held everything up to at least the checkpoint before the kill (a
/// checkpoint never runs ahead of the table), and the survivor wrote from the very next position
/// on. With [`assert_each_position_once`], nothing is missing or repeated at the handover.
pub fn assert_continued_after_checkpoints(
    rows: &[Value],
    source: &BTreeMap<u32, Vec<u64>>,
    checkpoints: &BTreeMap<u32, u64>,
    killed_at_ms: i64,
) -> BTreeMap<u32, Handover> {
    let mut handovers = BTreeMap::new();
    for (&partition, &checkpoint) in checkpoints {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for row in rows {
            let (p, position, ingested) = origin(row);
            if p == partition {
                if ingested <= killed_at_ms {
                    before.push(position);
                } else {
                    after.push(position);
                }
            }
        }
        before.sort_unstable();
        after.sort_unstable();
        let last_before = *before
            .last()
            .unwrap_or_else(|| panic!("partition {partition}: nothing before the kill"));
        let first_after = *after
            .first()
            .unwrap_or_else(|| panic!("partition {partition}: nothing after the kill"));
        assert!(
            last_before >= checkpoint,
            "partition {partition}: checkpointed at {checkpoint} but the table only reached {last_before}"
        );
        let next = source
            .get(&partition)
            .and_then(|positions| positions.iter().find(|p| **p > last_before))
            .copied();
        assert_eq!(
            Some(first_after),
            next,
            "partition {partition}: the survivor's first row is not the source's next one after the last row before the kill (checkpoint {checkpoint})"
        );
        handovers.insert(
            partition,
            Handover {
                checkpoint,
                last_before,
                first_after,
            },
        );
    }
    handovers
}
