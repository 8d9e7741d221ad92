//! Golden tests of the window stage, through the `weir` binary and the `window-collect` plugin:
//! every window type, with out-of-order and late events under both policies (the cases and their
//! hand-worked expectations are in `tests/golden/windows/`), a plugin that traps, and idle
//! partitions that must not hold their windows back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{WeirProcess, plugin_path, read_jsonl_dir, run_to_completion, workspace_dir};

/// The configuration of one golden run.
#[allow(clippy::too_many_arguments, reason = "one knob per case setting")]
fn golden_config(
    dir: &Path,
    input: &Path,
    window: &str,
    tolerance: &str,
    policy: &str,
    partitions: u32,
    batch: usize,
    extra_event_time: &str,
    follow: bool,
    extra_source: &str,
) -> PathBuf {
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.input]
kind = "file"
path = "{input}"
partitions = {partitions}
key_field = "Key"
follow = {follow}
{extra_source}

[sinks.windows]
kind = "file"
path = "windows"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.golden]
source = "input"
dead_letter = "dead_letters"
batch = {{ max_events = {batch}, max_wait = "20ms" }}

[pipelines.golden.event_time]
field = "Time"
out_of_order = {{ tolerance = "{tolerance}", policy = "{policy}" }}
{extra_event_time}

[[pipelines.golden.stages]]
name = "collect"
plugin = "{plugin}"
window = {window}
outputs = {{ windows = "windows" }}
"#,
        input = input.display(),
        plugin = plugin_path("window_collect").display(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// What a run produced, comparable with an expected file: window outputs as they are, dead
/// letters as `{"DeadLetter": kind, "Id": ...}`.
fn observed(dir: &Path) -> Vec<Value> {
    let mut all = read_jsonl_dir(&dir.join("windows"));
    for letter in read_jsonl_dir(&dir.join("dead_letters")) {
        let body: Value =
            serde_json::from_str(letter["body"].as_str().expect("body text")).expect("body json");
        all.push(serde_json::json!({ "DeadLetter": letter["kind"], "Id": body["Id"] }));
    }
    all
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        (Value::Number(_), Value::Number(_)) => weir_tests::close(a, b),
        _ => a == b,
    }
}

/// Checks `actual` against `expected` as multisets, floats within 1e-9.
fn assert_same_outputs(actual: &[Value], expected: &[Value], what: &str) {
    let mut unmatched: Vec<&Value> = actual.iter().collect();
    let mut missing = Vec::new();
    for want in expected {
        match unmatched.iter().position(|got| same(got, want)) {
            Some(index) => {
                unmatched.swap_remove(index);
            }
            None => missing.push(want),
        }
    }
    assert!(
        missing.is_empty() && unmatched.is_empty(),
        "{what}:\nmissing: {missing:#?}\nunexpected: {unmatched:#?}"
    );
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read expected")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("expected json"))
        .collect()
}

#[test]
fn every_window_type_with_out_of_order_and_late_events_under_both_policies() {
    let cases = workspace_dir().join("tests/golden/windows");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&cases)
        .expect("golden cases")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "golden cases in {}", cases.display());
    let work = tempfile::tempdir().expect("temp dir");
    let mut runs = 0;
    for case in &names {
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let settings: toml::Table = std::fs::read_to_string(case.join("case.toml"))
            .expect("case.toml")
            .parse()
            .expect("case.toml is TOML");
        let window = settings["window"].as_str().expect("window");
        let tolerance = settings["tolerance"].as_str().expect("tolerance");
        // Optional: more `event_time` keys (`{policy}` is the run's policy) and source keys.
        let optional = |key: &str| {
            settings
                .get(key)
                .and_then(toml::Value::as_str)
                .unwrap_or("")
        };
        let (event_time, source) = (optional("event_time"), optional("source"));
        for policy in ["adjust", "drop"] {
            let expected_file = case.join(format!("expected.{policy}.jsonl"));
            if !expected_file.is_file() {
                continue;
            }
            let expected = read_lines(&expected_file);
            // One partition in batches of one event, then two partitions in large batches.
            for (partitions, batch) in [(1, 1), (2, 256)] {
                let dir = work.path().join(format!("{name}-{policy}-{partitions}"));
                std::fs::create_dir_all(&dir).expect("dir");
                let config = golden_config(
                    &dir,
                    &case.join("input.jsonl"),
                    window,
                    tolerance,
                    policy,
                    partitions,
                    batch,
                    &event_time.replace("{policy}", policy),
                    false,
                    source,
                );
                run_to_completion(&config, Duration::from_secs(120));
                assert_same_outputs(
                    &observed(&dir),
                    &expected,
                    &format!(
                        "case `{name}`, policy {policy}, {partitions} partition(s), batches of {batch}"
                    ),
                );
                runs += 1;
            }
        }
    }
    assert!(runs >= 20, "{runs} runs");
}

/// The partition of `key` among `partitions`: FNV-1a 64 of the key, as the README documents.
fn partition_of(key: &str, partitions: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % partitions
}

/// Two keys that land on different partitions of a two-partition source.
fn keys_on_two_partitions() -> (String, String) {
    let first = "P".to_owned();
    let second = (0..100)
        .map(|i| format!("Q{i}"))
        .find(|k| partition_of(k, 2) != partition_of(&first, 2))
        .expect("a key on the other partition");
    (first, second)
}

#[test]
fn an_idle_partition_follows_the_pipeline_watermark_and_closes_its_windows() {
    let (quiet, busy) = keys_on_two_partitions();
    let mut input = String::new();
    // `quiet` reads from 600 s to 700 s, then stops; `busy` goes on to 900 s.
    for (i, time) in (600..=700).step_by(20).enumerate() {
        input.push_str(&format!(
            "{{\"Key\":\"{quiet}\",\"Id\":\"q{i}\",\"Value\":1,\"Time\":{}}}\n",
            time * 1000
        ));
    }
    for (i, time) in (600..=900).step_by(20).enumerate() {
        input.push_str(&format!(
            "{{\"Key\":\"{busy}\",\"Id\":\"b{i}\",\"Value\":1,\"Time\":{}}}\n",
            time * 1000
        ));
    }
    let window = r#"{ type = "tumbling", size = "1m", group_by = ["Key"] }"#;
    let work = tempfile::tempdir().expect("temp dir");
    let window_of = |outputs: &[Value], key: &str, start: &str| {
        outputs
            .iter()
            .find(|o| o["Key"] == key && o["WindowStart"] == start)
            .cloned()
    };

    // Without an idle timeout, following the file (it never ends): the quiet partition's window
    // [660 s, 720 s) stays open, since its own watermark stopped at 700 s.
    let dir = work.path().join("no-idle");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("input.jsonl"), &input).expect("input");
    let config = golden_config(
        &dir,
        &dir.join("input.jsonl"),
        window,
        "0s",
        "drop",
        2,
        64,
        "",
        true,
        "",
    );
    let mut process = WeirProcess::run(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until the busy partition has closed its windows up to 900 s.
    while window_of(
        &read_jsonl_dir(&dir.join("windows")),
        &busy,
        "1970-01-01T00:14:00.000Z",
    )
    .is_none()
    {
        assert!(
            Instant::now() < deadline && process.is_running(),
            "the busy partition's windows never closed:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let outputs = read_jsonl_dir(&dir.join("windows"));
    assert!(window_of(&outputs, &quiet, "1970-01-01T00:10:00.000Z").is_some());
    assert!(
        window_of(&outputs, &quiet, "1970-01-01T00:11:00.000Z").is_none(),
        "without an idle timeout the quiet partition holds its last window: {outputs:#?}"
    );
    process.terminate();
    process.wait(Duration::from_secs(60));

    // With an idle timeout of 500 ms, the quiet partition follows the pipeline watermark (900 s)
    // and closes [660 s, 720 s); the busy partition's own last window [900 s, 960 s) stays open.
    let dir = work.path().join("idle");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("input.jsonl"), &input).expect("input");
    let config = golden_config(
        &dir,
        &dir.join("input.jsonl"),
        window,
        "0s",
        "drop",
        2,
        64,
        r#"idle_timeout = "500ms""#,
        true,
        "",
    );
    let mut process = WeirProcess::run(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_quiet = loop {
        let outputs = read_jsonl_dir(&dir.join("windows"));
        if let Some(window) = window_of(&outputs, &quiet, "1970-01-01T00:11:00.000Z") {
            break window;
        }
        assert!(
            Instant::now() < deadline && process.is_running(),
            "the idle partition's last window never closed:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(last_quiet["Ids"], serde_json::json!(["q3", "q4", "q5"]));
    process.terminate();
    let status = process.wait(Duration::from_secs(60));
    assert!(status.success());
    let outputs = read_jsonl_dir(&dir.join("windows"));
    let busy_windows: BTreeMap<String, Value> = outputs
        .iter()
        .filter(|o| o["Key"] == busy.as_str())
        .map(|o| {
            (
                o["WindowStart"].as_str().expect("start").to_owned(),
                o["Count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        busy_windows.len(),
        5,
        "busy windows 600..900 s closed, 900 s open: {busy_windows:?}"
    );
    assert!(!busy_windows.contains_key("1970-01-01T00:15:00.000Z"));
}
