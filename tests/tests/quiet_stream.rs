//! Time advances when input stops (Stream Analytics semantics), through `weir run`: a followed
//! file whose two partitions both go quiet. Its last windows close once every partition has been
//! idle for the idle timeout and the wall clock less the late-arrival tolerance has passed their
//! end: within the idle timeout plus one window of the last event. A SIGKILL right after, and a
//! restart that goes quiet again, still leave each window once in the file sink and in Delta.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{WeirProcess, plugin_path, read_delta, read_jsonl_dir};

const WINDOW_MS: i64 = 2_000;
const IDLE_TIMEOUT_MS: i64 = 2_000;
const LATE_ARRIVAL_MS: i64 = 1_000;

/// The partition of `key` among `partitions`: FNV-1a 64 of the key, as the README documents.
fn partition_of(key: &str, partitions: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % partitions
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn config(dir: &Path, input: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "300ms"

[sources.input]
kind = "file"
path = "{input}"
partitions = 2
key_field = "Key"
follow = true

[sinks.windows]
kind = "file"
path = "windows"

[sinks.table]
kind = "delta"
path = "table"
columns = [
  {{ name = "Key", type = "string", nullable = false }},
  {{ name = "Count", type = "long" }},
  {{ name = "Sum", type = "double" }},
  {{ name = "WindowStart", type = "timestamp", nullable = false }},
  {{ name = "WindowEnd", type = "timestamp", nullable = false }},
]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.quiet]
source = "input"
dead_letter = "dead_letters"
batch = {{ max_events = 64, max_wait = "20ms" }}
event_time = {{ field = "Time", semantics = "stream_analytics", late_arrival = {{ tolerance = "{late}ms", policy = "adjust" }}, idle_timeout = "{idle}ms" }}

# No `semantics` here: the window follows the pipeline's, Stream Analytics' (start, end].
[[pipelines.quiet.stages]]
name = "collect"
plugin = "{plugin}"
window = {{ type = "tumbling", size = "{size}ms", group_by = ["Key"] }}
outputs = {{ windows = ["windows", "table"] }}
"#,
        input = input.display(),
        plugin = plugin_path("window_collect").display(),
        late = LATE_ARRIVAL_MS,
        idle = IDLE_TIMEOUT_MS,
        size = WINDOW_MS,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every event id the window rows hold, with how often.
fn ids_of(rows: &[Value]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for row in rows {
        for id in row["Ids"].as_array().into_iter().flatten() {
            *ids.entry(id.as_str().expect("id").to_owned()).or_default() += 1;
        }
    }
    ids
}

/// How often each (Key, WindowEnd) appears.
fn windows_of(rows: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut windows = BTreeMap::new();
    for row in rows {
        let key = row["Key"].as_str().expect("Key").to_owned();
        let end = row["WindowEnd"].as_str().expect("WindowEnd").to_owned();
        *windows.entry((key, end)).or_default() += 1;
    }
    windows
}

fn millis_of(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("an RFC 3339 time")
        .timestamp_millis()
}

#[test]
fn a_quiet_followed_input_closes_its_last_windows_with_the_wall_clock_and_a_kill_writes_each_once()
{
    let first = "A".to_owned();
    let second = (0..100)
        .map(|i| format!("B{i}"))
        .find(|k| partition_of(k, 2) != partition_of(&first, 2))
        .expect("a key on the other partition");
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, "").expect("empty input");
    let config = config(dir.path(), &input);
    let mut process = WeirProcess::run(&config);
    process.wait_for_start(1, Duration::from_secs(60));

    // Ten readings of each key over about 2.5 s of wall clock, each stamped when written.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("open input");
    let mut written = Vec::new();
    let mut last_time = 0;
    for step in 0..10 {
        for key in [&first, &second] {
            let id = format!("{key}-{step}");
            last_time = now_ms();
            writeln!(
                file,
                r#"{{"Key":"{key}","Id":"{id}","Value":{step},"Time":{last_time}}}"#
            )
            .expect("append");
            written.push(id);
        }
        file.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(file);

    // Every reading reaches a closed window although nothing more arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed_at = loop {
        let rows = read_jsonl_dir(&dir.path().join("windows"));
        if ids_of(&rows).len() == written.len() {
            break now_ms();
        }
        assert!(
            Instant::now() < deadline && process.is_running(),
            "the quiet stream's last windows never closed ({} of {} readings in closed windows):\n{}",
            ids_of(&rows).len(),
            written.len(),
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Right after: a crash.
    process.kill9();

    let rows = read_jsonl_dir(&dir.path().join("windows"));
    let last_end = rows
        .iter()
        .map(|r| millis_of(r["WindowEnd"].as_str().expect("WindowEnd")))
        .max()
        .expect("rows");
    assert!(
        last_end >= last_time,
        "the last window ends at or after the last reading"
    );
    // Closed by the wall clock less the late-arrival tolerance, not earlier...
    assert!(
        closed_at >= last_end + LATE_ARRIVAL_MS,
        "the last window (ending {last_end}) closed at {closed_at}, before the wall clock less the tolerance passed it"
    );
    // ...and within the idle timeout plus one window of the last reading (with 1.5 s for the
    // polls between).
    let bound = IDLE_TIMEOUT_MS + WINDOW_MS + 1_500;
    assert!(
        closed_at - last_time <= bound,
        "the last window closed {} ms after the last reading, over {bound} ms",
        closed_at - last_time
    );

    // Restart after the crash; it goes quiet again, then stops.
    let mut process = WeirProcess::run(&config);
    process.wait_for_start(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(
        (IDLE_TIMEOUT_MS + WINDOW_MS + 1_000) as u64,
    ));
    process.terminate();
    assert!(process.wait(Duration::from_secs(60)).success());

    let rows = read_jsonl_dir(&dir.path().join("windows"));
    let table = read_delta(&dir.path().join("table")).rows;
    for (sink, rows) in [("file", &rows), ("delta", &table)] {
        let windows = windows_of(rows);
        assert!(
            windows.values().all(|n| *n == 1),
            "{sink}: every window once: {windows:?}"
        );
        let counts: i64 = rows
            .iter()
            .map(|r| r["Count"].as_i64().expect("Count"))
            .sum();
        assert_eq!(
            counts,
            written.len() as i64,
            "{sink}: every reading counted once"
        );
    }
    let ids = ids_of(&rows);
    assert_eq!(ids.len(), written.len());
    assert!(ids.values().all(|n| *n == 1), "each reading once: {ids:?}");
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}
