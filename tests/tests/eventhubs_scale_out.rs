//! Scale-out on Event Hubs: three `weir run` processes with the same configuration share the eight
//! partitions of one hub (the test endpoint, through the real client) through ownership claims in
//! the local checkpoint store. One is killed with SIGKILL while events arrive; the others take its
//! partitions once its claims expire and resume from its checkpoints. The Delta table (read by
//! Python's deltalake) holds every event exactly once; the alerts on the second hub, deduplicated
//! by message id, are exactly the rule's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records};
use weir_tests::servers::wait_for;
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
};
use weir_tests::{WeirProcess, read_delta};

const EXPIRY_MS: i64 = 3_000;

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
    pipeline.ownership = "{ expiry = \"3s\", renew_interval = \"500ms\" }".to_owned();
    let mut processes: Vec<Option<WeirProcess>> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            Some(WeirProcess::run(
                &pipeline.write_as(dir.path(), &format!("weir-{name}.toml")),
            ))
        })
        .collect();
    let checkpoints = dir.path().join("checkpoints");

    // Balanced: three owners, 3 + 3 + 2 partitions.
    wait_for(
        "three owners sharing eight partitions",
        Duration::from_secs(180),
        || {
            let owned = owners(&checkpoints);
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
        || (0..8).all(|p| checkpoints.join(format!("telemetry/{p}.ckpt")).is_file()),
    );
    let victim = processes[0].take().expect("process a");
    let victim_log = victim.log_text();
    let owned = owners(&checkpoints);
    let victim_owner =
        weir_tests::logged_owner_id(&victim_log).expect("the killed process logged its owner id");
    let victim_partitions: BTreeSet<String> = owned
        .into_iter()
        .filter(|(_, owner)| *owner == victim_owner)
        .map(|(partition, _)| partition)
        .collect();
    victim.kill9();
    let killed_at = Instant::now();
    for chunk in chunks {
        endpoint.publish_keyed("telemetry", chunk);
        std::thread::sleep(Duration::from_millis(150));
    }

    // Its partitions move to the survivors once its claims expire.
    wait_for(
        "the killed process's partitions to move",
        Duration::from_secs(120),
        || {
            let now = owners(&checkpoints);
            victim_partitions
                .iter()
                .all(|p| now.get(p).is_some_and(|owner| *owner != victim_owner))
        },
    );
    println!(
        "partitions {victim_partitions:?} taken over {:.1} s after the kill (expiry 3 s)",
        killed_at.elapsed().as_secs_f64()
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
    let survivor_logs = weir_tests::stop_all(processes);
    assert!(
        survivor_logs
            .iter()
            .any(|l| l.contains("resuming from checkpoint")),
        "the survivors resumed the killed process's partitions from its checkpoints"
    );

    assert_each_reading_once(&read_delta(&table_path).rows, &readings);
    assert_alerts_match(&endpoint.unique_json("alerts"), &expected);
}
