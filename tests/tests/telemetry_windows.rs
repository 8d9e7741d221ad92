//! The telemetry workload's windowed pipelines, as `examples/telemetry.toml` configures them, on
//! generated input (a few seconds out of order, within the tolerance), against expectations
//! computed here by a plain fold over the same readings: 5-minute aggregates into the Delta table
//! `aggregated_metrics` (read back with Python's `deltalake`; Stream Analytics' windows
//! `(start, end]`, as the example sets them, with device 0 reading on the boundaries), and
//! 10-minute device health alerts (Stream Analytics' windows too, device 0 reading on every tenth
//! minute).
//! Then crash recovery: `weir` killed with SIGKILL while windows are open gives the same table.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::examples::{Adapt, adapt_example};
use weir_tests::telemetry::{
    Aggregate, Reading, assert_aggregate_rows, expected_asa_aggregates, ordered_readings,
    shuffle_within, timestamp, write_input,
};
use weir_tests::{
    WeirProcess, close, python_timestamp_ms, read_delta, read_jsonl_dir, run_to_completion,
};

const TEN_MINUTES: i64 = 600_000;

/// Checks the Delta rows against the fold, and that the table is partitioned by the date of
/// `WindowEnd`.
fn assert_aggregates(rows: &[Value], expected: &BTreeMap<(String, i64), Aggregate>) {
    for row in rows {
        let end = python_timestamp_ms(row["WindowEnd"].as_str().expect("WindowEnd"));
        assert_eq!(
            row["WindowEndDate"].as_str(),
            Some(&timestamp(end)[..10]),
            "partitioned by the date of WindowEnd: {row}"
        );
    }
    assert_aggregate_rows(rows, expected);
}

fn aggregates_pipeline(dir: &Path, input: &Path, checkpoint_interval: &str) -> std::path::PathBuf {
    adapt_example(
        "telemetry.toml",
        dir,
        &Adapt {
            pipelines: &["aggregates"],
            input,
            partitions: 4,
            key_field: "DeviceId",
            checkpoint_interval,
            batch_max_events: 128,
        },
    )
}

#[test]
fn five_minute_aggregates_equal_a_plain_fold_over_the_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let readings = ordered_readings(12, 160, 21);
    let input = dir.path().join("telemetry.jsonl");
    // Up to 3 s out of order: within the example's 5 s tolerance, so nothing is late. About 1% of
    // the readings are sent twice (the same EventId): the example's dedup stage drops the copies.
    let shuffled = with_duplicates(&shuffle_within(&readings, 3000, 4), 100);
    let copies = shuffled.len() - readings.len();
    assert!(copies > 10);
    write_input(&input, &shuffled, &[]);
    let config = aggregates_pipeline(dir.path(), &input, "500ms");
    let log = run_to_completion(&config, Duration::from_secs(180));
    assert!(
        log.contains(&format!(", {copies} duplicates dropped")),
        "the summary counts the duplicates: {log}"
    );
    let table = read_delta(&dir.path().join("aggregated_metrics"));
    assert_eq!(table.partition_columns, ["WindowEndDate"]);
    assert_aggregates(&table.rows, &expected_asa_aggregates(&readings));
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}

/// `readings` with every `every`-th one sent a second time, a few readings later.
fn with_duplicates(readings: &[Reading], every: usize) -> Vec<Reading> {
    let mut out = readings.to_vec();
    for index in (0..readings.len()).step_by(every).rev() {
        let at = (index + 3).min(out.len());
        out.insert(at, readings[index].clone());
    }
    out
}

/// Readings whose battery and signal vary by device, some devices sending rarely.
fn health_readings() -> Vec<Reading> {
    let mut readings = ordered_readings(10, 120, 8);
    // Devices 7 to 9 send one reading in four: about 7 a window, below the 10 the rule wants.
    readings.retain(|r| {
        let device: usize = r.device[7..].parse().expect("device number");
        let step: usize = r
            .event_id
            .rsplit('-')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("step");
        device < 7 || step.is_multiple_of(4)
    });
    for r in &mut readings {
        if r.device == "device-007" {
            // On the 20 s grid itself (not 700 ms after it): every 20 minutes, a reading of this
            // rarely sending (so alerting) device falls exactly on a window boundary.
            r.time_ms -= 700;
        }
        let device: f64 = r.device[7..].parse().expect("device number");
        let minutes = (r.time_ms - weir_tests::telemetry::BASE_TIME_MS) as f64 / 60_000.0;
        r.battery = ((100.0 - device * 11.0 - minutes * 0.2) * 100.0).round() / 100.0;
        r.signal = -55.0 - device * 3.3;
    }
    readings
}

/// The seed's device-health rule, folded plainly with Stream Analytics' windows `(start, end]`
/// (a reading exactly on a tenth minute ends the window before it): alerts by (DeviceId,
/// WindowStart).
fn expected_health(readings: &[Reading]) -> BTreeMap<(String, i64), Value> {
    health_fold(readings, |time| {
        (time - 1).div_euclid(TEN_MINUTES) * TEN_MINUTES
    })
}

/// The device-health rule with each reading in the window starting at `start_of(time)`.
fn health_fold(
    readings: &[Reading],
    start_of: impl Fn(i64) -> i64,
) -> BTreeMap<(String, i64), Value> {
    let mut groups: BTreeMap<(String, i64), (String, u64, f64, f64)> = BTreeMap::new();
    for r in readings {
        let start = start_of(r.time_ms);
        let group = groups
            .entry((r.device.clone(), start))
            .or_insert_with(|| (r.location.clone(), 0, 0.0, 0.0));
        group.1 += 1;
        group.2 += r.battery;
        group.3 += r.signal;
    }
    let mut alerts = BTreeMap::new();
    for ((device, start), (location, count, battery, signal)) in groups {
        let avg_battery = battery / count as f64;
        let avg_signal = signal / count as f64;
        if count < 10 || avg_battery < 20.0 || avg_signal < -80.0 {
            let severity = if avg_battery < 10.0 {
                "Critical"
            } else if count < 5 {
                "High"
            } else {
                "Medium"
            };
            alerts.insert(
                (device.clone(), start),
                json!({
                    "DeviceId": device, "Location": location, "MessageCount": count,
                    "AvgBattery": avg_battery, "AvgSignal": avg_signal,
                    "AlertType": "DeviceHealth", "Severity": severity,
                    "WindowStart": timestamp(start), "WindowEnd": timestamp(start + TEN_MINUTES),
                }),
            );
        }
    }
    alerts
}

#[test]
fn device_health_alerts_equal_a_plain_fold_over_the_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let readings = health_readings();
    let on_boundaries = readings
        .iter()
        .filter(|r| r.time_ms % TEN_MINUTES == 0)
        .count();
    assert!(
        on_boundaries >= 3,
        "readings on window boundaries: {on_boundaries}"
    );
    // The bounds matter for these readings: Weir's [start, end) would give other alerts.
    assert_ne!(
        expected_health(&readings),
        health_fold(&readings, |time| time.div_euclid(TEN_MINUTES) * TEN_MINUTES)
    );
    let input = dir.path().join("telemetry.jsonl");
    write_input(
        &input,
        &with_duplicates(&shuffle_within(&readings, 2000, 5), 50),
        &[],
    );
    let config = adapt_example(
        "telemetry.toml",
        dir.path(),
        &Adapt {
            pipelines: &["health"],
            input: &input,
            partitions: 3,
            key_field: "DeviceId",
            checkpoint_interval: "500ms",
            batch_max_events: 256,
        },
    );
    run_to_completion(&config, Duration::from_secs(180));
    let expected = expected_health(&readings);
    let severities: Vec<&str> = expected
        .values()
        .map(|a| a["Severity"].as_str().expect("severity"))
        .collect();
    for severity in ["Critical", "Medium"] {
        assert!(
            severities.contains(&severity),
            "the input raises {severity} alerts"
        );
    }
    let alerts = read_jsonl_dir(&dir.path().join("health_alerts"));
    assert_eq!(alerts.len(), expected.len(), "{alerts:#?}");
    for alert in &alerts {
        let device = alert["DeviceId"].as_str().expect("DeviceId").to_owned();
        let start =
            chrono::DateTime::parse_from_rfc3339(alert["WindowStart"].as_str().expect("start"))
                .expect("rfc 3339")
                .timestamp_millis();
        let want = expected
            .get(&(device, start))
            .unwrap_or_else(|| panic!("unexpected alert {alert}"));
        let fields = want.as_object().expect("object");
        assert_eq!(
            alert.as_object().map(|o| o.len()),
            Some(fields.len()),
            "{alert}"
        );
        for (field, value) in fields {
            assert!(close(&alert[field], value), "{field}: {alert} vs {want}");
        }
    }
}

#[test]
fn killed_with_open_windows_and_restarted_gives_the_same_aggregates() {
    // Large enough that three kills land before the input ends, even when the stream runs fast.
    let readings = ordered_readings(60, 3000, 33);
    let shuffled = with_duplicates(&shuffle_within(&readings, 3000, 6), 97);
    let reference = tempfile::tempdir().expect("temp dir");
    let input = reference.path().join("telemetry.jsonl");
    write_input(&input, &shuffled, &[]);
    let config = aggregates_pipeline(reference.path(), &input, "150ms");
    run_to_completion(&config, Duration::from_secs(300));
    let reference_rows = read_delta(&reference.path().join("aggregated_metrics")).rows;

    let crashed = tempfile::tempdir().expect("temp dir");
    let config = aggregates_pipeline(crashed.path(), &input, "150ms");
    let mut kills = 0;
    for (round, delay) in [300u64, 250, 350, 250].into_iter().enumerate() {
        let mut process = WeirProcess::run(&config);
        process.wait_for_start(round + 1, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(delay));
        if process.is_running() {
            process.kill9();
            kills += 1;
        } else {
            break;
        }
    }
    let log = run_to_completion(&config, Duration::from_secs(300));
    assert!(
        kills >= 3,
        "killed only {kills} times: the input is too small"
    );
    let full_log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(full_log.contains("resuming from checkpoint"), "{log}");
    let rows = read_delta(&crashed.path().join("aggregated_metrics")).rows;
    let canonical = |rows: &[Value]| {
        let mut all: Vec<String> = rows.iter().map(Value::to_string).collect();
        all.sort();
        all
    };
    let (got, want) = (canonical(&rows), canonical(&reference_rows));
    let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).collect();
    let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).collect();
    assert!(
        extra.is_empty() && missing.is_empty() && got.len() == want.len(),
        "after {kills} kills, {} rows against {}:\nnot in the uninterrupted run: {extra:#?}\nmissing: {missing:#?}",
        got.len(),
        want.len()
    );
    assert_aggregates(&rows, &expected_asa_aggregates(&readings));
}
