//! Hot swap of a window stage through the `weir` binary (issue 4, for window stages): while a
//! steady stream of telemetry flows, the 5-minute aggregate plugin is swapped by a file written
//! into the watched plugins directory and by an upload to the admin API. The aggregates in Delta
//! are exactly a plain fold over the readings (so the windows open at each swap carried their
//! accumulators over: a lost one would show a smaller count), every row names the version whose
//! `finish` made it, and versions follow the swaps in every partition.
//!
//! Then automatic rollback: a window version that traps on every fold and every finish is
//! uploaded; every event and window it traps on is folded or finished by the version it replaced,
//! the slot rolls it back by itself (log, metric, admin API), and no event is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use weir_tests::service::{
    self, Feeder, StagePaths, TOKEN, active_version, another_version,
    assert_automatic_rollback_reported, events_in, get_json, http, install_atomically,
    plugin_and_input, plugin_report, stage_records_out, upload_activated, version_of,
    version_origins, versions_by_row, wait_until,
};
use weir_tests::telemetry::{
    Reading, assert_aggregate_rows, expected_aggregates, ordered_readings,
};
use weir_tests::{WeirProcess, plugin_path, read_delta, read_jsonl_dir};

const WAIT: Duration = Duration::from_secs(240);
const DEVICES: usize = 40;
const PIPELINE: &str = "telemetry";
const STAGE: &str = "aggregates";

/// A pipeline following `telemetry.jsonl` over 4 partitions into the 5-minute aggregates of
/// `initial` (copied to the watched `plugins/aggregates.wasm`), written to Delta with the plugin
/// version, partition and position of each row; admin API on a free port.
fn window_pipeline(dir: &Path, initial: &Path, probation_events: u64) -> StagePaths {
    let (plugin, input) = plugin_and_input(dir, "aggregates.wasm", initial, "telemetry.jsonl");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "300ms"

[plugins]
watch_settle = "150ms"
rollback = {{ probation_events = {probation_events}, max_trap_ratio = 0.05, max_error_ratio = 0.5 }}

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[sources.telemetry]
kind = "file"
path = "telemetry.jsonl"
partitions = 4
key_field = "DeviceId"
follow = true

[sinks.aggregated_metrics]
kind = "delta"
path = "delta/aggregates"
columns = [
  {{ name = "DeviceId", type = "string", nullable = false }},
  {{ name = "Location", type = "string" }},
  {{ name = "DeviceType", type = "string" }},
  {{ name = "EventCount", type = "long" }},
  {{ name = "AvgTemperature", type = "double" }},
  {{ name = "MinTemperature", type = "double" }},
  {{ name = "MaxTemperature", type = "double" }},
  {{ name = "AvgHumidity", type = "double" }},
  {{ name = "AvgPressure", type = "double" }},
  {{ name = "WindowStart", type = "timestamp", nullable = false }},
  {{ name = "WindowEnd", type = "timestamp", nullable = false }},
  {{ name = "PluginVersion", type = "string", value = "plugin_version" }},
  {{ name = "Partition", type = "integer", value = "partition" }},
  {{ name = "Position", type = "long", value = "position" }},
]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.{PIPELINE}]
source = "telemetry"
dead_letter = "dead_letters"
event_time = {{ field = "Timestamp", out_of_order = {{ tolerance = "1s", policy = "adjust" }} }}
batch = {{ max_events = 64, max_wait = "20ms" }}

[[pipelines.{PIPELINE}.stages]]
name = "{STAGE}"
plugin = "plugins/aggregates.wasm"
window = {{ type = "tumbling", size = "5m", group_by = ["DeviceId", "Location", "DeviceType"] }}
outputs = {{ rows = "aggregated_metrics" }}
"#
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    StagePaths {
        config: path,
        input,
        plugin,
        table: dir.join("delta/aggregates"),
        dead_letters: dir.join("dead_letters"),
    }
}

fn active(admin: &str) -> String {
    active_version(admin, PIPELINE, STAGE)
}

fn wait_for_more_events(admin: &str, count: u64) {
    service::wait_for_more_events(admin, PIPELINE, count, WAIT);
}

/// Stops the feeder, then appends one reading per device an hour after the last one: every
/// partition's watermark passes every window of the readings written, so all of them close.
/// Waits until the stage emitted them all; returns the readings written (without the flush).
fn stop_and_close_every_window(
    feeder: Feeder,
    pool: &[Reading],
    paths: &StagePaths,
    admin: &str,
) -> Vec<Reading> {
    let total = feeder.stop();
    assert!(total < pool.len(), "the stream flowed throughout");
    let readings = pool[..total].to_vec();
    let last = readings.iter().map(|r| r.time_ms).max().unwrap_or(0);
    let flush: String = (0..DEVICES)
        .map(|device| {
            let mut reading = Reading::new(
                &format!("device-{device:03}"),
                last + 3_600_000,
                20.0,
                &format!("flush-{device}"),
            );
            if let Some(known) = readings.iter().find(|r| r.device == reading.device) {
                reading.location.clone_from(&known.location);
                reading.device_type.clone_from(&known.device_type);
            }
            format!("{}\n", reading.to_json())
        })
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&paths.input)
        .expect("open input");
    std::io::Write::write_all(&mut file, flush.as_bytes()).expect("append the flush");
    let windows = expected_aggregates(&readings).len() as u64;
    wait_until(WAIT, "every window of the readings closed", || {
        events_in(admin, PIPELINE) == (total + DEVICES) as u64
            && stage_records_out(admin, STAGE) >= windows
    });
    readings
}

#[test]
fn window_plugin_swapped_by_file_and_api_under_load_keeps_its_windows_and_names_each_rows_version()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let v1_path = plugin_path("telemetry_aggregates");
    let v1_bytes = std::fs::read(&v1_path).expect("telemetry-aggregates");
    // Two more versions: the same aggregate under other content hashes, so that the expected rows
    // do not depend on which version made them.
    let v2_path = dir.path().join("aggregates-v2.wasm");
    let v3_bytes = another_version(&v1_bytes, b"3");
    std::fs::write(&v2_path, another_version(&v1_bytes, b"2")).expect("v2");
    let (v1, v2) = (version_of(&v1_path), version_of(&v2_path));
    let v3 = {
        let v3_path = dir.path().join("aggregates-v3.wasm");
        std::fs::write(&v3_path, &v3_bytes).expect("v3");
        version_of(&v3_path)
    };
    assert_eq!(BTreeSet::from([&v1, &v2, &v3]).len(), 3);

    let paths = window_pipeline(dir.path(), &v1_path, 400);
    // 40 devices every 20 s of event time, a step every 25 ms: a window closes about every 0.4 s.
    let pool = ordered_readings(DEVICES, 4000, 11);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    let feeder = Feeder::start(
        &paths.input,
        pool.clone(),
        DEVICES,
        Duration::from_millis(25),
    );
    wait_for_more_events(&admin, 1600);
    assert_eq!(active(&admin), v1);

    // 1. By file: a new component renamed into the watched directory.
    install_atomically(&v2_path, &paths.plugin);
    wait_until(WAIT, "v2 active", || active(&admin) == v2);
    wait_for_more_events(&admin, 1600);

    // 2. By the admin API.
    upload_activated(&admin, PIPELINE, STAGE, &v3_bytes);
    assert_eq!(active(&admin), v3, "the upload answers once activated");
    wait_for_more_events(&admin, 1600);

    let readings = stop_and_close_every_window(feeder, &pool, &paths, &admin);
    let report = plugin_report(&admin, PIPELINE, STAGE);
    process.terminate();
    assert!(process.wait(WAIT).success(), "graceful stop");

    let origins = version_origins(&report);
    assert_eq!(
        origins,
        BTreeMap::from([
            (v1.clone(), "config".to_owned()),
            (v2.clone(), "file".to_owned()),
            (v3.clone(), "api".to_owned())
        ])
    );
    assert_eq!(report["world"], "weir:plugin/window-aggregate@0.3.0");

    // Exactly the fold's rows: each window once, with every reading it should hold.
    let rows = read_delta(&paths.table).rows;
    assert_aggregate_rows(&rows, &expected_aggregates(&readings));
    let order = [v1.as_str(), v2.as_str(), v3.as_str()];
    let used = versions_by_row(&rows, &order, &order);
    assert_eq!(used.len(), 3, "each version made rows: {used:?}");
    let letters = read_jsonl_dir(&paths.dead_letters);
    assert!(letters.is_empty(), "no dead letters: {letters:?}");
}

#[test]
fn window_version_that_traps_on_every_event_is_rolled_back_by_itself_and_no_event_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good_path = plugin_path("telemetry_aggregates");
    let bad_path = plugin_path("window_trap_always");
    let (good, bad) = (version_of(&good_path), version_of(&bad_path));
    let paths = window_pipeline(dir.path(), &good_path, 300);
    let pool = ordered_readings(DEVICES, 4000, 12);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    let feeder = Feeder::start(
        &paths.input,
        pool.clone(),
        DEVICES,
        Duration::from_millis(25),
    );
    wait_for_more_events(&admin, 1600);

    let (status, body) = http(
        &admin,
        "POST",
        &format!("/plugins/{PIPELINE}/{STAGE}"),
        Some(TOKEN),
        &std::fs::read(&bad_path).expect("bad version"),
    );
    assert_eq!(status, 200, "a valid component is accepted: {body}");
    wait_until(WAIT, "the automatic rollback", || {
        plugin_report(&admin, PIPELINE, STAGE)["activations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["cause"] == "automatic_rollback"))
    });
    assert_eq!(active(&admin), good);
    let metrics = assert_automatic_rollback_reported(&admin, PIPELINE, STAGE, &good, &bad);
    assert!(
        metrics.contains(&format!(
            "weir_plugin_traps_total{{pipeline=\"{PIPELINE}\",stage=\"{STAGE}\",version=\"{bad}\"}}"
        )),
        "the bad version's traps are counted: {metrics}"
    );
    assert!(
        process
            .log_text()
            .contains("new plugin version failed its probation: rolled back automatically"),
        "the rollback is logged"
    );
    wait_for_more_events(&admin, 1600);

    let readings = stop_and_close_every_window(feeder, &pool, &paths, &admin);
    let pipelines = get_json(&admin, "/pipelines");
    process.terminate();
    assert!(process.wait(WAIT).success(), "graceful stop");
    assert!(
        pipelines["pipelines"][0]["partitions"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["dead_letters"] == 0)),
        "{pipelines}"
    );

    // No event lost: exactly the fold's rows, none made by the bad version.
    let rows = read_delta(&paths.table).rows;
    assert_aggregate_rows(&rows, &expected_aggregates(&readings));
    let order = [good.as_str()];
    versions_by_row(&rows, &order, &order);
    let letters = read_jsonl_dir(&paths.dead_letters);
    assert!(
        letters.is_empty(),
        "the events and windows the bad version trapped on were handled by the previous one: {letters:?}"
    );
}
