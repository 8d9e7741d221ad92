//! Automatic rollback (issue 4, evidence 2): a version that traps on every event, uploaded while
//! the stream flows, is rolled back by itself after its first trapping events; the events it saw
//! are processed again by the version it replaced, so no event is lost nor dead-lettered, and the
//! keyed state is intact. Then an operator lists the versions and rolls back to chosen ones.

use std::collections::BTreeSet;
use std::time::Duration;

use weir_tests::service::{
    Feeder, SwapOptions, TOKEN, assert_automatic_rollback_reported, events_in, http, plugin_report,
    swap_pipeline, version_of, wait_until,
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

fn wait_for_more_events(admin: &str, count: u64) {
    let start = events_in(admin, "telemetry");
    wait_until(WAIT, "more events", || {
        events_in(admin, "telemetry") >= start + count
    });
}

#[test]
fn a_version_that_traps_on_every_event_is_rolled_back_by_itself_and_no_event_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good_path = plugin_path("telemetry_anomaly");
    let bad_path = plugin_path("trap_always");
    let other_path = plugin_path("anomaly_v2");
    let (good, bad, other) = (
        version_of(&good_path),
        version_of(&bad_path),
        version_of(&other_path),
    );
    let options = SwapOptions {
        probation_events: 300,
        max_trap_ratio: 0.05,
        ..SwapOptions::default()
    };
    let paths = swap_pipeline(dir.path(), &good_path, &options);
    // The feeder writes until told to stop, so the stream flows through everything below: 150 s
    // of readings, more than the test takes on a loaded machine.
    let pool = generated_readings(40, 6000, 5);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    let feeder = Feeder::start(&paths.input, pool.clone(), 40, Duration::from_millis(25));
    wait_for_more_events(&admin, 400);

    let (status, body) = http(
        &admin,
        "POST",
        "/plugins/telemetry/anomaly",
        Some(TOKEN),
        &std::fs::read(&bad_path).expect("bad version"),
    );
    assert_eq!(status, 200, "a valid component is accepted: {body}");
    wait_until(WAIT, "the automatic rollback", || {
        let report = plugin_report(&admin, "telemetry", "anomaly");
        report["activations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["cause"] == "automatic_rollback"))
    });
    assert_eq!(active(&admin), good);
    assert_automatic_rollback_reported(&admin, "telemetry", "anomaly", &good, &bad);
    assert!(
        process
            .log_text()
            .contains("new plugin version failed its probation: rolled back automatically"),
        "the rollback is logged"
    );

    // An operator rolls back to any listed version: another one, then the first by name, then
    // "the previous one".
    wait_for_more_events(&admin, 200);
    let (status, body) = http(
        &admin,
        "POST",
        "/plugins/telemetry/anomaly",
        Some(TOKEN),
        &std::fs::read(&other_path).expect("v2"),
    );
    assert_eq!(status, 200, "{body}");
    wait_for_more_events(&admin, 200);
    let (status, body) = http(
        &admin,
        "POST",
        "/plugins/telemetry/anomaly/rollback",
        Some(TOKEN),
        format!("{{\"version\":\"{good}\"}}").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(active(&admin), good);
    let (status, body) = http(
        &admin,
        "POST",
        "/plugins/telemetry/anomaly/rollback",
        Some(TOKEN),
        b"{\"version\":\"000000000000\"}",
    );
    assert_eq!(status, 404, "an unknown version is refused: {body}");
    assert_eq!(active(&admin), good);

    wait_for_more_events(&admin, 200);
    let total = feeder.stop();
    assert!(total < pool.len(), "the stream flowed throughout");
    let readings = &pool[..total];
    wait_until(WAIT, "every event processed", || {
        events_in(&admin, "telemetry") == total as u64
    });
    process.terminate();
    assert!(process.wait(WAIT).success());

    // No event lost: every reading once, and none produced by the bad version.
    let rows = read_delta(&paths.raw_table).rows;
    assert_eq!(rows.len(), readings.len());
    let ids: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["EventId"].as_str().expect("EventId"))
        .collect();
    assert_eq!(ids.len(), readings.len(), "each reading once");
    let versions: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["PluginVersion"].as_str().expect("PluginVersion"))
        .collect();
    assert!(
        !versions.contains(bad.as_str()),
        "the bad version produced nothing"
    );
    assert!(versions.contains(other.as_str()) && versions.contains(good.as_str()));
    assert!(
        read_jsonl_dir(&paths.dead_letters).is_empty(),
        "the events the bad version trapped on were processed by the previous version"
    );
    assert_alerts_match(
        &read_delta(&paths.alerts_table).rows,
        &expected_alerts(readings),
    );
}
