//! Scale-out on Event Hubs: three `weir run` processes with the same configuration share the eight
//! partitions of one hub (the test endpoint, through the real client) through ownership claims in
//! the local checkpoint store. One is killed with SIGKILL while events arrive; the others take its
//! partitions once its claims expire (within the expiry plus a balancing cycle, see
//! `weir_tests::scale_out`) and resume from its checkpoints: in the Delta table (read by Python's
//! deltalake, each row with its source partition and sequence number) every event is there
//! exactly once, each of its partitions continues right after the last row it wrote, and the
//! alerts sent after the kill restart right after its last checkpoint. The alerts on the second
//! hub, deduplicated by message id, are exactly the rule's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records};
use weir_tests::scale_out::{
    add_source_columns, assert_continued_after_checkpoints, assert_each_position_once,
    assert_taken_over, kill_while_claiming,
};
use weir_tests::servers::wait_for;
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
};
use weir_tests::{WeirProcess, read_delta};

const EXPIRY_MS: i64 = 3_000;
const RENEW_MS: i64 = 500;

/// Owner per partition, from the local store's ownership records (only live claims).
fn owners(checkpoints: &Path) -> BTreeMap<String, String> {
    let now = chrono::Utc::now().timestamp_millis();
    let Ok(entries) = std::fs::read_dir(checkpoints.join("telemetry/ownership")) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let partition = name.strip_suffix(".json")?.to_owned();
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let record: serde_json::Value = serde_json::from_str(&text).ok()?;
            let owner = record["owner"].as_str()?.to_owned();
            let fresh = now - record["last_modified"].as_i64()? < EXPIRY_MS;
            (fresh && !owner.is_empty()).then_some((partition, owner))
        })
        .collect()
}

#[test]
fn three_processes_share_eight_event_hubs_partitions_and_survive_one_being_killed() {
    let endpoint = TestEndpoint::start(&[("telemetry", 8), ("alerts", 4)]);
    let readings = generated_readings(32, 300, 31);
    let records = keyed_records(&readings);
    let (first, rest) = records.split_at(records.len() / 4);
    endpoint.publish_keyed("telemetry", first);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = EventHubsPipeline::new(&endpoint, "telemetry", "alerts");
    pipeline.ownership =
        format!("{{ expiry = \"{EXPIRY_MS}ms\", renew_interval = \"{RENEW_MS}ms\" }}");
    let configs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let config = pipeline.write_as(dir.path(), &format!("weir-{name}.toml"));
            add_source_columns(&config);
            config
        })
        .collect();
    let mut processes: Vec<Option<WeirProcess>> = configs
        .iter()
        .map(|config| Some(WeirProcess::run(config)))
        .collect();
    let checkpoint_dir = dir.path().join("checkpoints");

    // Balanced: three owners, 3 + 3 + 2 partitions.
    wait_for(
        "three owners sharing eight partitions",
        Duration::from_secs(180),
        || {
            let owned = owners(&checkpoint_dir);
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for owner in owned.values() {
                *counts.entry(owner.as_str()).or_default() += 1;
            }
            let mut shares: Vec<usize> = counts.values().copied().collect();
            shares.sort_unstable();
            owned.len() == 8 && shares == [2, 3, 3]
        },
    );

    // Under load: the rest arrives in chunks; one process is killed after the first chunk.
    let mut chunks = rest.chunks(1200);
    endpoint.publish_keyed("telemetry", chunks.next().expect("a chunk"));
    // Every partition has a checkpoint (on a loaded machine the first batches may take a while).
    wait_for(
        "a checkpoint per partition",
        Duration::from_secs(180),
        || (0..8).all(|p| checkpoint_dir.join(format!("telemetry/{p}.ckpt")).is_file()),
    );
    let kill = kill_while_claiming(processes[0].take().expect("process a"), &configs[0], || {
        owners(&checkpoint_dir)
    });
    for chunk in chunks {
        endpoint.publish_keyed("telemetry", chunk);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_taken_over(
        &kill,
        || owners(&checkpoint_dir),
        Duration::from_millis(EXPIRY_MS as u64),
        Duration::from_millis(RENEW_MS as u64),
    );

    // The survivors catch up with everything.
    let table_path = dir.path().join("delta/raw_telemetry");
    let expected = expected_alerts(&readings);
    wait_for("every event in the table", Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_secs(2));
        read_delta(&table_path).rows.len() >= readings.len()
    });
    wait_for("every alert", Duration::from_secs(120), || {
        endpoint.unique_json("alerts").len() >= expected.len()
    });
    weir_tests::stop_all(processes);

    let rows = read_delta(&table_path).rows;
    assert_each_reading_once(&rows, &readings);
    // Every sequence number of every partition once, and a clean handover of the victim's.
    let source: BTreeMap<u32, Vec<u64>> = (0..8)
        .map(|p| {
            let positions = endpoint
                .endpoint
                .events("telemetry", p)
                .expect("events")
                .iter()
                .map(|e| e.sequence_number as u64)
                .collect();
            (p as u32, positions)
        })
        .collect();
    assert_each_position_once(&rows, &source);
    let handovers =
        assert_continued_after_checkpoints(&rows, &source, &kill.checkpoints, kill.at_ms);
    println!("handovers (checkpoint, last row before the kill, first row after): {handovers:?}");

    // The survivors read each of the victim's partitions from just after a checkpoint: the
    // alerts they sent for it (ids `telemetry/<partition>/<sequence number>/<n>`, enqueued after
    // the kill) are all past the victim's checkpoint, and every alert sent before the kill past
    // the point the survivor resumed from was sent again. (That point may be later than the
    // victim's checkpoint: the partition's previous owner, still working while the victim's claim
    // was new, can save a later checkpoint of what it delivered; every alert is checked present
    // below either way.)
    let alerts = endpoint.events("alerts");
    for (&partition, &checkpoint) in &kill.checkpoints {
        let mut sent_before: BTreeSet<(u64, String)> = BTreeSet::new();
        let mut sent_after: BTreeSet<(u64, String)> = BTreeSet::new();
        for alert in &alerts {
            let id = alert.message_id().expect("alert id");
            let mut parts = id.split('/');
            let (Some("telemetry"), Some(p), Some(position)) =
                (parts.next(), parts.next(), parts.next())
            else {
                panic!("unexpected alert id {id}");
            };
            if p.parse::<u32>().expect("partition") != partition {
                continue;
            }
            let position: u64 = position.parse().expect("position");
            if alert.enqueued_time > kill.at_ms {
                assert!(
                    position > checkpoint,
                    "partition {partition}: alert {id} sent again after the kill, but the checkpoint was at {checkpoint}"
                );
                sent_after.insert((position, id.to_owned()));
            } else if position > checkpoint {
                sent_before.insert((position, id.to_owned()));
            }
        }
        let resumed_from = sent_after
            .first()
            .map_or(u64::MAX, |(position, _)| *position);
        println!(
            "partition {partition}: {} alerts past the checkpoint {checkpoint} sent before the kill, {} after it, the first at {resumed_from}",
            sent_before.len(),
            sent_after.len()
        );
        let missing: Vec<_> = sent_before
            .iter()
            .filter(|(position, _)| *position >= resumed_from)
            .filter(|alert| !sent_after.contains(*alert))
            .collect();
        assert!(
            missing.is_empty(),
            "partition {partition}: alerts past where the survivor resumed ({resumed_from}) not sent again: {missing:?}"
        );
    }
    assert_alerts_match(&endpoint.unique_json("alerts"), &expected);
}
