//! Stream Analytics' window semantics through `weir run`: the telemetry example's 5-minute
//! aggregates on simulator-like readings, some devices reading on whole 10-second boundaries
//! (every fifth-minute reading lands on a window boundary) and some 3 s after them. Under
//! `semantics = "stream_analytics"` the rows equal a plain fold with ASA's `(start, end]` bounds;
//! under `weir` they equal the fold with `[start, end)`; and the two runs differ exactly for the
//! devices with readings on the boundaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use weir_tests::examples::{Adapt, adapt_example};
use weir_tests::telemetry::{
    BASE_TIME_MS, FIVE_MINUTES, Reading, assert_aggregate_rows, expected_aggregates,
    expected_asa_aggregates, write_input,
};
use weir_tests::{read_delta, run_to_completion};

const DEVICES: usize = 6;

/// Every device reads every 10 s for 40 minutes; even devices on whole 10-second boundaries,
/// odd ones 3 s after. Temperatures vary by reading so that moving one changes the window's
/// numbers.
fn readings() -> Vec<Reading> {
    let mut readings = Vec::new();
    for step in 0..240i64 {
        for device in 0..DEVICES {
            let shift = if device % 2 == 0 { 0 } else { 3_000 };
            let time = BASE_TIME_MS + step * 10_000 + shift;
            let temperature = 20.0 + device as f64 + ((step * 7 + device as i64) % 23) as f64 * 0.5;
            readings.push(Reading::new(
                &format!("device-{device:03}"),
                time,
                temperature,
                &format!("asa-{step}-{device}"),
            ));
        }
    }
    readings
}

/// The example's aggregates pipeline on `input`, its window under `semantics` (`"keep"`: as the
/// example has it; `None`: without the setting, the default).
fn pipeline(dir: &Path, input: &Path, semantics: Option<&str>) -> PathBuf {
    let config = adapt_example(
        "telemetry.toml",
        dir,
        &Adapt {
            pipelines: &["aggregates"],
            input,
            partitions: 2,
            key_field: "DeviceId",
            checkpoint_interval: "500ms",
            batch_max_events: 64,
        },
    );
    let text = std::fs::read_to_string(&config).expect("read config");
    let mut table: toml::Table = text.parse().expect("config is TOML");
    let stages = table
        .get_mut("pipelines")
        .and_then(|p| p.get_mut("aggregates"))
        .and_then(|p| p.get_mut("stages"))
        .and_then(toml::Value::as_array_mut)
        .expect("the aggregates stages");
    let window = stages
        .iter_mut()
        .find_map(|stage| stage.get_mut("window"))
        .and_then(toml::Value::as_table_mut)
        .expect("a window stage");
    match semantics {
        Some("keep") => {}
        Some(semantics) => {
            window.insert("semantics".to_owned(), toml::Value::from(semantics));
        }
        None => {
            window.remove("semantics");
        }
    }
    std::fs::write(&config, toml::to_string(&table).expect("TOML")).expect("write config");
    config
}

fn run(semantics: Option<&str>, readings: &[Reading]) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, readings, &[]);
    let config = pipeline(dir.path(), &input, semantics);
    run_to_completion(&config, Duration::from_secs(180));
    read_delta(&dir.path().join("aggregated_metrics")).rows
}

/// The rows by (DeviceId, WindowStart).
fn by_window(rows: &[Value]) -> BTreeMap<(String, String), String> {
    rows.iter()
        .map(|row| {
            let device = row["DeviceId"].as_str().expect("DeviceId").to_owned();
            let start = row["WindowStart"].as_str().expect("WindowStart").to_owned();
            ((device, start), row.to_string())
        })
        .collect()
}

#[test]
fn stream_analytics_tumbling_windows_end_at_boundary_readings() {
    let readings = readings();
    let on_boundary = readings
        .iter()
        .filter(|r| r.time_ms % FIVE_MINUTES == 0)
        .count();
    assert_eq!(
        on_boundary,
        (DEVICES / 2) * 8,
        "every fifth minute, even devices"
    );

    let asa = run(Some("stream_analytics"), &readings);
    let weir = run(Some("weir"), &readings);
    let asa_expected = expected_asa_aggregates(&readings);
    let weir_expected = expected_aggregates(&readings);
    assert_aggregate_rows(&asa, &asa_expected);
    assert_aggregate_rows(&weir, &weir_expected);
    // The folds differ exactly at the boundary readings: the ASA fold is Weir's fold of the
    // readings with those moved 1 ms earlier.
    let moved: Vec<Reading> = readings
        .iter()
        .cloned()
        .map(|mut r| {
            if r.time_ms % FIVE_MINUTES == 0 {
                r.time_ms -= 1;
            }
            r
        })
        .collect();
    assert_aggregate_rows(&asa, &expected_aggregates(&moved));

    // Odd devices (no reading on a boundary) get the same rows; even devices' rows all differ.
    let (asa, weir) = (by_window(&asa), by_window(&weir));
    let mut differing = 0;
    for (window, row) in &asa {
        let even = window.0.ends_with(['0', '2', '4', '6', '8']);
        match weir.get(window) {
            Some(other) if other == row => {
                assert!(!even, "a window of a device on the boundaries: {row}");
            }
            _ => {
                assert!(
                    even,
                    "a device off the boundaries differs: {row} vs {:?}",
                    weir.get(window)
                );
                differing += 1;
            }
        }
    }
    // Even devices: 8 windows under Weir ((0, 5m] ... [35m, 40m)), 9 under ASA (the first
    // reading, at 0, ends the window (-5m, 0]).
    assert_eq!(differing, (DEVICES / 2) * 9);
    assert_eq!(weir.len(), DEVICES * 8);
    assert_eq!(asa.len(), DEVICES * 8 + DEVICES / 2);
}

#[test]
fn the_example_aggregates_follow_stream_analytics_and_the_default_is_weir() {
    let readings: Vec<Reading> = readings()
        .into_iter()
        .filter(|r| r.device.ends_with('0'))
        .collect();
    let rows = run(Some("keep"), &readings);
    assert_aggregate_rows(&rows, &expected_asa_aggregates(&readings));
    let rows = run(None, &readings);
    assert_aggregate_rows(&rows, &expected_aggregates(&readings));
}
