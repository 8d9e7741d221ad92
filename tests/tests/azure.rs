//! Azure Storage on Azurite: the Kafka telemetry pipeline with its checkpoints and ownership claims
//! in Blob Storage and its Delta table on `az://`; the Event Hubs pipeline (the repository's test
//! endpoint, the real client inside Weir) with its checkpoints in Blob Storage, and with its Delta
//! table on `abfss://`. The Azure SDK's own `BlobCheckpointStore` (Python) reads the claims and
//! checkpoints in the event processors' layout, and Weir resumes from checkpoints that SDK wrote;
//! Python's `deltalake` reads the tables back from Azurite.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records, rows_by_event};
use weir_tests::kafka::{KafkaPipeline, create_topic, produce, telemetry_records};
use weir_tests::servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, KafkaBroker, wait_for};
use weir_tests::telemetry::generated_readings;
use weir_tests::{WeirProcess, read_delta, run_to_completion};

const NAMESPACE: &str = "weir-test.servicebus.windows.net";

/// `[checkpoint]` lines that put the store in Azurite's `checkpoints` container.
fn blob_checkpoint(azurite: &Azurite) -> String {
    format!(
        "ownership = {{ expiry = \"2s\", renew_interval = \"400ms\" }}\n{}",
        azure_blob(azurite)
    )
}

/// The `azure_blob` line of `[checkpoint]`: Azurite's `checkpoints` container.
fn azure_blob(azurite: &Azurite) -> String {
    format!(
        "azure_blob = {{ account = \"{AZURITE_ACCOUNT}\", container = \"checkpoints\", endpoint = \"{}\", options = {{ azure_storage_account_key = \"{AZURITE_KEY}\" }} }}",
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

/// The Event Hubs namespace of the connection strings below, in mixed case: the blob names and the
/// SDK's lookups fold it to [`NAMESPACE`].
const MIXED_CASE_NAMESPACE: &str = "Weir-Test.ServiceBus.Windows.NET";

/// The event-time line of the Event Hubs pipeline's configuration.
const EVENT_TIME: &str = "event_time = { field = \"Timestamp\" }";

/// The Event Hubs telemetry pipeline on `endpoint` (hub `telemetry` in, `alerts` out), read to
/// the end of the hub, with `consumer_group`, `checkpoint` in place of the `[checkpoint]` line
/// `dir = "checkpoints"` and `table` in place of the Delta sink's `path` line. Events are ordered
/// by event time, so each partition keeps event-time state in its checkpoints.
fn eventhubs_config(
    endpoint: &TestEndpoint,
    dir: &Path,
    consumer_group: &str,
    checkpoint: &str,
    table: &str,
) -> std::path::PathBuf {
    let mut pipeline = EventHubsPipeline::new(endpoint, "telemetry", "alerts");
    pipeline.stop_at_end = true;
    let config = pipeline.write(dir);
    let text = std::fs::read_to_string(&config).expect("config");
    for line in [
        "sb://localhost/",
        "dir = \"checkpoints\"",
        "path = \"delta/raw_telemetry\"",
        "consumer_group = \"$Default\"",
        EVENT_TIME,
    ] {
        assert!(text.contains(line), "`{line}` not in the configuration");
    }
    let text = text
        .replace("sb://localhost/", &format!("sb://{MIXED_CASE_NAMESPACE}/"))
        .replace("dir = \"checkpoints\"", checkpoint)
        .replace("path = \"delta/raw_telemetry\"", table)
        .replace(
            "consumer_group = \"$Default\"",
            &format!("consumer_group = \"{consumer_group}\""),
        )
        .replace(
            EVENT_TIME,
            "event_time = { field = \"Timestamp\", out_of_order = { tolerance = \"1h\", policy = \"adjust\" } }",
        );
    std::fs::write(&config, text).expect("config");
    config
}

/// Runs `weir run` on `config` with extra environment variables to completion.
fn run_with_env(config: &Path, env: &[(&str, &str)]) {
    let process = WeirProcess::spawn_with_env(&["run", "--config"], config, env);
    let log = config.with_extension("log");
    let status = process.wait(Duration::from_secs(300));
    assert!(
        status.success(),
        "weir exited with {status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Per partition, `(sequence number, offset)` of group `group`'s checkpoints as the Azure SDK's
/// `BlobCheckpointStore` lists them.
fn sdk_checkpoints(azurite: &Azurite, group: &str) -> BTreeMap<usize, (i64, String)> {
    sdk_list(azurite, "checkpoints", group)
        .iter()
        .map(|c| {
            let partition = c["partition_id"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .expect("partition id");
            let sequence_number = c["sequence_number"].as_i64().expect("sequence number");
            let offset = c["offset"].as_str().expect("offset").to_owned();
            (partition, (sequence_number, offset))
        })
        .collect()
}

/// Name and ETag of every blob of the `checkpoints` container under `prefix`.
fn blob_etags(azurite: &Azurite, prefix: &str) -> BTreeMap<String, String> {
    let out = azurite.python(&format!(
        r#"
from azure.storage.blob import ContainerClient
blobs = ContainerClient.from_connection_string(CONN, "checkpoints").list_blobs(name_starts_with={prefix:?})
print(json.dumps({{b.name: b.etag for b in blobs}}))
"#
    ));
    serde_json::from_str(out.trim()).expect("JSON map")
}

/// Per partition of the endpoint's hub `telemetry`, `(sequence number, x-opt-offset)` of the event
/// at `index` (the last one for `None`), as the endpoint annotates it for receivers.
fn endpoint_positions(
    endpoint: &TestEndpoint,
    partitions: usize,
    index: impl Fn(usize) -> Option<usize>,
) -> BTreeMap<usize, (i64, String)> {
    (0..partitions)
        .map(|p| {
            let events = endpoint.endpoint.events("telemetry", p).expect("events");
            let at = index(events.len()).unwrap_or(events.len() - 1);
            let event = &events[at];
            let offset = event.annotation("x-opt-offset").expect("x-opt-offset");
            (p, (event.sequence_number, offset))
        })
        .collect()
}

/// The EventIds of a Delta table's rows, sorted; panics on one written twice.
fn delta_event_ids(table: &Path) -> Vec<String> {
    rows_by_event(&read_delta(table).rows).into_keys().collect()
}

#[test]
fn event_hubs_checkpoints_in_blob_storage_carry_the_hubs_offsets_and_resume_from_an_sdks() {
    const PARTITIONS: usize = 4;
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    let endpoint = TestEndpoint::start(&[("telemetry", PARTITIONS as u32), ("alerts", 2)]);
    let readings = generated_readings(16, 40, 31);
    endpoint.publish_keyed("telemetry", &keyed_records(&readings));
    let last = endpoint_positions(&endpoint, PARTITIONS, |_| None);
    // Offsets are byte positions: a sequence number written in their place would not match.
    assert!(
        last.values()
            .all(|(n, offset)| *n > 1 && *offset != n.to_string())
    );

    // Weir reads the hub to its end with its checkpoints in Blob Storage.
    let dir = tempfile::tempdir().expect("temp dir");
    let checkpoint = azure_blob(&azurite);
    let table_line = "path = \"delta/raw_telemetry\"";
    let config = eventhubs_config(&endpoint, dir.path(), "$Default", &checkpoint, table_line);
    run_to_completion(&config, Duration::from_secs(300));
    let table = dir.path().join("delta/raw_telemetry");
    let mut all_ids: Vec<String> = readings.iter().map(|r| r.event_id.clone()).collect();
    all_ids.sort();
    assert_eq!(delta_event_ids(&table), all_ids, "every event once");

    // The SDK finds a checkpoint per partition at its last event, with the hub's own offset.
    assert_eq!(sdk_checkpoints(&azurite, "$Default"), last);
    // Under the namespace as the connection string names it, the hub and the group, lower-cased.
    let prefix = format!("{NAMESPACE}/telemetry/$default/");
    let etags = blob_etags(&azurite, &prefix);
    for p in 0..PARTITIONS {
        for kind in ["checkpoint", "ownership"] {
            let name = format!("{prefix}{kind}/{p}");
            assert!(etags.contains_key(&name), "{name} missing in {etags:?}");
        }
    }

    // Again, with nothing new on the hub: each partition resumes at its checkpoint, reads no event,
    // and at the input's end saves its checkpoint once more (the event-time state changed). The
    // offsets must still be the hub's, which this run's reader never saw.
    let log = run_to_completion(&config, Duration::from_secs(300));
    let resaved = blob_etags(&azurite, &prefix);
    for p in 0..PARTITIONS {
        let name = format!("{prefix}checkpoint/{p}");
        assert_ne!(
            etags.get(&name),
            resaved.get(&name),
            "{name} was not saved again; log:\n{log}"
        );
    }
    assert_eq!(sdk_checkpoints(&azurite, "$Default"), last);
    assert_eq!(delta_event_ids(&table), all_ids, "nothing written twice");

    // An EventProcessorClient of group `migrated` checkpointed the middle event of each partition.
    let middle = endpoint_positions(&endpoint, PARTITIONS, |len| Some(len / 2));
    let updates: Vec<String> = middle
        .iter()
        .map(|(p, (n, offset))| format!("(\"{p}\", {n}, \"{offset}\")"))
        .collect();
    azurite.python(&format!(
        r#"
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
store = BlobCheckpointStore.from_connection_string(CONN, "checkpoints")
for partition, sequence_number, offset in ({updates},):
    store.update_checkpoint({{"fully_qualified_namespace": "{NAMESPACE}", "eventhub_name": "telemetry",
        "consumer_group": "migrated", "partition_id": partition, "offset": offset, "sequence_number": sequence_number}})
"#,
        updates = updates.join(", ")
    ));
    let migrated_dir = tempfile::tempdir().expect("temp dir");
    let config = eventhubs_config(
        &endpoint,
        migrated_dir.path(),
        "migrated",
        &checkpoint,
        table_line,
    );
    run_to_completion(&config, Duration::from_secs(300));
    // Exactly the events after the SDK's checkpoints, from what the endpoint stored.
    let mut expected: Vec<String> = Vec::new();
    for (p, (checkpointed, _)) in &middle {
        for event in endpoint.endpoint.events("telemetry", *p).expect("events") {
            if event.sequence_number > *checkpointed {
                let body: Value = serde_json::from_slice(&event.body()).expect("JSON event");
                expected.push(body["EventId"].as_str().expect("EventId").to_owned());
            }
        }
    }
    expected.sort();
    assert!(!expected.is_empty() && expected.len() < all_ids.len());
    assert_eq!(
        delta_event_ids(&migrated_dir.path().join("delta/raw_telemetry")),
        expected,
        "the events after the SDK's checkpoints, once each"
    );
    // Weir's checkpoints for the group, as the SDK reads them: the last events, with their offsets.
    assert_eq!(sdk_checkpoints(&azurite, "migrated"), last);
}

#[test]
fn a_delta_table_on_an_abfss_url_is_written_to_azurite_and_read_back() {
    let azurite = Azurite::start();
    azurite.create_container("lake");
    let endpoint = TestEndpoint::start(&[("telemetry", 2), ("alerts", 1)]);
    let readings = generated_readings(8, 30, 17);
    endpoint.publish_keyed("telemetry", &keyed_records(&readings));
    let mut expected: Vec<String> = readings.iter().map(|r| r.event_id.clone()).collect();
    expected.sort();
    let url = |table: &str| {
        format!("abfss://lake@{AZURITE_ACCOUNT}.dfs.core.windows.net/telemetry/{table}")
    };
    let azurite_root = azurite
        .blob_endpoint()
        .trim_end_matches(&format!("/{AZURITE_ACCOUNT}"))
        .to_owned();

    // Azurite has no DFS endpoint: the account's blob endpoint serves the ADLS URL, given as an
    // option, or through the emulator switch (whose address object_store takes from
    // AZURITE_BLOB_STORAGE_URL, by default http://127.0.0.1:10000).
    let runs = [
        ("by_endpoint", storage_options(&azurite), Vec::new()),
        (
            "by_emulator",
            "storage_options = { azure_storage_use_emulator = \"true\" }".to_owned(),
            vec![("AZURITE_BLOB_STORAGE_URL", azurite_root.as_str())],
        ),
    ];
    for (table, options, env) in &runs {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = eventhubs_config(
            &endpoint,
            dir.path(),
            "$Default",
            "dir = \"checkpoints\"",
            &format!("path = \"{}\"\n{options}", url(table)),
        );
        run_with_env(&config, env);
        assert!(
            !dir.path().join("delta").exists(),
            "the table went to a local directory"
        );
    }

    // Python's deltalake reads both tables at their abfss:// URLs: every event once.
    let tables = runs
        .iter()
        .map(|(table, _, _)| format!("(\"{table}\", \"{}\")", url(table)))
        .collect::<Vec<_>>()
        .join(", ");
    let read = azurite.python(&format!(
        r#"
from deltalake import DeltaTable
from azure.storage.blob import ContainerClient
options = {{"account_name": "{AZURITE_ACCOUNT}", "account_key": "{AZURITE_KEY}", "azure_storage_endpoint": "{endpoint}", "allow_http": "true"}}
out = {{}}
for name, url in [{tables}]:
    table = DeltaTable(url, storage_options=options)
    out[name] = {{"ids": table.to_pyarrow_table().column("EventId").to_pylist(),
        "partition_by": table.metadata().partition_columns}}
names = [b.name for b in ContainerClient.from_connection_string(CONN, "lake").list_blobs()]
out["logs"] = sorted(n for n in names if "/_delta_log/" in n and n.endswith(".json"))
print(json.dumps(out))
"#,
        endpoint = azurite.blob_endpoint(),
    ));
    let read: Value = serde_json::from_str(read.trim()).expect("JSON");
    for (table, _, _) in &runs {
        let mut ids: Vec<String> = read[table]["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, expected, "table {table}: every event once");
        assert_eq!(
            read[table]["partition_by"],
            serde_json::json!(["EventDate"])
        );
        // The commits are blobs of container `lake` under the URL's path.
        let first = format!("telemetry/{table}/_delta_log/00000000000000000000.json");
        assert!(
            read["logs"]
                .as_array()
                .expect("logs")
                .iter()
                .any(|l| l == &first),
            "{first} not in {}",
            read["logs"]
        );
    }
}

/// The Blob Storage checkpoint store lists a partition's state files (what a run sweeps when
/// earlier runs left files behind) and deletes them, against Azurite.
#[test]
fn state_files_in_blob_storage_are_listed_per_partition_and_deleted() {
    use weir::checkpoint::CheckpointStore as _;
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    // The `azure_blob` table as the configuration gives it.
    let table: toml::Table = toml::from_str(&azure_blob(&azurite)).expect("toml");
    let config: weir::config::AzureBlobCheckpointConfig =
        table["azure_blob"].clone().try_into().expect("azure_blob");
    let store = weir::connectors::azure_blob::checkpoint::BlobCheckpointStore::open(
        &config,
        Default::default(),
    )
    .expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let names = [
            "anomaly.0000000001-aa.base",
            "anomaly.0000000002-aa.delta",
            "anomaly.0000000003-bb.base",
        ];
        for name in names {
            store
                .write_state_file("telemetry", 0, name, bytes::Bytes::from_static(b"state"))
                .await
                .expect("write");
        }
        store
            .write_state_file(
                "telemetry",
                1,
                "anomaly.0000000001-cc.base",
                bytes::Bytes::from_static(b"other partition"),
            )
            .await
            .expect("write");
        let mut listed = store.list_state_files("telemetry", 0).await.expect("list");
        listed.sort();
        assert_eq!(listed, names);
        store
            .delete_state_file("telemetry", 0, names[0])
            .await
            .expect("delete");
        let mut listed = store.list_state_files("telemetry", 0).await.expect("list");
        listed.sort();
        assert_eq!(listed, names[1..]);
        assert_eq!(
            store.list_state_files("telemetry", 1).await.expect("list"),
            ["anomaly.0000000001-cc.base"]
        );
        assert!(
            store
                .list_state_files("telemetry", 2)
                .await
                .expect("list")
                .is_empty()
        );
    });
}
