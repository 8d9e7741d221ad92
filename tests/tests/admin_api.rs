//! The host as a service (issue 4, evidence 4): the admin API refuses changes without the token or
//! with a wrong one and nothing changes; `/metrics` parses with the Prometheus client's own parser
//! and holds the issue's metrics; a graceful stop (SIGTERM) writes a final checkpoint and the next
//! start resumes from it without replaying anything; health alerts reach their sink.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use weir_tests::service::{
    Family, Feeder, SwapOptions, TOKEN, events_in, get_json, http, parse_prometheus, swap_pipeline,
    version_of, wait_until,
};
use weir_tests::telemetry::{BASE_TIME_MS, Reading, generated_readings, ordered_readings};
use weir_tests::{WeirProcess, plugin_path, read_delta, read_jsonl_dir};

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn changes_without_the_right_token_are_refused_and_change_nothing_and_metrics_parse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let v1_path = plugin_path("telemetry_anomaly");
    // Events more than 30 s behind their partition's newest are adjusted.
    let options = SwapOptions {
        event_time: r#"{ field = "Timestamp", out_of_order = { tolerance = "30s", policy = "adjust" } }"#,
        ..SwapOptions::default()
    };
    let paths = swap_pipeline(dir.path(), &v1_path, &options);
    // In event-time order, but for three readings of known devices from before their first (each
    // device reads every 20 s for 25 steps, so its partition has seen 8 minutes past these):
    // those are adjusted, wherever their device's partition is.
    let mut readings = ordered_readings(20, 25, 3);
    let late: Vec<Reading> = (0..3)
        .map(|device| {
            Reading::new(
                &format!("device-{device:03}"),
                BASE_TIME_MS - 60_000,
                21.0,
                &format!("late-{device}"),
            )
        })
        .collect();
    readings.extend(late.iter().cloned());
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    let feeder = Feeder::start(
        &paths.input,
        readings.clone(),
        100,
        Duration::from_millis(5),
    );
    let total = feeder.join() as u64;
    wait_until(WAIT, "every event processed", || {
        events_in(&admin, "telemetry") == total
    });
    wait_until(WAIT, "every partition checkpointed and caught up", || {
        let pipelines = get_json(&admin, "/pipelines");
        let partitions = pipelines["pipelines"][0]["partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        partitions.len() == 4
            && partitions.iter().all(|p| {
                p["checkpointed"] == p["position"] && !p["position"].is_null() && p["lag"] == 0
            })
    });
    assert_eq!(http(&admin, "GET", "/healthz", None, b"").0, 200);
    assert_eq!(http(&admin, "GET", "/readyz", None, b"").0, 200);

    let before = get_json(&admin, "/plugins");
    let plugin_before = std::fs::read(&paths.plugin).expect("plugin");
    let v2 = std::fs::read(plugin_path("anomaly_v2")).expect("v2");
    let attempts: [(&str, &str, Option<&str>, &[u8]); 6] = [
        ("POST", "/plugins/telemetry/anomaly", None, &v2),
        (
            "POST",
            "/plugins/telemetry/anomaly",
            Some("wrong-token"),
            &v2,
        ),
        ("POST", "/plugins/telemetry/anomaly", Some(""), &v2),
        ("POST", "/plugins/telemetry/anomaly/rollback", None, b"{}"),
        (
            "POST",
            "/plugins/telemetry/anomaly/rollback",
            Some("test-token-7f3"),
            b"{}",
        ),
        (
            "POST",
            "/plugins/telemetry/anomaly/rollback",
            Some("test-token-7f3a-and-more"),
            b"{}",
        ),
    ];
    for (method, path, token, body) in attempts {
        let (status, text) = http(&admin, method, path, token, body);
        assert_eq!(status, 401, "{method} {path} with {token:?}: {text}");
        assert!(text.contains("token"), "the refusal says why: {text}");
    }
    // An invalid component with the right token: refused with the reason, nothing changes.
    let (status, text) = http(
        &admin,
        "POST",
        "/plugins/telemetry/anomaly",
        Some(TOKEN),
        b"not a component",
    );
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("not a valid WebAssembly component"), "{text}");
    let after = get_json(&admin, "/plugins");
    assert_eq!(before, after, "refused changes change nothing");
    assert_eq!(std::fs::read(&paths.plugin).expect("plugin"), plugin_before);
    let stored: Vec<String> = std::fs::read_dir(dir.path().join("data/plugins/versions"))
        .expect("version store")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stored, [format!("{}.wasm", version_of(&v1_path))]);

    // /metrics through a real Prometheus text parser.
    let (status, text) = http(&admin, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    let families = parse_prometheus(&text);
    let by_name: BTreeMap<&str, &Family> = families.iter().map(|f| (f.0.as_str(), f)).collect();
    // prometheus_client names counter families without their `_total`.
    for (name, kind) in [
        ("weir_events_in", "counter"),
        ("weir_records_out", "counter"),
        ("weir_stage_events_in", "counter"),
        ("weir_stage_records_out", "counter"),
        ("weir_plugin_call_seconds", "histogram"),
        ("weir_plugin_traps", "counter"),
        ("weir_dead_letters", "counter"),
        ("weir_late_events", "counter"),
        ("weir_adjusted_events", "counter"),
        ("weir_watermark_delay_seconds", "gauge"),
        ("weir_checkpoint_age_seconds", "gauge"),
        ("weir_consumer_lag", "gauge"),
        ("weir_plugin_active", "gauge"),
    ] {
        let family = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{text}"));
        assert_eq!(family.1, kind, "{name}");
    }
    // Counters whose label values are known at start are there from the start, at 0.
    let sample = |family: &str, sample: &str, labels: &[(&str, &str)]| -> Option<f64> {
        by_name.get(family).and_then(|f| {
            f.2.iter()
                .find(|s| s.0 == sample && labels.iter().all(|(k, v)| s.1[*k] == *v))
                .map(|s| s.2)
        })
    };
    let stage = [("pipeline", "telemetry"), ("stage", "anomaly")];
    assert_eq!(
        sample(
            "weir_plugin_rollbacks",
            "weir_plugin_rollbacks_total",
            &stage
        ),
        Some(0.0),
        "{text}"
    );
    // None refused from a file; one upload (the invalid one above).
    for (origin, refused) in [("file", 0.0), ("api", 1.0)] {
        assert_eq!(
            sample(
                "weir_plugin_refused",
                "weir_plugin_refused_total",
                &[stage[0], stage[1], ("origin", origin)]
            ),
            Some(refused),
            "{origin}: {text}"
        );
    }
    assert_eq!(
        sample(
            "weir_dead_letters",
            "weir_dead_letters_total",
            &[("pipeline", "telemetry"), ("kind", "unrouted")]
        ),
        Some(0.0),
        "{text}"
    );
    let events: f64 = by_name["weir_events_in"]
        .2
        .iter()
        .filter(|s| s.0 == "weir_events_in_total")
        .map(|s| s.2)
        .sum();
    assert_eq!(
        events as u64, total,
        "events in per source and partition add up"
    );
    let sources: BTreeSet<&str> = by_name["weir_events_in"]
        .2
        .iter()
        .filter_map(|s| s.1["source"].as_str())
        .collect();
    assert_eq!(sources, BTreeSet::from(["telemetry"]));
    let calls = by_name["weir_plugin_call_seconds"]
        .2
        .iter()
        .find(|s| s.0 == "weir_plugin_call_seconds_count")
        .expect("histogram count");
    assert!(calls.2 >= 1.0 && calls.1["stage"] == "anomaly");
    assert!(
        by_name["weir_checkpoint_age_seconds"].2.len() == 4,
        "a checkpoint age per partition"
    );
    let adjusted: f64 = by_name["weir_adjusted_events"]
        .2
        .iter()
        .filter(|s| s.0 == "weir_adjusted_events_total")
        .map(|s| s.2)
        .sum();
    assert_eq!(
        adjusted as usize,
        late.len(),
        "the late readings were adjusted"
    );
    let late_adjusted: f64 = by_name["weir_late_events"]
        .2
        .iter()
        .filter(|s| s.1["policy"] == "adjust")
        .map(|s| s.2)
        .sum();
    assert_eq!(late_adjusted, adjusted, "both families count them");
    // The file source knows its end: a lag per partition, nothing left once all is read.
    let lags = &by_name["weir_consumer_lag"].2;
    assert_eq!(lags.len(), 4, "a consumer lag per partition: {lags:?}");
    assert!(lags.iter().all(|s| s.2 == 0.0), "{lags:?}");
    let active = &by_name["weir_plugin_active"].2;
    assert!(
        active
            .iter()
            .any(|s| s.1["version"] == version_of(&v1_path).as_str() && s.2 == 1.0)
    );

    process.terminate();
    assert!(process.wait(WAIT).success());
}

/// Reads `pipeline `telemetry`: N events in` from the summary a run prints when it ends.
fn summary_events(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.strip_prefix("pipeline `telemetry`: "))
        .filter_map(|l| l.split(" events in").next())
        .filter_map(|n| n.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no summary in:\n{log}"))
}

#[test]
fn a_graceful_stop_writes_a_final_checkpoint_and_the_next_start_resumes_without_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Checkpoints every hour: only the final checkpoint of the stop can make the restart resume.
    let options = SwapOptions {
        checkpoint_interval: "1h",
        ..SwapOptions::default()
    };
    let paths = swap_pipeline(dir.path(), &plugin_path("telemetry_anomaly"), &options);
    // More than the test needs however slow the machine (100 s of feed): it must still flow when
    // the process is stopped.
    let pool = generated_readings(40, 5000, 8);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    let feeder = Feeder::start(&paths.input, pool, 40, Duration::from_millis(20));
    wait_until(WAIT, "a first part processed", || {
        events_in(&admin, "telemetry") >= 800
    });
    // Stop while the stream flows.
    process.terminate();
    let status = process.wait(WAIT);
    let log_path = paths.config.with_extension("log");
    let first_log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "exit 0 on SIGTERM: {first_log}");
    assert!(first_log.contains("stop requested"), "{first_log}");
    let first = summary_events(&first_log);
    // The stream went on while the first run stopped; it ends before the restart.
    let total = feeder.stop() as u64;
    assert!(first < total, "stopped mid-stream ({first} of {total})");

    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(first_log.len(), WAIT);
    wait_until(WAIT, "the rest processed", || {
        events_in(&admin, "telemetry") >= total - first
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        events_in(&admin, "telemetry"),
        total - first,
        "the restart read exactly what the first run had not: no replay"
    );
    process.terminate();
    assert!(process.wait(WAIT).success());
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert_eq!(summary_events(&log), total - first);
    assert!(log[first_log.len()..].contains("resuming from checkpoint"));

    let rows = read_delta(&paths.raw_table).rows;
    assert_eq!(rows.len() as u64, total);
    let ids: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["EventId"].as_str().expect("EventId"))
        .collect();
    assert_eq!(ids.len() as u64, total, "each event once");
}

#[test]
fn a_high_error_rate_raises_a_health_alert_in_its_sink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let paths = swap_pipeline(
        dir.path(),
        &plugin_path("telemetry_anomaly"),
        &SwapOptions::default(),
    );
    let config = std::fs::read_to_string(&paths.config).expect("config")
        + r#"
[sinks.health_alerts]
kind = "file"
path = "health"

[health]
sink = "health_alerts"
interval = "300ms"
max_error_ratio = 0.2
"#;
    std::fs::write(&paths.config, config).expect("config");
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    // Half of the events are not JSON: they go to the dead letters.
    let mut text = String::new();
    for (index, reading) in generated_readings(10, 20, 4).iter().enumerate() {
        if index % 2 == 0 {
            text.push_str("{not json\n");
        } else {
            text.push_str(&reading.to_json());
            text.push('\n');
        }
    }
    std::fs::write(&paths.input, text).expect("input");
    wait_until(WAIT, "the error-rate alert", || {
        read_jsonl_dir(&dir.path().join("health"))
            .iter()
            .any(|a| a["alert"] == "error_rate" && a["state"] == "firing")
    });
    let alerts = read_jsonl_dir(&dir.path().join("health"));
    let alert = alerts
        .iter()
        .find(|a| a["alert"] == "error_rate")
        .expect("alert");
    assert_eq!(alert["pipeline"], "telemetry");
    assert!(alert["value"].as_f64().expect("value") > 0.2, "{alert}");
    assert_eq!(alert["threshold"], 0.2);
    let (_, metrics) = http(&admin, "GET", "/metrics", None, b"");
    assert!(metrics.contains("weir_health_alerts_total{alert=\"error_rate\",state=\"firing\"} 1"));
    process.terminate();
    assert!(process.wait(WAIT).success());
}
