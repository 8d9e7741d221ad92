//! Scale-out: three `weir run` processes with the same configuration share the eight partitions
//! of one Kafka topic through ownership claims in Blob Storage (Azurite). One is killed with
//! SIGKILL while events arrive; the other two take its partitions once its claims expire (within
//! the expiry plus a balancing cycle, see `weir_tests::scale_out`) and resume from its
//! checkpoints. The Delta table (read by Python's deltalake, each row with its source partition
//! and offset) holds every event exactly once, and each of the killed process's partitions
//! continues right after the last row it wrote, which is at or past its last checkpoint. The
//! alerts (deduplicated by their id header) are exactly the rule's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weir_tests::kafka::{
    KafkaPipeline, create_topic, produce, read_all, telemetry_records, unique_json,
};
use weir_tests::scale_out::{
    add_source_columns, assert_continued_after_checkpoints, assert_each_position_once,
    assert_taken_over, checkpoint_positions, kill_while_claiming,
};
use weir_tests::servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, KafkaBroker, wait_for};
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
};
use weir_tests::{WeirProcess, read_delta};

const NAMESPACE: &str = "scale.servicebus.windows.net";
const EXPIRY_MS: u64 = 3_000;
const RENEW_MS: u64 = 500;

/// Owner id per partition, as the Azure SDK's checkpoint store lists the live claims.
fn owners(azurite: &Azurite) -> BTreeMap<String, String> {
    let Ok(out) = azurite.try_python(&format!(
        r#"
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
store = BlobCheckpointStore.from_connection_string(CONN, "checkpoints")
print(json.dumps({{o["partition_id"]: o.get("owner_id") or "" for o in store.list_ownership("{NAMESPACE}", "telemetry", "weir")}}))
"#
    )) else {
        return BTreeMap::new();
    };
    serde_json::from_str(out.trim()).unwrap_or_default()
}

#[test]
fn three_processes_share_eight_partitions_and_survive_one_being_killed() {
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    let broker = KafkaBroker::start();
    create_topic(&broker.address(), "telemetry", 8);
    create_topic(&broker.address(), "alerts", 4);
    let readings = generated_readings(32, 500, 21);
    let records = telemetry_records(&readings, 8);
    let (first, rest) = records.split_at(records.len() / 4);
    produce(&broker.address(), "telemetry", first);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&broker.address(), "telemetry");
    pipeline.alerts_topic = Some("alerts".to_owned());
    pipeline.checkpoint = format!(
        "ownership = {{ expiry = \"{EXPIRY_MS}ms\", renew_interval = \"{RENEW_MS}ms\" }}\n\
         azure_blob = {{ account = \"{AZURITE_ACCOUNT}\", container = \"checkpoints\", endpoint = \"{}\", options = {{ azure_storage_account_key = \"{AZURITE_KEY}\" }} }}",
        azurite.blob_endpoint()
    );
    let configs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let path = pipeline.write(dir.path(), &format!("weir-{name}.toml"));
            let text = std::fs::read_to_string(&path).expect("config");
            let text = text.replace(
                "fetch_max_wait = \"100ms\"",
                &format!("fetch_max_wait = \"100ms\"\nnamespace = \"{NAMESPACE}\"\nconsumer_group = \"weir\""),
            );
            std::fs::write(&path, text).expect("config");
            add_source_columns(&path);
            path
        })
        .collect();
    let mut processes: Vec<Option<WeirProcess>> = configs
        .iter()
        .map(|config| Some(WeirProcess::run(config)))
        .collect();

    // Balanced: three owners, 3 + 3 + 2 partitions.
    let mut owned = BTreeMap::new();
    wait_for(
        "three owners sharing eight partitions",
        Duration::from_secs(120),
        || {
            owned = owners(&azurite);
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for owner in owned.values().filter(|o| !o.is_empty()) {
                *counts.entry(owner.as_str()).or_default() += 1;
            }
            let mut shares: Vec<usize> = counts.values().copied().collect();
            shares.sort_unstable();
            owned.len() == 8 && shares == [2, 3, 3]
        },
    );

    // Under load: the rest of the events arrive while one process is killed, once every
    // partition has a checkpoint (on a loaded machine the first batches may take a while).
    let mut chunks: Vec<Vec<(i32, String, String)>> =
        rest.chunks(1500).map(<[_]>::to_vec).collect();
    produce(&broker.address(), "telemetry", &chunks.remove(0));
    let all_partitions: BTreeSet<u32> = (0..8).collect();
    wait_for(
        "a checkpoint per partition",
        Duration::from_secs(180),
        || {
            checkpoint_positions(&configs[0], &all_partitions)
                .values()
                .all(Option::is_some)
        },
    );
    let address = broker.address();
    let producer = std::thread::spawn(move || {
        for chunk in chunks {
            produce(&address, "telemetry", &chunk);
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let kill = kill_while_claiming(processes[0].take().expect("process a"), &configs[0], || {
        owners(&azurite)
    });
    assert_taken_over(
        &kill,
        || owners(&azurite),
        Duration::from_millis(EXPIRY_MS),
        Duration::from_millis(RENEW_MS),
    );
    producer.join().expect("producer");

    // The survivors catch up with everything.
    let table_path = dir.path().join("delta/raw_telemetry");
    wait_for("every event in the table", Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_secs(2));
        read_delta(&table_path).rows.len() >= readings.len()
    });
    weir_tests::stop_all(processes);

    let rows = read_delta(&table_path).rows;
    assert_each_reading_once(&rows, &readings);
    // Every offset of every partition once (the offsets as the broker holds them), and a clean
    // handover of the victim's partitions.
    let mut source: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for record in read_all(&broker.address(), "telemetry") {
        source
            .entry(u32::try_from(record.partition).expect("partition"))
            .or_default()
            .push(u64::try_from(record.offset).expect("offset"));
    }
    for offsets in source.values_mut() {
        offsets.sort_unstable();
    }
    assert_each_position_once(&rows, &source);
    let handovers =
        assert_continued_after_checkpoints(&rows, &source, &kill.checkpoints, kill.at_ms);
    println!("handovers (checkpoint, last row before the kill, first row after): {handovers:?}");

    assert_alerts_match(
        &unique_json(&broker.address(), "alerts"),
        &expected_alerts(&readings),
    );
}
