//! `vacuum = "full"` through `weir run` (issue 16): data files that no version of the table
//! references (as a crashed write leaves them) are deleted once older than `vacuum_retention`,
//! and counted in `/metrics`; younger ones and every file the table references, however old,
//! stay; Python's `deltalake` reads the same rows before and after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir_tests::service::{http, parse_prometheus};
use weir_tests::{WeirProcess, plugin_path, python_command, run_to_completion};

const ROWS: usize = 300;

/// The pipeline; with `maintenance`, a source that keeps following the input (so that `weir`
/// runs until stopped).
fn config(dir: &Path, maintenance: &str) -> PathBuf {
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
follow = {follow}

[sinks.events]
kind = "delta"
path = "delta/events"
max_buffered_rows = 50
{maintenance}
columns = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "day", type = "date" }},
]
partition_by = ["day"]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.p]
source = "input"
dead_letter = "dead_letters"
batch = {{ max_events = 50, max_wait = "10ms" }}

[[pipelines.p.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "events" }}
"#,
        plugin = plugin_path("passthrough").display(),
        follow = !maintenance.is_empty(),
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// The ids Python `deltalake` reads, sorted.
fn read_ids(table: &Path) -> Vec<i64> {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
print(json.dumps(sorted(r["id"] for r in DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist())))
"#;
    let output = python_command(SCRIPT).arg(table).output().expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

/// Every parquet file under `dir`.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Sets the modification time of `file` to two hours ago.
fn age(file: &Path) {
    let status = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(file)
        .status()
        .expect("touch");
    assert!(status.success());
}

#[test]
fn full_vacuum_deletes_old_unreferenced_files_and_keeps_every_row() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines: String = (0..ROWS)
        .map(|id| format!("{{\"id\":{id},\"day\":\"2026-05-0{}\"}}\n", 1 + id % 3))
        .collect();
    std::fs::write(dir.path().join("input.jsonl"), lines).expect("input");
    let table = dir.path().join("delta/events");
    run_to_completion(&config(dir.path(), ""), Duration::from_secs(120));
    let referenced = parquet_files(&table);
    assert!(referenced.len() >= 3, "{referenced:?}");
    // Every referenced file is old; two copies of one stand for a crashed write's files, one
    // old and one written just now.
    for file in &referenced {
        age(file);
    }
    let partition = referenced[0].parent().expect("partition dir");
    let old_orphan =
        partition.join("part-00000-0badc0de-0000-0000-0000-000000000001-c000.zstd.parquet");
    let new_orphan =
        partition.join("part-00000-0badc0de-0000-0000-0000-000000000002-c000.zstd.parquet");
    std::fs::copy(&referenced[0], &old_orphan).expect("copy");
    std::fs::copy(&referenced[0], &new_orphan).expect("copy");
    age(&old_orphan);
    let before = read_ids(&table);
    assert_eq!(before, (0..ROWS as i64).collect::<Vec<_>>());

    let config = config(
        dir.path(),
        r#"maintenance = { interval = "200ms", vacuum = "full", vacuum_retention = "1h" }"#,
    );
    let process = WeirProcess::run(&config);
    let admin = process.admin_address(process.log_len(), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while old_orphan.exists() {
        assert!(
            Instant::now() < deadline,
            "the old orphan is still there:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let counted = |text: &str, action: &str| -> Option<f64> {
        parse_prometheus(text)
            .iter()
            .flat_map(|(_, _, samples)| samples.iter())
            .find(|(name, labels, _)| {
                name == "weir_delta_maintenance_total"
                    && labels["sink"] == "events"
                    && labels["action"] == action
            })
            .map(|(_, _, v)| *v)
    };
    // The file goes before the vacuum's count is added: wait for the count too, so the metrics
    // read is not a race with the end of the pass.
    let text = loop {
        let (status, text) = http(&admin, "GET", "/metrics", None, b"");
        assert_eq!(status, 200);
        if counted(&text, "orphan_files_vacuumed").is_some_and(|n| n >= 1.0)
            || Instant::now() >= deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    process.terminate();
    process.wait(Duration::from_secs(60));
    let counted = |action: &str| counted(&text, action);
    assert_eq!(counted("orphan_files_vacuumed"), Some(1.0), "{text}");
    assert_eq!(counted("files_vacuumed"), Some(0.0), "{text}");
    assert!(
        new_orphan.exists(),
        "a file younger than the retention stays"
    );
    let mut expected: Vec<PathBuf> = referenced.clone();
    expected.push(new_orphan);
    expected.sort();
    assert_eq!(
        parquet_files(&table),
        expected,
        "every referenced file stays"
    );
    assert_eq!(read_ids(&table), before, "the same rows after VACUUM");
}
