//! The README's configuration for the seed's Azure architecture (`examples/azure.toml`), run as
//! it is written, with only its addresses and keys pointed at local peers: the Event Hubs test
//! endpoint (read and written by the real `azure_messaging_eventhubs` client) and Azurite (Delta
//! tables on `abfss://`, checkpoints and ownership claims in Blob Storage). The tables are read
//! back by Python's `deltalake`; every output is checked against a plain computation.

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::WeirProcess;
use weir_tests::eventhubs::{TestEndpoint, keyed_records};
use weir_tests::servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, wait_for};
use weir_tests::telemetry::{
    FIVE_MINUTES, Reading, assert_aggregate_rows, assert_alerts_match, assert_each_reading_once,
    expected_alerts, expected_asa_aggregates, ordered_readings,
};

/// The example's text with its plugins, storage account and hubs pointed at this build and the
/// local peers. Every replacement must apply: a changed example fails here, not silently.
fn localized_example(azurite: &Azurite, endpoint: &TestEndpoint) -> String {
    let path = weir_tests::workspace_dir().join("examples/azure.toml");
    let mut text = std::fs::read_to_string(&path).expect("examples/azure.toml");
    let mut replace = |from: &str, to: &str| {
        assert!(text.contains(from), "examples/azure.toml has `{from}`");
        text = text.replace(from, to);
    };
    for plugin in ["telemetry_anomaly", "telemetry_aggregates"] {
        replace(
            &format!("../target/plugins/{plugin}.wasm"),
            &weir_tests::plugin_path(plugin).display().to_string(),
        );
    }
    let blob = azurite.blob_endpoint();
    replace(
        "azure_blob = { account = \"weirstorage\", container = \"checkpoints\" }",
        &format!(
            "azure_blob = {{ account = \"{AZURITE_ACCOUNT}\", container = \"checkpoints\", endpoint = \"{blob}\", options = {{ azure_storage_account_key = \"{AZURITE_KEY}\" }} }}"
        ),
    );
    replace(
        "storage_options = { azure_storage_account_name = \"weirstorage\" }",
        &format!(
            "storage_options = {{ azure_storage_account_name = \"{AZURITE_ACCOUNT}\", azure_storage_account_key = \"{AZURITE_KEY}\", azure_storage_endpoint = \"{blob}\", azure_allow_http = \"true\" }}"
        ),
    );
    replace(
        "lake@weirstorage.dfs.core.windows.net",
        &format!("lake@{AZURITE_ACCOUNT}.dfs.core.windows.net"),
    );
    let custom_endpoint = endpoint.endpoint.custom_endpoint();
    for hub in ["telemetry", "alerts"] {
        replace(
            &format!("event_hub = \"{hub}\"\n"),
            &format!("event_hub = \"{hub}\"\ncustom_endpoint = \"{custom_endpoint}\"\n"),
        );
    }
    text
}

/// The table at `url` (as the example names it), read by Python's `deltalake` from Azurite.
fn read_azure_table(azurite: &Azurite, url: &str) -> Vec<Value> {
    let out = azurite.python(&format!(
        r#"
from deltalake import DeltaTable
options = {{"account_name": "{AZURITE_ACCOUNT}", "account_key": "{AZURITE_KEY}", "azure_storage_endpoint": "{endpoint}", "allow_http": "true"}}
try:
    table = DeltaTable("{url}", storage_options=options)
except Exception as e:
    if "no files in log segment" in str(e).lower() or "not a delta table" in str(e).lower():
        print("[]")
        sys.exit(0)
    raise
print(json.dumps(table.to_pyarrow_table().to_pylist(), default=str))
"#,
        endpoint = azurite.blob_endpoint()
    ));
    serde_json::from_str(out.trim()).expect("rows JSON")
}

#[test]
fn the_readmes_azure_architecture_runs_against_event_hubs_and_azure_storage() {
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    azurite.create_container("lake");
    let endpoint = TestEndpoint::start(&[("telemetry", 4), ("alerts", 2)]);

    // Readings in event-time order (so the 5 s reorder tolerance never adjusts one), then one
    // more reading per device an hour later: it moves every partition's watermark past the
    // earlier windows, which close as they would on a live hub.
    let readings = ordered_readings(24, 60, 41);
    let last = readings.iter().map(|r| r.time_ms).max().expect("readings");
    let later = (last / FIVE_MINUTES + 12) * FIVE_MINUTES;
    let closing: Vec<Reading> = (0..24)
        .map(|d| {
            Reading::new(
                &format!("device-{d:03}"),
                later + d * 100,
                20.0,
                &format!("closing-{d}"),
            )
        })
        .collect();
    let all: Vec<Reading> = readings.iter().chain(&closing).cloned().collect();
    endpoint.publish_keyed("telemetry", &keyed_records(&all));

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("azure.toml");
    std::fs::write(&config, localized_example(&azurite, &endpoint)).expect("write config");
    let telemetry = endpoint.endpoint.connection_string("telemetry");
    let alerts = endpoint.endpoint.connection_string("alerts");
    let process = WeirProcess::spawn_with_env(
        &["run", "--config"],
        &config,
        &[
            ("EVENTHUBS_CONNECTION_STRING", telemetry.as_str()),
            ("ALERTS_CONNECTION_STRING", alerts.as_str()),
        ],
    );

    let lake = format!("abfss://lake@{AZURITE_ACCOUNT}.dfs.core.windows.net/telemetry");
    // Stream Analytics' windows (start, end], as the example's aggregates stage has them.
    let expected_windows = expected_asa_aggregates(&readings);
    let deadline = Instant::now() + Duration::from_secs(300);
    let (raw, aggregates) = loop {
        let raw = read_azure_table(&azurite, &format!("{lake}/raw_telemetry"));
        let aggregates = read_azure_table(&azurite, &format!("{lake}/aggregated_metrics"));
        if raw.len() >= all.len() && aggregates.len() >= expected_windows.len() {
            break (raw, aggregates);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} raw rows and {} of {} windows arrived; log:\n{}",
            raw.len(),
            all.len(),
            aggregates.len(),
            expected_windows.len(),
            process.log_text()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let expected = expected_alerts(&all);
    wait_for("every alert", Duration::from_secs(120), || {
        endpoint.unique_json("alerts").len() >= expected.len()
    });
    // Each consumer group claims and checkpoints every partition in Blob Storage, in the SDKs'
    // layout (namespace, hub and group lower-cased). Checkpoints follow every 5 s.
    let namespace = weir_eventhubs_endpoint::NAMESPACE_HOST.to_lowercase();
    let wanted: Vec<String> = ["weir", "weir-aggregates"]
        .iter()
        .flat_map(|group| {
            let namespace = &namespace;
            (0..4).flat_map(move |p| {
                ["checkpoint", "ownership"]
                    .map(|kind| format!("{namespace}/telemetry/{group}/{kind}/{p}"))
            })
        })
        .collect();
    let mut names = String::new();
    wait_for("both groups' blobs", Duration::from_secs(60), || {
        names = azurite.python(
            r#"
from azure.storage.blob import ContainerClient
container = ContainerClient.from_connection_string(CONN, "checkpoints")
print("\n".join(b.name for b in container.list_blobs()))
"#,
        );
        wanted.iter().all(|name| names.lines().any(|l| l == name))
    });
    process.terminate();

    assert_each_reading_once(&raw, &all);
    // Windows that the closing readings opened stay open; every earlier one is in the table.
    let closed: Vec<Value> = aggregates
        .into_iter()
        .filter(|row| {
            let start =
                weir_tests::python_timestamp_ms(row["WindowStart"].as_str().expect("start"));
            start < later
        })
        .collect();
    assert_aggregate_rows(&closed, &expected_windows);
    assert_alerts_match(&endpoint.unique_json("alerts"), &expected);

    // Beside them, Weir's own incremental keyed-state files of the anomaly stage (bases and
    // deltas, under `state/<partition>/`), which the SDKs' layout leaves room for.
    let state_file = |name: &str| {
        (0..4).any(|p| name.starts_with(&format!("{namespace}/telemetry/weir/state/{p}/anomaly.")))
            && (name.ends_with(".base") || name.ends_with(".delta"))
    };
    assert!(
        names.lines().any(state_file),
        "the anomaly stage's state files: {names}"
    );
    let foreign: Vec<&str> = names
        .lines()
        .filter(|l| !wanted.iter().any(|w| w == l) && !state_file(l))
        .collect();
    assert!(foreign.is_empty(), "unexpected blobs: {foreign:?}");
}
