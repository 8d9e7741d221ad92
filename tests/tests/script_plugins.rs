//! Plugins written in Python and JavaScript (issue 17), through the `weir` binary: the anomaly
//! rule in both languages gives exactly the Rust plugin's alerts on the same input, and the
//! device-health window aggregate in Python gives exactly the Rust one's alerts. The three
//! languages run side by side in one process, one pipeline each, reading the same file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir::plugin::PluginKind;
use weir_tests::script_plugins::{plugin_store, script_plugin};
use weir_tests::telemetry::{
    assert_alerts_match, expected_alerts, generated_readings, hand_checked_scenario,
    ordered_readings, write_input,
};
use weir_tests::{close, plugin_path, read_jsonl_dir, run_to_completion};

/// A file source, and per (pipeline name, plugin, stage extra) a pipeline with its own sinks
/// `<name>_alerts` and `<name>_rows`.
fn config(dir: &Path, input: &Path, pipelines: &[(&str, &Path, &str)]) -> std::path::PathBuf {
    let mut text = format!(
        r#"
[checkpoint]
dir = "{dir}/checkpoints"
interval = "300ms"

[plugins]
store_dir = "{store}"

[sources.telemetry]
kind = "file"
path = "{input}"
partitions = 2
key_field = "DeviceId"

[sinks.dead_letters]
kind = "file"
path = "{dir}/dead_letters"
"#,
        dir = dir.display(),
        store = plugin_store(dir).display(),
        input = input.display(),
    );
    for (name, plugin, extra) in pipelines {
        text.push_str(&format!(
            r#"
[sinks.{name}_alerts]
kind = "file"
path = "{dir}/{name}_alerts"

[sinks.{name}_rows]
kind = "file"
path = "{dir}/{name}_rows"

[pipelines.{name}]
source = "telemetry"
event_time = {{ field = "Timestamp" }}
dead_letter = "dead_letters"
batch = {{ max_events = 256, max_wait = "20ms" }}

[[pipelines.{name}.stages]]
name = "rule"
plugin = "{plugin}"
{extra}
"#,
            dir = dir.display(),
            plugin = plugin.display(),
        ));
    }
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).expect("config");
    path
}

const ANOMALY_OUTPUTS: &str = r#"outputs = { alerts = "PIPELINE_alerts", rows = "PIPELINE_rows" }"#;

/// Alerts by the key `key` gives each; panics on a key seen twice.
fn by_key(alerts: Vec<Value>, key: impl Fn(&Value) -> String) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for alert in alerts {
        let id = key(&alert);
        assert!(
            out.insert(id.clone(), alert).is_none(),
            "two alerts for {id}"
        );
    }
    out
}

/// `actual` has exactly the alerts of `reference`, field by field (floats within 1e-9).
fn assert_same_alerts(
    language: &str,
    actual: &BTreeMap<String, Value>,
    reference: &BTreeMap<String, Value>,
) {
    let left: Vec<&String> = actual.keys().collect();
    let right: Vec<&String> = reference.keys().collect();
    assert_eq!(left, right, "{language}: the alerts of the Rust plugin");
    for (id, want) in reference {
        let got = &actual[id];
        let fields = want.as_object().expect("alert object");
        assert_eq!(
            got.as_object().map(|o| o.len()),
            Some(fields.len()),
            "{got} vs {want}"
        );
        for (field, value) in fields {
            assert!(
                close(&got[field], value),
                "{language} {id}: {field} is {} but Rust says {value}",
                got[field]
            );
        }
    }
}

#[test]
fn the_anomaly_rule_in_python_and_javascript_gives_exactly_the_rust_plugins_alerts() {
    let python = script_plugin("plugins/python/telemetry-anomaly", PluginKind::Transform);
    let javascript = script_plugin("plugins/js/telemetry-anomaly", PluginKind::Transform);
    let rust = plugin_path("telemetry_anomaly");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut readings, _) = hand_checked_scenario();
    readings.extend(generated_readings(40, 60, 17));
    let input = dir.path().join("telemetry.jsonl");
    write_input(
        &input,
        &readings,
        &[
            r#"{"DeviceId":"d-bad","Temperature":"hot","Timestamp":"2026-11-01T00:00:00.000Z","EventId":"bad"}"#,
        ],
    );
    let outputs = |name: &str| ANOMALY_OUTPUTS.replace("PIPELINE", name);
    let (rust_out, python_out, js_out) = (outputs("rust"), outputs("python"), outputs("js"));
    let config = config(
        dir.path(),
        &input,
        &[
            ("rust", &rust, &rust_out),
            ("python", &python, &python_out),
            ("js", &javascript, &js_out),
        ],
    );

    run_to_completion(&config, Duration::from_secs(600));

    let read = |name: &str| {
        by_key(
            read_jsonl_dir(&dir.path().join(format!("{name}_alerts"))),
            |a| a["EventId"].as_str().expect("EventId").to_owned(),
        )
    };
    let reference = read("rust");
    assert!(
        reference.len() > 100,
        "the input raises alerts: {}",
        reference.len()
    );
    assert_alerts_match(
        &reference.values().cloned().collect::<Vec<_>>(),
        &expected_alerts(&readings),
    );
    assert_same_alerts("Python", &read("python"), &reference);
    assert_same_alerts("JavaScript", &read("js"), &reference);
    for name in ["rust", "python", "js"] {
        let rows = read_jsonl_dir(&dir.path().join(format!("{name}_rows")));
        assert_eq!(
            rows.len(),
            readings.len(),
            "{name}: every valid reading forwarded"
        );
    }
    // The malformed reading is rejected by each, with its reason.
    let letters = read_jsonl_dir(&dir.path().join("dead_letters"));
    for name in ["rust", "python", "js"] {
        let mine: Vec<&Value> = letters.iter().filter(|l| l["pipeline"] == name).collect();
        assert_eq!(mine.len(), 1, "{name}: {letters:#?}");
        assert_eq!(mine[0]["kind"], "rejected", "{name}: {}", mine[0]);
    }
}

#[test]
fn device_health_in_python_gives_exactly_the_rust_window_aggregates_alerts() {
    let python = script_plugin("plugins/python/device-health", PluginKind::WindowAggregate);
    let rust = plugin_path("device_health");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut readings = ordered_readings(10, 150, 8);
    // Devices 7 to 9 send one reading in four (too few a window); battery and signal vary.
    readings.retain(|r| {
        let device: usize = r.device[7..].parse().expect("device number");
        let step: usize = r
            .event_id
            .rsplit('-')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        device < 7 || step.is_multiple_of(4)
    });
    for (index, reading) in readings.iter_mut().enumerate() {
        let device: f64 = reading.device[7..].parse().expect("device number");
        reading.battery = (95.0 - device * 10.0 - (index % 7) as f64).max(1.0);
        reading.signal = -55.0 - device * 3.5 - (index % 5) as f64;
    }
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let window = |name: &str| {
        format!(
            r#"window = {{ type = "tumbling", size = "10m", group_by = ["DeviceId", "Location"] }}
outputs = {{ alerts = "{name}_alerts" }}
config = {{ min_messages = 10, min_battery = 20.0, min_signal = -80.0 }}"#
        )
    };
    let (rust_window, python_window) = (window("rust"), window("python"));
    let config = config(
        dir.path(),
        &input,
        &[
            ("rust", &rust, &rust_window),
            ("python", &python, &python_window),
        ],
    );

    run_to_completion(&config, Duration::from_secs(600));

    let read = |name: &str| {
        by_key(
            read_jsonl_dir(&dir.path().join(format!("{name}_alerts"))),
            |a| format!("{} {}", a["DeviceId"], a["WindowStart"]),
        )
    };
    let reference = read("rust");
    let severities: Vec<&Value> = reference.values().map(|a| &a["Severity"]).collect();
    for severity in ["Critical", "Medium"] {
        assert!(
            severities.iter().any(|s| *s == severity),
            "the input raises {severity}: {severities:?}"
        );
    }
    assert_same_alerts("Python", &read("python"), &reference);
}
