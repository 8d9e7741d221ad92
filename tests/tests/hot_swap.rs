//! Hot swap under load (issue 4, evidence 1): while a steady stream flows, the anomaly plugin is
//! swapped several times, by file (atomic rename, and an in-place write whose partial state must
//! not be loaded) and by the admin API. At the end every event is in the Delta table exactly once,
//! each row names the version that produced it, versions follow the order of the swaps in every
//! partition, and the alerts are exactly the rule's: keyed state carried over every swap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use weir_tests::service::{
    Feeder, SwapOptions, TOKEN, events_in, http, install_atomically, plugin_report, swap_pipeline,
    upload_activated, version_of, version_origins, wait_ready, wait_until,
};
use weir_tests::telemetry::{assert_alerts_match, expected_alerts, generated_readings};
use weir_tests::{WeirProcess, plugin_path, read_delta, read_jsonl_dir};

const WAIT: Duration = Duration::from_secs(180);

fn active(admin: &str) -> String {
    plugin_report(admin, "telemetry", "anomaly")["active"]
        .as_str()
        .expect("active")
        .to_owned()
}

/// Waits for `count` more events than now.
fn wait_for_more_events(admin: &str, count: u64) {
    let start = events_in(admin, "telemetry");
    wait_until(WAIT, "more events", || {
        events_in(admin, "telemetry") >= start + count
    });
}

#[test]
fn swapped_by_file_and_api_under_load_every_event_once_with_its_version_and_state_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (v1_path, v2_path, v3_path) = (
        plugin_path("telemetry_anomaly"),
        plugin_path("anomaly_v2"),
        plugin_path("anomaly_v3"),
    );
    let (v1, v2, v3) = (
        version_of(&v1_path),
        version_of(&v2_path),
        version_of(&v3_path),
    );
    assert_eq!(
        BTreeSet::from([&v1, &v2, &v3]).len(),
        3,
        "three distinct components"
    );
    let paths = swap_pipeline(dir.path(), &v1_path, &SwapOptions::default());
    // More readings than the test needs: the feeder writes until told to stop, after the last
    // swap, so that every swap happens under load however fast this machine is. 240,000: 150 s
    // of feed at 1,600 a second; on a loaded machine each new version takes seconds to compile,
    // and 40,000 (25 s) once ran dry mid-test, which looked like a stalled pipeline.
    let pool = generated_readings(40, 6000, 21);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    let feeder = Feeder::start(&paths.input, pool.clone(), 40, Duration::from_millis(25));

    wait_for_more_events(&admin, 400);
    assert_eq!(active(&admin), v1);

    // 1. By file: a new component renamed into place.
    install_atomically(&v2_path, &paths.plugin);
    wait_until(WAIT, "v2 active", || active(&admin) == v2);
    wait_for_more_events(&admin, 400);

    // 2. By the admin API.
    upload_activated(
        &admin,
        "telemetry",
        "anomaly",
        &std::fs::read(&v3_path).expect("v3"),
    );
    assert_eq!(active(&admin), v3, "the upload answers once activated");
    wait_for_more_events(&admin, 400);

    // 3. By file, written in place in two halves with a pause: the half-written file is refused
    // (it is not a valid component), the running version keeps running, then the whole file is
    // loaded.
    let bytes = std::fs::read(&v1_path).expect("v1");
    std::fs::write(&paths.plugin, &bytes[..bytes.len() / 2]).expect("first half");
    wait_until(WAIT, "the partial file to be refused", || {
        process.log_text().contains("new plugin version refused")
    });
    assert_eq!(active(&admin), v3, "a refused file changes nothing");
    std::fs::write(&paths.plugin, &bytes).expect("whole file");
    wait_until(WAIT, "v1 active again", || active(&admin) == v1);
    wait_for_more_events(&admin, 400);

    // 4. By the API again, a version loaded before (no compilation).
    let (status, body) = http(
        &admin,
        "POST",
        "/plugins/telemetry/anomaly",
        Some(TOKEN),
        &std::fs::read(&v2_path).expect("v2"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(active(&admin), v2);
    wait_for_more_events(&admin, 400);
    let total = feeder.stop();
    assert!(total < pool.len(), "the stream flowed through every swap");
    let readings = &pool[..total];
    wait_until(WAIT, "every event processed", || {
        events_in(&admin, "telemetry") == total as u64
    });
    let report = plugin_report(&admin, "telemetry", "anomaly");
    process.terminate();
    let log_path = paths.config.with_extension("log");
    let status = process.wait(WAIT);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "graceful stop: {log}");

    // The version list: every version by hash, with how it came.
    let origins = version_origins(&report);
    assert_eq!(origins.get(&v1).map(String::as_str), Some("config"));
    assert_eq!(origins.get(&v2).map(String::as_str), Some("file"));
    assert_eq!(origins.get(&v3).map(String::as_str), Some("api"));
    let activations: Vec<(String, String)> = report["activations"]
        .as_array()
        .expect("activations")
        .iter()
        .map(|a| {
            (
                a["version"].as_str().expect("version").to_owned(),
                a["cause"].as_str().expect("cause").to_owned(),
            )
        })
        .collect();
    let order = [v1.clone(), v2.clone(), v3.clone(), v1.clone(), v2.clone()];
    assert_eq!(
        activations,
        [
            (v1.clone(), "start".to_owned()),
            (v2.clone(), "file".to_owned()),
            (v3.clone(), "api".to_owned()),
            (v1.clone(), "file".to_owned()),
            (v2.clone(), "api".to_owned()),
        ]
    );

    // Every event exactly once, each row naming its version.
    let rows = read_delta(&paths.raw_table).rows;
    assert_eq!(rows.len(), readings.len());
    let mut seen = BTreeSet::new();
    let mut by_partition: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    let mut row_versions: BTreeMap<String, String> = BTreeMap::new();
    for row in &rows {
        let id = row["EventId"].as_str().expect("EventId").to_owned();
        assert!(seen.insert(id.clone()), "{id} written twice");
        let version = row["PluginVersion"]
            .as_str()
            .expect("PluginVersion")
            .to_owned();
        assert!(
            [&v1, &v2, &v3].contains(&&version),
            "row {id} names unknown version {version}"
        );
        by_partition
            .entry(row["Partition"].as_i64().expect("Partition"))
            .or_default()
            .push((row["Position"].as_i64().expect("Position"), version.clone()));
        row_versions.insert(id, version);
    }
    for reading in readings {
        assert!(
            seen.contains(&reading.event_id),
            "{} missing",
            reading.event_id
        );
    }
    let used: BTreeSet<&String> = row_versions.values().collect();
    assert_eq!(used.len(), 3, "every version processed events: {used:?}");
    // In each partition, versions change only in the order of the swaps.
    for (partition, mut rows) in by_partition {
        rows.sort();
        let mut runs: Vec<&String> = Vec::new();
        for (_, version) in &rows {
            if runs.last() != Some(&version) {
                runs.push(version);
            }
        }
        let mut next = 0;
        for run in &runs {
            match order[next..].iter().position(|v| v == *run) {
                Some(offset) => next += offset + 1,
                None => panic!(
                    "partition {partition}: versions ran in the order {runs:?}, not a subsequence of the swaps {order:?}"
                ),
            }
        }
    }

    // The alerts are exactly the rule's over the whole stream: state carried over every swap
    // (a lost state would miss the alerts of the first readings after a swap, a wrong one would
    // add spurious ones), and each alert comes from the version that processed its reading.
    let alerts = read_delta(&paths.alerts_table).rows;
    assert_alerts_match(&alerts, &expected_alerts(readings));
    for alert in &alerts {
        let id = alert["EventId"].as_str().expect("EventId");
        assert_eq!(
            alert["PluginVersion"].as_str(),
            row_versions.get(id).map(String::as_str),
            "alert {id} and its reading come from the same call"
        );
    }
    let letters: Vec<Value> = read_jsonl_dir(&paths.dead_letters);
    assert!(letters.is_empty(), "no dead letters: {letters:?}");

    // A restart runs the version that was active at the stop (uploaded by API; the plugin file
    // still holds v1, unchanged since it was last read), and lists every version again.
    let skip = std::fs::read_to_string(&log_path).unwrap_or_default().len();
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(skip, WAIT);
    wait_ready(&admin, WAIT);
    let report = plugin_report(&admin, "telemetry", "anomaly");
    assert_eq!(report["active"], v2.as_str(), "{report}");
    let last = report["activations"]
        .as_array()
        .and_then(|a| a.last().cloned())
        .expect("activations");
    assert_eq!(last["cause"], "resume");
    assert_eq!(report["versions"].as_array().map(Vec::len), Some(3));
    process.terminate();
    assert!(process.wait(WAIT).success());
}
