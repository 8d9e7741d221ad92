//! Event time end to end, through the `weir` binary and the anomaly plugin: the reorder buffer
//! makes the rule's `LAG(...) LIMIT DURATION(minute, 5)` exact in event time (shuffled input within
//! the out-of-order tolerance raises the alerts of ordered input), and events beyond a tolerance
//! are adjusted or dropped, counted, and dropped ones land in the dead letters as `late`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir_tests::examples::{Adapt, adapt_example};
use weir_tests::telemetry::{
    BASE_TIME_MS, PipelineOptions, Reading, anomaly_pipeline, assert_alerts_match, expected_alerts,
    ordered_readings, shuffle_within, timestamp, write_input,
};
use weir_tests::{read_delta, read_jsonl_dir, run_to_completion};

fn multiset(values: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in values {
        *counts.entry(value.to_string()).or_default() += 1;
    }
    counts
}

/// Runs the anomaly pipeline on `readings` (plus raw `extra` lines) and returns its alerts, dead
/// letters and log.
fn run(
    dir: &Path,
    readings: &[Reading],
    extra: &[&str],
    options: &PipelineOptions,
) -> (Vec<Value>, Vec<Value>, String) {
    std::fs::create_dir_all(dir).expect("dir");
    let input = dir.join("telemetry.jsonl");
    write_input(&input, readings, extra);
    if options.source_extra.contains("EnqueuedTime") {
        // Replay recorded arrival times: each reading was enqueued 2 s after it was taken.
        let text: String = readings
            .iter()
            .map(|r| {
                let mut value: Value = serde_json::from_str(&r.to_json()).expect("json");
                value["EnqueuedTime"] = Value::from(timestamp(r.time_ms + 2000));
                format!("{value}\n")
            })
            .chain(extra.iter().map(|line| format!("{line}\n")))
            .collect();
        std::fs::write(&input, text).expect("write input");
    }
    let paths = anomaly_pipeline(dir, &input, options);
    let log = run_to_completion(&paths.config, Duration::from_secs(180));
    (
        read_jsonl_dir(&paths.alerts),
        read_jsonl_dir(&paths.dead_letters),
        log,
    )
}

#[test]
fn out_of_order_input_within_the_tolerance_gives_the_alerts_of_ordered_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ordered = ordered_readings(12, 150, 5);
    // Up to 50 s of disorder: a device's readings (20 s apart) often swap places.
    let shuffled = shuffle_within(&ordered, 50_000, 9);
    assert_ne!(ordered, shuffled);
    let with_ordering = PipelineOptions {
        partitions: 3,
        event_time:
            r#"{ field = "Timestamp", out_of_order = { tolerance = "1m", policy = "drop" } }"#
                .to_owned(),
        ..PipelineOptions::default()
    };

    let (ordered_alerts, ordered_letters, _) =
        run(&dir.path().join("ordered"), &ordered, &[], &with_ordering);
    let (shuffled_alerts, shuffled_letters, _) =
        run(&dir.path().join("shuffled"), &shuffled, &[], &with_ordering);
    assert!(ordered_letters.is_empty() && shuffled_letters.is_empty());
    assert_alerts_match(&ordered_alerts, &expected_alerts(&ordered));
    assert_eq!(multiset(&shuffled_alerts), multiset(&ordered_alerts));

    // The same shuffled input without event ordering: the rule sees readings out of order and
    // its alerts differ, which is what the reorder buffer is for.
    let (unordered_alerts, _, _) = run(
        &dir.path().join("unordered"),
        &shuffled,
        &[],
        &PipelineOptions {
            partitions: 3,
            ..PipelineOptions::default()
        },
    );
    assert_ne!(multiset(&unordered_alerts), multiset(&ordered_alerts));
}

/// The `telemetry` pipeline of `examples/telemetry.toml` as shipped (5 s out-of-order tolerance,
/// `adjust`, idle timeout): readings shuffled within 4 s raise exactly the alerts a plain fold over
/// the ordered readings derives, and every reading lands once in the `raw_telemetry` Delta table.
#[test]
fn the_example_anomaly_pipeline_on_shuffled_input_raises_the_alerts_of_ordered_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ordered = ordered_readings(16, 120, 21);
    let shuffled = shuffle_within(&ordered, 4_000, 4);
    assert_ne!(ordered, shuffled);
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &shuffled, &[]);
    let config = adapt_example(
        "telemetry.toml",
        dir.path(),
        &Adapt {
            pipelines: &["telemetry"],
            input: &input,
            partitions: 4,
            key_field: "DeviceId",
            checkpoint_interval: "200ms",
            batch_max_events: 64,
        },
    );
    run_to_completion(&config, Duration::from_secs(180));
    assert_alerts_match(
        &read_jsonl_dir(&dir.path().join("alerts")),
        &expected_alerts(&ordered),
    );
    let letters = read_jsonl_dir(&dir.path().join("dead_letters"));
    assert!(letters.is_empty(), "{letters:?}");
    let rows = read_delta(&dir.path().join("raw_telemetry")).rows;
    let mut written: Vec<&str> = rows
        .iter()
        .map(|row| row["EventId"].as_str().expect("EventId"))
        .collect();
    written.sort_unstable();
    let mut read: Vec<&str> = ordered.iter().map(|r| r.event_id.as_str()).collect();
    read.sort_unstable();
    assert_eq!(written, read, "every reading once in raw_telemetry");
}

#[test]
fn events_beyond_a_tolerance_are_adjusted_or_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let readings = ordered_readings(4, 60, 3);
    // Three readings far behind the others (15 minutes into a 20-minute input, 12 minutes behind
    // the watermark by the end), each of a device of its own and too hot: Critical when processed.
    let late: Vec<Reading> = (0..3)
        .map(|i| {
            Reading::new(
                &format!("late-{i}"),
                BASE_TIME_MS + 8 * 60_000 + i * 1000,
                95.0,
                &format!("late-{i}"),
            )
        })
        .collect();
    let mut input = readings.clone();
    input.extend(late.iter().cloned());
    // And one enqueued 10 minutes after its event time (the file replays recorded arrival times).
    let late_arrival = format!(
        r#"{{"DeviceId":"slow-1","Location":"X","Temperature":21.0,"Timestamp":"{}","EventId":"slow-1","EnqueuedTime":"{}"}}"#,
        timestamp(BASE_TIME_MS + 19 * 60_000),
        timestamp(BASE_TIME_MS + 29 * 60_000)
    );
    let options = |policy: &str| PipelineOptions {
        partitions: 1,
        event_time: format!(
            r#"{{ field = "Timestamp", out_of_order = {{ tolerance = "30s", policy = "{policy}" }}, late_arrival = {{ tolerance = "5m", policy = "{policy}" }} }}"#
        ),
        source_extra: r#"enqueued_time_field = "EnqueuedTime""#.to_owned(),
        ..PipelineOptions::default()
    };

    // Drop: the late readings and the late arrival go to the dead letters as `late`.
    let (alerts, letters, log) = run(
        &dir.path().join("drop"),
        &input,
        &[&late_arrival],
        &options("drop"),
    );
    assert_alerts_match(&alerts, &expected_alerts(&readings));
    assert_eq!(letters.len(), 4, "{letters:#?}");
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l["kind"], "late", "{l}");
            let body: Value =
                serde_json::from_str(l["body"].as_str().expect("body")).expect("json");
            (
                body["EventId"].as_str().expect("id").to_owned(),
                l["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    reasons.sort();
    for (id, reason) in &reasons[..3] {
        assert!(id.starts_with("late-"), "{id}");
        assert!(reason.starts_with("out of order"), "{reason}");
    }
    assert_eq!(reasons[3].0, "slow-1");
    assert!(reasons[3].1.starts_with("late arrival"), "{}", reasons[3].1);
    assert!(
        log.contains("0 late events adjusted, 4 dropped"),
        "the summary counts them:\n{log}"
    );

    // Adjust: the late readings are processed (at the watermark), so each raises its alert; the
    // late arrival is processed too (it is normal, so it raises none).
    let (alerts, letters, log) = run(
        &dir.path().join("adjust"),
        &input,
        &[&late_arrival],
        &options("adjust"),
    );
    assert!(letters.is_empty(), "{letters:#?}");
    assert_alerts_match(&alerts, &expected_alerts(&input));
    assert!(
        log.contains("4 late events adjusted, 0 dropped"),
        "the summary counts them:\n{log}"
    );
}
