//! Azure Storage on Azurite: the Kafka telemetry pipeline with its checkpoints and ownership claims
//! in Blob Storage and its Delta table on `az://`. The Azure SDK's own `BlobCheckpointStore`
//! (Python) reads the claims and checkpoints in the event processors' layout, and Weir resumes
//! from checkpoints that SDK wrote; Python's `deltalake` reads the table back from Azurite.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use weir_tests::kafka::{KafkaPipeline, create_topic, produce, telemetry_records};
use weir_tests::servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, KafkaBroker, wait_for};
use weir_tests::telemetry::generated_readings;
use weir_tests::{WeirProcess, read_delta, run_to_completion};

const NAMESPACE: &str = "weir-test.servicebus.windows.net";

/// `[checkpoint]` lines that put the store in Azurite's `checkpoints` container.
fn blob_checkpoint(azurite: &Azurite) -> String {
    format!(
        "ownership = {{ expiry = \"2s\", renew_interval = \"400ms\" }}\n\
         azure_blob = {{ account = \"{AZURITE_ACCOUNT}\", container = \"checkpoints\", endpoint = \"{}\", options = {{ azure_storage_account_key = \"{AZURITE_KEY}\" }} }}",
        azurite.blob_endpoint()
    )
}

fn storage_options(azurite: &Azurite) -> String {
    format!(
        "storage_options = {{ azure_storage_account_name = \"{AZURITE_ACCOUNT}\", azure_storage_account_key = \"{AZURITE_KEY}\", azure_storage_endpoint = \"{}\", azure_allow_http = \"true\" }}",
        azurite.blob_endpoint()
    )
}

/// The Azure SDK's checkpoint store, listing `what` (`ownership` or `checkpoints`) of a group.
fn sdk_list(azurite: &Azurite, what: &str, group: &str) -> Vec<Value> {
    let out = azurite.python(&format!(
        r#"
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
store = BlobCheckpointStore.from_connection_string(CONN, "checkpoints")
items = store.list_{what}("{NAMESPACE}", "telemetry", "{group}")
print(json.dumps([{{k: (v if isinstance(v, (str, int, float, type(None))) else str(v)) for k, v in item.items()}} for item in items]))
"#
    ));
    serde_json::from_str(out.trim()).expect("JSON list")
}

#[test]
fn checkpoints_ownership_and_delta_live_in_azure_storage_in_the_sdk_layout() {
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    azurite.create_container("lake");
    let broker = KafkaBroker::start();
    create_topic(&broker.address(), "telemetry", 4);
    let readings = generated_readings(20, 100, 3);
    let records = telemetry_records(&readings, 4);
    produce(&broker.address(), "telemetry", &records);
    let mut per_partition = [0i64; 4];
    for (partition, _, _) in &records {
        per_partition[*partition as usize] += 1;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&broker.address(), "telemetry");
    pipeline.checkpoint = blob_checkpoint(&azurite);
    pipeline.raw_table = "az://lake/raw_telemetry".to_owned();
    pipeline.raw_table_extra = storage_options(&azurite);
    let config = pipeline.write(dir.path(), "weir.toml");
    // The Kafka source's scope: namespace, topic, consumer group.
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        "fetch_max_wait = \"100ms\"",
        &format!(
            "fetch_max_wait = \"100ms\"\nnamespace = \"{NAMESPACE}\"\nconsumer_group = \"$Default\""
        ),
    );
    std::fs::write(&config, text).expect("config");

    // While it runs, the SDK sees one owner holding all four partitions.
    let process = WeirProcess::run(&config);
    let mut owners = Vec::new();
    wait_for("four claimed partitions", Duration::from_secs(120), || {
        owners = sdk_list(&azurite, "ownership", "$Default");
        owners.len() == 4
            && owners.iter().all(|o| {
                o["owner_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("weir-"))
            })
    });
    let owner = owners[0]["owner_id"].clone();
    assert!(owners.iter().all(|o| o["owner_id"] == owner), "{owners:?}");
    assert!(
        owners
            .iter()
            .all(|o| o["etag"].as_str().is_some_and(|e| !e.is_empty()))
    );
    let mut partitions: Vec<&str> = owners
        .iter()
        .map(|o| o["partition_id"].as_str().expect("id"))
        .collect();
    partitions.sort_unstable();
    assert_eq!(partitions, ["0", "1", "2", "3"]);
    wait_for(
        "checkpoints of every event",
        Duration::from_secs(120),
        || {
            let checkpoints = sdk_list(&azurite, "checkpoints", "$Default");
            checkpoints.len() == 4
                && checkpoints.iter().all(|c| {
                    let p: usize = c["partition_id"]
                        .as_str()
                        .and_then(|p| p.parse().ok())
                        .expect("id");
                    c["sequence_number"].as_i64() == Some(per_partition[p] - 1)
                })
        },
    );
    process.terminate();
    process.wait(Duration::from_secs(60));

    // A graceful stop releases the claims: the blobs stay, with no owner (Blob Storage drops an
    // empty metadata value, so the SDK reads none).
    let released = sdk_list(&azurite, "ownership", "$Default");
    assert_eq!(released.len(), 4);
    assert!(
        released
            .iter()
            .all(|o| o["owner_id"].is_null() || o["owner_id"] == ""),
        "{released:?}"
    );
    // The checkpoints, as the SDK reads them: the last offset of each partition.
    let checkpoints = sdk_list(&azurite, "checkpoints", "$Default");
    for checkpoint in &checkpoints {
        let p: usize = checkpoint["partition_id"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("id");
        assert_eq!(
            checkpoint["sequence_number"].as_i64(),
            Some(per_partition[p] - 1)
        );
        assert_eq!(
            checkpoint["offset"].as_str(),
            Some((per_partition[p] - 1).to_string().as_str())
        );
    }
    // The blob names are the SDKs' layout, lower-cased.
    let names = azurite.python(
        "from azure.storage.blob import ContainerClient\nfor b in ContainerClient.from_connection_string(CONN, 'checkpoints').list_blobs(): print(b.name)",
    );
    for p in 0..4 {
        for kind in ["checkpoint", "ownership"] {
            let name = format!("{NAMESPACE}/telemetry/$default/{kind}/{p}");
            assert!(
                names.lines().any(|l| l == name),
                "{name} missing in:\n{names}"
            );
        }
    }

    // The Delta table on Azurite, read by Python's deltalake: every event once.
    let table = azurite.python(&format!(
        r#"
from deltalake import DeltaTable
options = {{"account_name": "{AZURITE_ACCOUNT}", "account_key": "{AZURITE_KEY}", "azure_storage_endpoint": "{endpoint}", "allow_http": "true"}}
table = DeltaTable("az://lake/raw_telemetry", storage_options=options)
ids = table.to_pyarrow_table().column("EventId").to_pylist()
print(json.dumps({{"version": table.version(), "ids": ids}}))
"#,
        endpoint = azurite.blob_endpoint()
    ));
    let table: Value = serde_json::from_str(table.trim()).expect("table JSON");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in table["ids"].as_array().expect("ids") {
        *counts.entry(id.as_str().expect("id")).or_default() += 1;
    }
    assert_eq!(counts.len(), readings.len());
    assert!(counts.values().all(|n| *n == 1), "rows written twice");
    assert!(
        readings
            .iter()
            .all(|r| counts.contains_key(r.event_id.as_str()))
    );
}

#[test]
fn weir_resumes_where_an_azure_sdk_processor_checkpointed() {
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    let broker = KafkaBroker::start();
    create_topic(&broker.address(), "telemetry", 2);
    let readings = generated_readings(10, 50, 9);
    let records = telemetry_records(&readings, 2);
    produce(&broker.address(), "telemetry", &records);

    // An EventProcessorClient of group "migrated" got to offset 19 of partition 0 and 29 of 1.
    azurite.python(&format!(
        r#"
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
store = BlobCheckpointStore.from_connection_string(CONN, "checkpoints")
for partition, offset in (("0", 19), ("1", 29)):
    store.update_checkpoint({{"fully_qualified_namespace": "{NAMESPACE}", "eventhub_name": "telemetry",
        "consumer_group": "migrated", "partition_id": partition, "offset": str(offset), "sequence_number": offset}})
"#
    ));

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&broker.address(), "telemetry");
    pipeline.checkpoint = blob_checkpoint(&azurite);
    pipeline.stop_at_end = true;
    let config = pipeline.write(dir.path(), "weir.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        "fetch_max_wait = \"100ms\"",
        &format!(
            "fetch_max_wait = \"100ms\"\nnamespace = \"{NAMESPACE}\"\nconsumer_group = \"migrated\""
        ),
    );
    std::fs::write(&config, text).expect("config");
    run_to_completion(&config, Duration::from_secs(300));

    // Exactly the records after the SDK's checkpoints, computed from what was produced.
    let mut offsets = [0i64; 2];
    let mut expected: Vec<String> = Vec::new();
    for ((partition, _, _), reading) in records.iter().zip(&readings) {
        let p = *partition as usize;
        let skip_through = if p == 0 { 19 } else { 29 };
        if offsets[p] > skip_through {
            expected.push(reading.event_id.clone());
        }
        offsets[p] += 1;
    }
    let mut got: Vec<String> = read_delta(&dir.path().join("delta/raw_telemetry"))
        .rows
        .iter()
        .map(|r| r["EventId"].as_str().expect("EventId").to_owned())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}
