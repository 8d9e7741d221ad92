//! Delta table maintenance through `weir run` (issue 16): background compaction runs while the
//! stream commits and while `weir` is killed with SIGKILL again and again under load; afterwards
//! the table holds every record exactly once, its data files fell by a factor of four or more (to
//! one compacted file per day partition and at most three newer ones), and
//! the Python `deltalake` package reads the same rows before and after VACUUM deleted the
//! compacted-away files.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::service::{http, parse_prometheus};
use weir_tests::{WeirProcess, plugin_path, python_command, read_jsonl_dir};

const DAYS: usize = 4;
const PER_DAY: usize = 300;

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "100ms"

[admin]
address = "127.0.0.1:0"

[sources.input]
kind = "file"
path = "input.jsonl"
follow = true

[sinks.events]
kind = "delta"
path = "delta/events"
partition_by = ["day"]
columns = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "at", type = "timestamp" }},
  {{ name = "day", type = "date", from = "at", derive = "date" }},
]
maintenance = {{ interval = "400ms", compact = true, vacuum = true, compact_min_age = "0ms", compact_min_files = 4, vacuum_retention = "1s", checkpoint_every = 10 }}

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.events]
source = "input"
dead_letter = "dead_letters"
batch = {{ max_events = 10, max_wait = "5ms" }}

[[pipelines.events.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "events" }}
"#,
        plugin = plugin_path("passthrough").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn append(input: &Path, ids: std::ops::Range<usize>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(input)
        .expect("input");
    for id in ids {
        let day = 1 + id / PER_DAY;
        let second = id % PER_DAY;
        let record = json!({"id": id, "at": format!("2026-05-0{day}T10:{:02}:{:02}Z", second / 60, second % 60)});
        writeln!(file, "{record}").expect("append");
    }
}

/// Each commit's operation and its `add` actions with `dataChange` true and false.
fn history(table: &Path) -> Vec<(String, usize, usize)> {
    let Ok(entries) = std::fs::read_dir(table.join("_delta_log")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| {
            let actions: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let operation = actions
                .iter()
                .find_map(|a| a["commitInfo"]["operation"].as_str())
                .unwrap_or_default()
                .to_owned();
            let adds = |change: bool| {
                actions
                    .iter()
                    .filter(|a| a["add"]["dataChange"] == json!(change))
                    .count()
            };
            (operation, adds(true), adds(false))
        })
        .collect()
}

fn data_files_on_disk(table: &Path) -> usize {
    let mut count = 0;
    let mut dirs = vec![table.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() && !path.ends_with("_delta_log") {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                count += 1;
            }
        }
    }
    count
}

/// The ids in the table and its number of live data files, as Python `deltalake` reads them. A
/// read may fail while `weir` runs, when VACUUM deletes a compacted-away file the reader's
/// version still lists (the test's retention is a second): it is read again.
fn read(table: &Path) -> (Vec<u64>, usize) {
    let mut failures = 0;
    loop {
        match try_read(table) {
            Ok(read) => return read,
            Err(e) if failures < 5 => {
                failures += 1;
                eprintln!("read again: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn try_read(table: &Path) -> Result<(Vec<u64>, usize), String> {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
ids = sorted(t.to_pyarrow_table(columns=["id"]).column("id").to_pylist())
print(json.dumps({"ids": ids, "files": len(t.file_uris())}))
"#;
    let output = python_command(SCRIPT).arg(table).output().expect("python");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let value: Value = serde_json::from_slice(&output.stdout).expect("json");
    Ok((
        serde_json::from_value(value["ids"].clone()).expect("ids"),
        value["files"].as_u64().expect("files") as usize,
    ))
}

/// Appends the records `ids` under load: a few every 40 ms (a commit every checkpoint, 100 ms).
fn feed(input: &Path, ids: std::ops::Range<usize>) {
    for chunk in ids.clone().step_by(5) {
        append(input, chunk..(chunk + 5).min(ids.end));
        std::thread::sleep(Duration::from_millis(40));
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn compaction_under_sigkills_keeps_every_row_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    let table = dir.path().join("delta/events");
    let config = config(dir.path());
    let total = DAYS * PER_DAY;
    let step = total / 8;

    // Seven rounds: records appended in the background of a running `weir`, killed with SIGKILL
    // at moments that vary, some while compacting.
    let jitter_ms = [0u64, 150, 420, 60, 700, 230, 510];
    let mut compactions_seen_before_kill = 0;
    for (round, jitter) in jitter_ms.iter().enumerate() {
        let process = WeirProcess::run(&config);
        let writes = || {
            history(&table)
                .iter()
                .filter(|(op, _, _)| op == "WRITE")
                .count()
        };
        let writes_before = writes();
        feed(&input, round * step..(round + 1) * step);
        wait_until("a new data commit", Duration::from_secs(60), || {
            writes() > writes_before
        });
        std::thread::sleep(Duration::from_millis(*jitter));
        compactions_seen_before_kill = history(&table)
            .iter()
            .filter(|(op, _, _)| op == "OPTIMIZE")
            .count();
        process.kill9();
    }
    assert!(
        compactions_seen_before_kill > 0,
        "compaction ran during the kill loop: {:?}",
        history(&table)
    );

    // The last run catches up; compaction and VACUUM then run on the settled table.
    let log_offset =
        std::fs::metadata(config.with_extension("log")).map_or(0, |m| m.len() as usize);
    let process = WeirProcess::run(&config);
    let admin = process.admin_address(log_offset, Duration::from_secs(60));
    let history_before = history(&table).len();
    feed(&input, 7 * step..total);
    wait_until(
        "every record in the table",
        Duration::from_secs(120),
        || read(&table).0.len() >= total,
    );
    let (before_vacuum, _) = read(&table);
    // Settled: few live files, and a VACUUM after the last compaction (which deletes its
    // removed files once they are a second old).
    wait_until(
        "compaction to settle and a VACUUM after it",
        Duration::from_secs(60),
        || {
            let history = history(&table);
            let vacuumed = history
                .iter()
                .rposition(|(op, _, _)| op == "OPTIMIZE")
                .filter(|at| *at >= history_before)
                .is_some_and(|at| history[at..].iter().any(|(op, _, _)| op == "VACUUM END"));
            vacuumed && read(&table).1 <= 4 * DAYS
        },
    );
    // This run's maintenance, as `/metrics` counts it.
    let (status, text) = http(&admin, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    let counted = |action: &str| {
        parse_prometheus(&text)
            .iter()
            .flat_map(|(_, _, samples)| samples.iter())
            .find(|(name, labels, _)| {
                name == "weir_delta_maintenance_total"
                    && labels["sink"] == "events"
                    && labels["action"] == action
            })
            .map_or_else(|| panic!("no {action} sample in:\n{text}"), |(_, _, v)| *v)
    };
    assert!(counted("compactions") >= 1.0, "{text}");
    assert!(counted("files_compacted") >= 4.0, "{text}");
    assert!(counted("files_vacuumed") >= 1.0, "{text}");
    counted("compaction_conflicts");
    counted("checkpoints");
    process.terminate();
    process.wait(Duration::from_secs(60));

    let (after_vacuum, live_files) = read(&table);
    assert_eq!(
        before_vacuum,
        (0..total as u64).collect::<Vec<_>>(),
        "every record exactly once"
    );
    assert_eq!(after_vacuum, before_vacuum, "the same rows after VACUUM");
    let history = history(&table);
    let stream_files: usize = history.iter().map(|(_, data, _)| data).sum();
    eprintln!("{stream_files} files written by the stream, {live_files} live: {history:?}");
    // Bounded by the days, not by how many files the stream wrote: how many it writes depends on
    // how many checkpoints a loaded machine fits in, so a ratio of the two is no test.
    assert!(
        live_files <= 4 * DAYS && live_files < stream_files,
        "{stream_files} files written by the stream, {live_files} live after compaction: {history:?}"
    );
    // VACUUM deleted the files compaction removed (files of commits a SIGKILL interrupted, which
    // no version references, may remain).
    assert!(
        data_files_on_disk(&table) < stream_files,
        "{} files on disk",
        data_files_on_disk(&table)
    );
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}
