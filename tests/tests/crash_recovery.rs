//! Crash recovery: `weir` killed with SIGKILL mid-stream, several times, then run to the end,
//! gives the same Delta table and alerts as an uninterrupted run: every event exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::telemetry::{
    PipelineOptions, anomaly_pipeline, assert_alerts_match, expected_alerts, generated_readings,
    write_input,
};
use weir_tests::{WeirProcess, read_delta, read_jsonl_dir, run_to_completion};

fn alert_multiset(alerts: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for alert in alerts {
        *counts.entry(alert.to_string()).or_default() += 1;
    }
    counts
}

/// Number of commits in a Delta table's log (0 before it exists).
fn delta_commits(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn killed_mid_stream_and_restarted_writes_every_event_exactly_once() {
    let readings = generated_readings(60, 700, 3);
    // A duplicated reading is two events: exactly once means both rows, not one. Pick one within
    // the limits, so that its copy (delta 0) raises no alert of its own.
    let duplicated = (999..readings.len())
        .find(|&i| (1.0..79.0).contains(&readings[i].temperature))
        .expect("a reading within the limits");
    let mut readings_with_duplicate = readings.clone();
    readings_with_duplicate.insert(duplicated + 1, readings[duplicated].clone());

    let uninterrupted = tempfile::tempdir().expect("temp dir");
    let input = uninterrupted.path().join("telemetry.jsonl");
    write_input(&input, &readings_with_duplicate, &[]);
    let options = PipelineOptions {
        checkpoint_interval: "150ms",
        batch_max_events: 128,
        ..PipelineOptions::default()
    };
    let reference = anomaly_pipeline(uninterrupted.path(), &input, &options);
    run_to_completion(&reference.config, Duration::from_secs(300));

    let crashed = tempfile::tempdir().expect("temp dir");
    let paths = anomaly_pipeline(crashed.path(), &input, &options);
    // Kill it at several points, each after it has committed new output (so every restart has
    // something to recover), with a little jitter so the kills land at different moments of a batch.
    let mut kills = 0;
    let jitter_ms = [0u64, 130, 45, 260];
    for jitter in jitter_ms {
        let before = delta_commits(&paths.raw_table).max(1);
        let mut process = WeirProcess::run(&paths.config);
        let deadline = Instant::now() + Duration::from_secs(120);
        while process.is_running()
            && delta_commits(&paths.raw_table) <= before
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(jitter));
        if !process.is_running() {
            break;
        }
        process.kill9();
        kills += 1;
    }
    run_to_completion(&paths.config, Duration::from_secs(300));
    let log = std::fs::read_to_string(paths.config.with_extension("log")).unwrap_or_default();
    assert!(
        kills >= 2,
        "the process finished before it could be killed twice ({kills}); the test input is too small"
    );
    assert!(
        log.contains("resuming from checkpoint"),
        "restarts resumed from checkpoints:\n{log}"
    );

    // Delta: every input event exactly once, read by an independent reader.
    let table = read_delta(&paths.raw_table);
    assert_eq!(
        table.rows.len(),
        readings_with_duplicate.len(),
        "after {kills} kills"
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &table.rows {
        *counts
            .entry(row["EventId"].as_str().expect("EventId"))
            .or_default() += 1;
    }
    for reading in &readings {
        let want = if reading.event_id == readings[duplicated].event_id {
            2
        } else {
            1
        };
        assert_eq!(
            counts.get(reading.event_id.as_str()).copied(),
            Some(want),
            "{}",
            reading.event_id
        );
    }
    let reference_rows = read_delta(&reference.raw_table).rows.len();
    assert_eq!(table.rows.len(), reference_rows);

    // Alerts: the same as the uninterrupted run, exactly (the file sink truncates on recovery).
    let alerts = read_jsonl_dir(&paths.alerts);
    let reference_alerts = read_jsonl_dir(&reference.alerts);
    assert_eq!(alert_multiset(&alerts), alert_multiset(&reference_alerts));
    assert_alerts_match(&alerts, &expected_alerts(&readings_with_duplicate));
    assert!(read_jsonl_dir(&paths.dead_letters).is_empty());
}
