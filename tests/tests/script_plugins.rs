//! Plugins written in Python and JavaScript (issue 17), through the `weir` binary: the anomaly
//! rule in both languages gives exactly the Rust plugin's alerts on the same input, and the
//! device-health window aggregate in Python gives exactly the Rust one's alerts (the languages run
//! side by side in one process, one pipeline each, reading the same file); and a running stage
//! swapped from Rust to Python to JavaScript and back under load keeps its keyed state.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir::plugin::PluginKind;
use weir_tests::script_plugins::{link_compile_cache, plugin_store, script_plugin};
use weir_tests::service::{
    Feeder, SwapOptions, TOKEN, events_in, http, plugin_report, swap_pipeline, version_of,
    wait_until,
};
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
    hand_checked_scenario, ordered_readings, write_input,
};
use weir_tests::{WeirProcess, close, plugin_path, read_delta, read_jsonl_dir, run_to_completion};

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
fn device_health_in_python_and_javascript_gives_exactly_the_rust_window_aggregates_alerts() {
    let python = script_plugin("plugins/python/device-health", PluginKind::WindowAggregate);
    let javascript = script_plugin("plugins/js/device-health", PluginKind::WindowAggregate);
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
    let (rust_window, python_window, js_window) = (window("rust"), window("python"), window("js"));
    let config = config(
        dir.path(),
        &input,
        &[
            ("rust", &rust, &rust_window),
            ("python", &python, &python_window),
            ("js", &javascript, &js_window),
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
    assert_same_alerts("JavaScript", &read("js"), &reference);
}

/// Waits for `count` more events than now.
fn wait_for_more_events(admin: &str, count: u64) {
    let start = events_in(admin, "telemetry");
    wait_until(SWAP_WAIT, "more events", || {
        events_in(admin, "telemetry") >= start + count
    });
}

const SWAP_WAIT: Duration = Duration::from_secs(300);

#[test]
fn a_stage_swapped_from_rust_to_python_to_javascript_and_back_keeps_its_state_under_load() {
    let rust = plugin_path("telemetry_anomaly");
    let python = script_plugin("plugins/python/telemetry-anomaly", PluginKind::Transform);
    let javascript = script_plugin("plugins/js/telemetry-anomaly", PluginKind::Transform);
    let (v_rust, v_python, v_js) = (
        version_of(&rust),
        version_of(&python),
        version_of(&javascript),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let paths = swap_pipeline(dir.path(), &rust, &SwapOptions::default());
    link_compile_cache(&dir.path().join("data/plugins"));
    // Enough for minutes of feeding: under a loaded CI each swap compiles a large component,
    // and the stream must still flow after the last one.
    let pool = generated_readings(40, 10_000, 23);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, SWAP_WAIT);
    let feeder = Feeder::start(&paths.input, pool.clone(), 40, Duration::from_millis(25));
    wait_for_more_events(&admin, 400);

    // Rust -> Python -> JavaScript -> Rust, each by the admin API, under load.
    let order = [
        v_rust.clone(),
        v_python.clone(),
        v_js.clone(),
        v_rust.clone(),
    ];
    for (component, version) in [(&python, &v_python), (&javascript, &v_js), (&rust, &v_rust)] {
        let bytes = std::fs::read(component).expect("component");
        let (status, body) = http(
            &admin,
            "POST",
            "/plugins/telemetry/anomaly",
            Some(TOKEN),
            &bytes,
        );
        assert_eq!(status, 200, "{body}");
        let active = plugin_report(&admin, "telemetry", "anomaly")["active"].clone();
        assert_eq!(active, version.as_str(), "the upload answers once active");
        wait_for_more_events(&admin, 400);
    }
    let total = feeder.stop();
    assert!(total < pool.len(), "the stream flowed through every swap");
    let readings = &pool[..total];
    wait_until(SWAP_WAIT, "every event processed", || {
        events_in(&admin, "telemetry") == total as u64
    });
    process.terminate();
    let status = process.wait(SWAP_WAIT);
    let log = std::fs::read_to_string(paths.config.with_extension("log")).unwrap_or_default();
    assert!(status.success(), "graceful stop: {log}");

    // Every event exactly once in Delta, naming the version (the language) that processed it.
    let rows = read_delta(&paths.raw_table).rows;
    assert_each_reading_once(&rows, readings);
    let mut by_partition: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    let mut row_versions: BTreeMap<String, String> = BTreeMap::new();
    for row in &rows {
        let version = row["PluginVersion"]
            .as_str()
            .expect("PluginVersion")
            .to_owned();
        assert!(order.contains(&version), "unknown version {version}");
        by_partition
            .entry(row["Partition"].as_i64().expect("Partition"))
            .or_default()
            .push((row["Position"].as_i64().expect("Position"), version.clone()));
        row_versions.insert(
            row["EventId"].as_str().expect("EventId").to_owned(),
            version,
        );
    }
    let used: std::collections::BTreeSet<&String> = row_versions.values().collect();
    assert_eq!(
        used.len(),
        3,
        "Rust, Python and JavaScript each processed events: {used:?}"
    );
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
                    "partition {partition}: versions ran as {runs:?}, not in the order of the swaps"
                ),
            }
        }
    }

    // Exactly the rule's alerts over the whole stream: the state carried across languages (a lost
    // state would miss alerts after a swap, a misread one would add spurious ones).
    let alerts = read_delta(&paths.alerts_table).rows;
    assert_alerts_match(&alerts, &expected_alerts(readings));
    for alert in &alerts {
        let id = alert["EventId"].as_str().expect("EventId");
        assert_eq!(
            alert["PluginVersion"].as_str(),
            row_versions.get(id).map(String::as_str),
            "alert {id} comes from the version that processed its reading"
        );
    }
    assert!(
        read_jsonl_dir(&paths.dead_letters).is_empty(),
        "no dead letters"
    );
}

/// Events of the hostile runs, and the ones marked poison.
const HOSTILE_EVENTS: usize = 20;
const POISON: [usize; 2] = [7, 13];

/// Runs the hostile Python plugin `plugin` (a directory of `tests/python-plugins/`) beside a
/// healthy Rust anomaly pipeline in one process, to completion under `limits` (stage keys);
/// checks the host stayed up and the healthy pipeline is complete. Returns the hostile
/// pipeline's dead letters, its outputs, and the log.
fn hostile(plugin: &str, limits: &str) -> (Vec<Value>, Vec<Value>, String) {
    let component = script_plugin(
        &format!("tests/python-plugins/{plugin}"),
        PluginKind::Transform,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let hostile_input = dir.path().join("hostile.jsonl");
    let text: String = (0..HOSTILE_EVENTS)
        .map(|n| format!("{{\"n\":{n},\"poison\":{}}}\n", POISON.contains(&n)))
        .collect();
    std::fs::write(&hostile_input, text).expect("input");
    let readings = generated_readings(10, 40, 9);
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let rust = plugin_path("telemetry_anomaly");
    let rust_outputs = ANOMALY_OUTPUTS.replace("PIPELINE", "healthy");
    let path = config(dir.path(), &input, &[("healthy", &rust, &rust_outputs)]);
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(&format!(
        r#"
[sources.hostile]
kind = "file"
path = "{input}"

[sinks.hostile_out]
kind = "file"
path = "{dir}/hostile_out"

[pipelines.hostile]
source = "hostile"
dead_letter = "dead_letters"
batch = {{ max_events = 8, max_wait = "20ms" }}

[[pipelines.hostile.stages]]
name = "hostile"
plugin = "{plugin}"
outputs = {{ out = "hostile_out" }}
{limits}
"#,
        input = hostile_input.display(),
        dir = dir.path().display(),
        plugin = component.display(),
    ));
    std::fs::write(&path, text).expect("config");
    let log = run_to_completion(&path, Duration::from_secs(600));
    let healthy = read_jsonl_dir(&dir.path().join("healthy_rows"));
    assert_eq!(
        healthy.len(),
        readings.len(),
        "the healthy pipeline is complete"
    );
    assert_alerts_match(
        &read_jsonl_dir(&dir.path().join("healthy_alerts")),
        &expected_alerts(&readings),
    );
    let letters = read_jsonl_dir(&dir.path().join("dead_letters"))
        .into_iter()
        .filter(|l| l["pipeline"] == "hostile")
        .collect();
    (
        letters,
        read_jsonl_dir(&dir.path().join("hostile_out")),
        log,
    )
}

/// Only the poison events are dead letters, of `kind` with `reason`; the others went through.
fn only_poison(letters: &[Value], out: &[Value], kind: &str, reason: &str) {
    assert_eq!(letters.len(), POISON.len(), "{letters:#?}");
    for letter in letters {
        assert_eq!(letter["kind"], kind, "{letter}");
        assert!(letter["plugin_version"].is_string(), "{letter}");
        let text = letter["reason"].as_str().expect("reason");
        assert!(
            text.contains(reason),
            "reason `{text}` should say `{reason}`"
        );
        let body: Value =
            serde_json::from_str(letter["body"].as_str().expect("body")).expect("json");
        assert_eq!(body["poison"], true, "only poison events: {letter}");
    }
    assert_eq!(out.len(), HOSTILE_EVENTS - POISON.len());
    assert!(out.iter().all(|e| e["poison"] == false));
}

/// The limits the hostile runs set: a short deadline, and memory for CPython plus a little.
const PYTHON_LIMITS: &str = "call_timeout = \"500ms\"\nmax_memory_bytes = 134217728";

#[test]
fn a_python_plugin_that_loops_forever_is_interrupted_at_the_call_deadline() {
    let (letters, out, _) = hostile("hostile-loop", PYTHON_LIMITS);
    only_poison(
        &letters,
        &out,
        "trap",
        "deadline exceeded: the call ran longer than 500ms",
    );
}

#[test]
fn a_python_plugin_that_allocates_without_bound_is_stopped_at_the_memory_limit() {
    let (letters, out, log) = hostile("hostile-memory", PYTHON_LIMITS);
    only_poison(&letters, &out, "trap", "memory limit exceeded");
    assert!(log.contains("limit of 134217728 bytes"), "{log}");
}

#[test]
fn a_python_plugin_that_raises_on_a_poison_event_rejects_only_that_event() {
    let (letters, out, _) = hostile("hostile-raise", PYTHON_LIMITS);
    only_poison(
        &letters,
        &out,
        "rejected",
        "RuntimeError: hostile-raise: poison event at position",
    );
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("plugin.py:")),
        "{letters:?}"
    );
}

#[test]
fn python_and_javascript_plugins_see_the_source_of_each_event() {
    let python = script_plugin("tests/python-plugins/source-tag", PluginKind::Transform);
    let javascript = script_plugin("tests/js-plugins/source-tag", PluginKind::Transform);
    let dir = tempfile::tempdir().expect("temp dir");
    for (source, first) in [("left", 0), ("right", 100)] {
        let text: String = (first..first + 30)
            .map(|n| format!("{{\"n\":{n},\"id\":\"k{}\"}}\n", n % 3))
            .collect();
        std::fs::write(dir.path().join(format!("{source}.jsonl")), text).expect("input");
    }
    let mut text = format!(
        r#"
[checkpoint]
dir = "{dir}/checkpoints"
interval = "300ms"

[plugins]
store_dir = "{store}"

[sinks.dead_letters]
kind = "file"
path = "{dir}/dead_letters"
"#,
        dir = dir.path().display(),
        store = plugin_store(dir.path()).display(),
    );
    for source in ["left", "right"] {
        text.push_str(&format!(
            "\n[sources.{source}]\nkind = \"file\"\npath = \"{}/{source}.jsonl\"\npartitions = 1\nkey_field = \"id\"\n",
            dir.path().display()
        ));
    }
    for (name, plugin) in [("python", &python), ("js", &javascript)] {
        text.push_str(&format!(
            r#"
[sinks.{name}_out]
kind = "file"
path = "{dir}/{name}_out"

[pipelines.{name}]
sources = ["left", "right"]
dead_letter = "dead_letters"

[[pipelines.{name}.stages]]
name = "tag"
plugin = "{plugin}"
outputs = {{ out = "{name}_out" }}
"#,
            dir = dir.path().display(),
            plugin = plugin.display(),
        ));
    }
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, text).expect("config");

    run_to_completion(&config, Duration::from_secs(600));

    for name in ["python", "js"] {
        let records = read_jsonl_dir(&dir.path().join(format!("{name}_out")));
        assert_eq!(records.len(), 60, "{name}: every event of both sources");
        for record in &records {
            let n = record["n"].as_u64().expect("n");
            let want = if n < 100 { "left" } else { "right" };
            assert_eq!(record["source"], want, "{name}: {record}");
            assert_eq!(record["key"], format!("k{}", n % 3), "{name}: {record}");
        }
    }
}

#[test]
fn weir_plugin_build_of_a_python_or_javascript_plugin_without_a_manifest_points_to_its_build_command()
 {
    for dir in [
        "plugins/python/telemetry-anomaly",
        "plugins/js/telemetry-anomaly",
    ] {
        let output = std::process::Command::new(weir_tests::weir_binary())
            .args(["plugin", "build"])
            .arg(weir_tests::workspace_dir().join(dir))
            .output()
            .expect("run weir");
        assert!(!output.status.success(), "{dir}: no manifest");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains("scripts/build-plugin DIR"), "{dir}: {text}");
    }
}

#[test]
fn a_python_join_enriches_the_pairs_the_host_makes() {
    let rows = python_join_rows(10);
    let pairs: Vec<(i64, Option<i64>)> = rows.iter().map(|(l, r, _, _)| (*l, *r)).collect();
    let expected: Vec<(i64, Option<i64>)> = (0..10)
        .map(|n| (n, (n % 2 == 0).then_some(RIGHT + n)))
        .collect();
    assert_eq!(
        pairs, expected,
        "every left event, with its right one when it has one"
    );
    for (left, right, sources, _) in &rows {
        let want = if right.is_some() {
            serde_json::json!(["left", "right"])
        } else {
            serde_json::json!(["left"])
        };
        assert_eq!(sources, &want, "pair of {left}");
    }
}

/// After its first requests, a join's events reach the plugin with the fields it reads projected
/// by the host (the plugin reports how many fields an event's object held before it was read
/// whole: 1 from the projection, more when the SDK parsed the body), and the pairs are the same.
#[test]
fn a_join_gets_the_fields_its_plugin_reads_projected_by_the_host() {
    let count = 3000;
    let rows = python_join_rows(count);
    let pairs: Vec<(i64, Option<i64>)> = rows.iter().map(|(l, r, _, _)| (*l, *r)).collect();
    let expected: Vec<(i64, Option<i64>)> = (0..count)
        .map(|n| (n, (n % 2 == 0).then_some(RIGHT + n)))
        .collect();
    assert_eq!(pairs, expected, "every left event once, with its pair");
    let projected = rows.iter().filter(|(_, _, _, held)| *held == 1).count();
    assert!(
        projected * 2 > rows.len(),
        "most events projected: {projected} of {}",
        rows.len()
    );
}

/// What the right side's `n` adds to its left event's.
const RIGHT: i64 = 100_000;

/// Runs the Python join `join-pairs` under `weir run` over `count` left events (`n`, key `k{n}`,
/// a second apart) and a right event for each even one, half a second later; its rows as
/// (left, right, sources, fields the left event's object held), sorted by left.
fn python_join_rows(count: i64) -> Vec<(i64, Option<i64>, Value, u64)> {
    let python = script_plugin(
        "tests/python-plugins/join-pairs",
        PluginKind::JoinEnrichment,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let base = 1_793_491_200_000_i64;
    let left: String = (0..count)
        .map(|n| format!("{{\"n\":{n},\"id\":\"k{n}\",\"t\":{}}}\n", base + n * 1000))
        .collect();
    let right: String = (0..count)
        .filter(|n| n % 2 == 0)
        .map(|n| {
            format!(
                "{{\"n\":{},\"id\":\"k{n}\",\"t\":{}}}\n",
                RIGHT + n,
                base + n * 1000 + 500
            )
        })
        .collect();
    std::fs::write(dir.path().join("left.jsonl"), left).expect("left");
    std::fs::write(dir.path().join("right.jsonl"), right).expect("right");
    let text = format!(
        r#"
[checkpoint]
dir = "{dir}/checkpoints"
interval = "300ms"

[plugins]
store_dir = "{store}"

[sources.left]
kind = "file"
path = "{dir}/left.jsonl"
partitions = 1
key_field = "id"

[sources.right]
kind = "file"
path = "{dir}/right.jsonl"
partitions = 1
key_field = "id"

[sinks.rows]
kind = "file"
path = "{dir}/rows"

[sinks.dead_letters]
kind = "file"
path = "{dir}/dead_letters"

[pipelines.pairs]
sources = ["left", "right"]
event_time = {{ field = "t" }}
dead_letter = "dead_letters"

[[pipelines.pairs.stages]]
name = "join"
plugin = "{plugin}"
left = "left"
right = "right"
join = {{ key = "id", within = "1m", unmatched_left = "emit", unmatched_right = "drop" }}
outputs = {{ rows = "rows" }}
"#,
        dir = dir.path().display(),
        store = plugin_store(dir.path()).display(),
        plugin = python.display(),
    );
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, text).expect("config");

    run_to_completion(&config, Duration::from_secs(600));

    let mut rows: Vec<(i64, Option<i64>, Value, u64)> = read_jsonl_dir(&dir.path().join("rows"))
        .into_iter()
        .map(|r| {
            (
                r["left"].as_i64().expect("left"),
                r["right"].as_i64(),
                r["sources"].clone(),
                r["held"].as_u64().expect("held"),
            )
        })
        .collect();
    rows.sort_by_key(|(left, _, _, _)| *left);
    rows
}

/// `weir` with the toolchains of this checkout and an SDK home of its own.
fn weir_cli(home: &Path) -> std::process::Command {
    let workspace = weir_tests::workspace_dir();
    let mut command = std::process::Command::new(weir_tests::weir_binary());
    command
        .env("WEIR_HOME", home)
        .env(
            "WEIR_COMPONENTIZE_PY",
            workspace.join(".venv/bin/componentize-py"),
        )
        .env(
            "WEIR_COMPONENTIZE_JS",
            workspace.join("sdk/js/node_modules/.bin/componentize-js"),
        );
    command
}

/// Runs `command`; its exit status and its standard output and error together.
fn outcome(command: &mut std::process::Command) -> (bool, String) {
    let output = command.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `weir plugin new --lang LANG` writes, outside the repository, a plugin whose native tests pass
/// as written (pytest, `node --test`) and whose case passes through `weir plugin test` (which
/// builds it with the language's toolchain, naming it in the component); with `edit` applied to
/// its module, the case fails with a diff naming the field, and passes again once blessed.
fn new_build_test(lang: &str, kind: &str, edit: Option<(&str, &str)>) {
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let name = format!("my-{lang}-{kind}");
    let dir = outside.path().join(&name);
    let (ok, text) = outcome(
        weir_cli(&home)
            .args([
                "plugin", "new", &name, "--kind", kind, "--lang", lang, "--dir",
            ])
            .arg(&dir),
    );
    assert!(ok, "{text}");
    let (module, native) = if lang == "python" {
        let mut pytest = std::process::Command::new(weir_tests::python());
        pytest.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]);
        ("plugin.py", pytest)
    } else {
        let mut node = std::process::Command::new("node");
        node.arg("--test");
        ("plugin.js", node)
    };
    let mut native = native;
    let (ok, text) = outcome(native.current_dir(&dir));
    assert!(ok, "{name}: the native tests pass as written: {text}");

    let test = |bless: bool| {
        let mut command = weir_cli(&home);
        command.args(["plugin", "test"]).arg(&dir);
        if bless {
            command.arg("--bless");
        }
        outcome(&mut command)
    };
    let (ok, text) = test(false);
    assert!(ok, "{name}: {text}");
    assert!(text.contains("1 case(s) passed"), "{text}");
    assert!(text.contains(&format!("name:    {name}")), "{text}");
    let wasm = dir
        .join("target/weir")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let package = weir::plugin::package::read(&std::fs::read(&wasm).expect("the component"))
        .expect("the component names its plugin");
    assert_eq!(
        (package.name.as_str(), package.version.as_str()),
        (name.as_str(), "0.1.0")
    );

    let Some((from, to)) = edit else { return };
    let path = dir.join(module);
    let code = std::fs::read_to_string(&path).expect("module");
    assert!(code.contains(from), "{code}");
    std::fs::write(&path, code.replace(from, to)).expect("edit");
    let (ok, text) = test(false);
    assert!(!ok, "{name}: the edited logic fails its case: {text}");
    assert!(
        text.contains("FAILED") && text.contains("field `To`: expected 40.0, got 41"),
        "{text}"
    );
    let (ok, text) = test(true);
    assert!(ok && text.contains("blessed"), "{text}");
    let (ok, text) = test(false);
    assert!(ok, "{name}: blessed: {text}");
}

#[test]
fn weir_plugin_new_build_and_test_a_python_transform() {
    new_build_test(
        "python",
        "transform",
        Some(("\"To\": temperature}", "\"To\": temperature + 1}")),
    );
}

#[test]
fn weir_plugin_new_build_and_test_a_javascript_transform() {
    new_build_test(
        "javascript",
        "transform",
        Some(("To: temperature }", "To: temperature + 1 }")),
    );
}

#[test]
fn weir_plugin_new_build_and_test_a_python_window() {
    new_build_test("python", "window", None);
}

#[test]
fn the_bookings_join_in_javascript_gives_exactly_the_rust_joins_rows() {
    use weir_tests::bookings::{example_venue_cities, expected_fact, generated_orders, streams};
    let javascript = script_plugin("plugins/js/booking-join", PluginKind::JoinEnrichment);
    let rust = plugin_path("booking_join");
    let categorize = plugin_path("booking_categorize");
    let venues = weir_tests::workspace_dir().join("examples/reference/venues.csv");
    let dir = tempfile::tempdir().expect("temp dir");
    let orders = generated_orders(80, 29);
    let (bookings, payments) = streams(&orders);
    let lines = |lines: &[String]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(dir.path().join("bookings.jsonl"), lines(&bookings)).expect("bookings");
    std::fs::write(dir.path().join("payments.jsonl"), lines(&payments)).expect("payments");
    let mut text = format!(
        r#"
[checkpoint]
dir = "{dir}/checkpoints"
interval = "300ms"

[plugins]
store_dir = "{store}"

[sources.bookings]
kind = "file"
path = "{dir}/bookings.jsonl"
partitions = 2
key_field = "OrderId"

[sources.payments]
kind = "file"
path = "{dir}/payments.jsonl"
partitions = 2
key_field = "OrderId"

[sinks.dead_letters]
kind = "file"
path = "{dir}/dead_letters"
"#,
        dir = dir.path().display(),
        store = plugin_store(dir.path()).display(),
    );
    for (name, join) in [("rust", &rust), ("js", &javascript)] {
        text.push_str(&format!(
            r#"
[sinks.{name}_rows]
kind = "file"
path = "{dir}/{name}_rows"

[pipelines.{name}]
sources = ["bookings", "payments"]
dead_letter = "dead_letters"
batch = {{ max_events = 64, max_wait = "20ms" }}

[pipelines.{name}.event_time.sources.bookings]
field = "Timestamp"

[pipelines.{name}.event_time.sources.payments]
field = "Timestamp"
out_of_order = {{ tolerance = "5s", policy = "adjust" }}

[[pipelines.{name}.stages]]
name = "categorize"
plugin = "{categorize}"
input = "bookings"
outputs = {{ seats = "join.left" }}
reference = {{ venues = {{ path = "{venues}", key = "VenueId" }} }}

[[pipelines.{name}.stages]]
name = "join"
plugin = "{join}"
right = "payments"
join = {{ key = "OrderId", within = "2m", unmatched_left = "emit", unmatched_right = "drop" }}
outputs = {{ rows = "{name}_rows" }}
"#,
            dir = dir.path().display(),
            categorize = categorize.display(),
            venues = venues.display(),
            join = join.display(),
        ));
    }
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, text).expect("config");

    run_to_completion(&config, Duration::from_secs(600));

    let read = |name: &str| {
        by_key(
            read_jsonl_dir(&dir.path().join(format!("{name}_rows"))),
            |row| format!("{}/{}", row["OrderId"], row["SeatId"]),
        )
    };
    let reference = read("rust");
    // The Rust rows are the fact derived from the orders (but `BookingDate`, which the Delta
    // sink derives from `BookingTime`: these are file sinks).
    let expected = expected_fact(&orders, &example_venue_cities());
    assert_eq!(reference.len(), expected.len(), "one row per seat");
    for ((order, seat), want) in &expected {
        let got = &reference[&format!("\"{order}\"/\"{seat}\"")];
        for (field, value) in want.as_object().expect("object") {
            if field != "BookingDate" {
                assert!(close(&got[field], value), "{field}: {got} vs {want}");
            }
        }
    }
    assert_same_alerts("JavaScript", &read("js"), &reference);
    let letters = read_jsonl_dir(&dir.path().join("dead_letters"));
    assert!(letters.is_empty(), "{letters:#?}");
}
