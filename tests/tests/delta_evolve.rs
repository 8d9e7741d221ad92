//! `schema = "evolve"` through `weir run` (issue 16): records gain fields mid-stream, the table
//! gains the columns, earlier rows read them as null; `weir` killed with SIGKILL right after the
//! metadata commit that adds them (and before and after it) leaves a table the Python `deltalake`
//! package reads consistently, with every record exactly once.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::service::{http, parse_prometheus};
use weir_tests::{WeirProcess, plugin_path, python_command, read_jsonl_dir};

const PER_STEP: usize = 400;

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "150ms"

[sources.input]
kind = "file"
path = "input.jsonl"
follow = true

[sinks.bookings]
kind = "delta"
path = "delta/bookings"
schema = "evolve"
columns = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "customer", type = "string" }},
]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.bookings]
source = "input"
dead_letter = "dead_letters"
batch = {{ max_events = 20, max_wait = "10ms" }}

[[pipelines.bookings.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "bookings" }}
"#,
        plugin = plugin_path("passthrough").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// Record `id`: from `PER_STEP` on, with a `price` and a nested `seat`.
fn record(id: usize) -> Value {
    if id < PER_STEP {
        json!({"id": id, "customer": format!("c{}", id % 7)})
    } else {
        json!({"id": id, "customer": format!("c{}", id % 7), "price": id as f64 + 0.25,
               "seat": {"no": format!("{}A", id % 30), "row": id % 30}})
    }
}

fn append(input: &Path, ids: std::ops::Range<usize>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(input)
        .expect("input");
    for id in ids {
        writeln!(file, "{}", record(id)).expect("append");
    }
}

/// The commit files of the table's log, and whether one of them adds columns.
fn log_state(table: &Path) -> (usize, bool) {
    let Ok(entries) = std::fs::read_dir(table.join("_delta_log")) else {
        return (0, false);
    };
    let mut commits = 0;
    let mut evolved = false;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "json") {
            commits += 1;
            evolved |= std::fs::read_to_string(&path).is_ok_and(|t| t.contains("ADD COLUMN"));
        }
    }
    (commits, evolved)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every row of the table as Python `deltalake` reads it, and its columns.
fn read(table: &Path) -> (Vec<String>, Vec<Value>) {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
rows = sorted(t.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
print(json.dumps({"columns": [f.name for f in t.schema().fields], "rows": rows}))
"#;
    let output = python_command(SCRIPT).arg(table).output().expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("json");
    let columns = serde_json::from_value(value["columns"].clone()).expect("columns");
    let rows = value["rows"].as_array().expect("rows").clone();
    (columns, rows)
}

#[test]
fn fields_gained_mid_stream_become_columns_exactly_once_through_sigkills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    let table = dir.path().join("delta/bookings");
    let config = config(dir.path());
    append(&input, 0..PER_STEP);

    // Killed once before the evolution, after a first data commit.
    let mut process = WeirProcess::run(&config);
    wait_until("a first data commit", Duration::from_secs(60), || {
        log_state(&table).0 >= 2
    });
    assert!(process.is_running());
    process.kill9();

    // Killed right after the metadata commit that adds `price` and `seat`.
    let process = WeirProcess::run(&config);
    append(&input, PER_STEP..2 * PER_STEP);
    wait_until("the metadata commit", Duration::from_secs(60), || {
        log_state(&table).1
    });
    process.kill9();
    let (commits_at_kill, _) = log_state(&table);

    // Killed again after it has committed more.
    let process = WeirProcess::run(&config);
    append(&input, 2 * PER_STEP..3 * PER_STEP);
    wait_until(
        "a commit after the restart",
        Duration::from_secs(60),
        || log_state(&table).0 > commits_at_kill,
    );
    process.kill9();

    // The last run reads to the end of the input and stops on SIGTERM.
    let process = WeirProcess::run(&config);
    let total = 3 * PER_STEP;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (columns, rows) = loop {
        let (columns, rows) = read(&table);
        if rows.len() >= total || Instant::now() > deadline {
            break (columns, rows);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    process.terminate();
    let log = process.log_text();
    process.wait(Duration::from_secs(60));

    assert_eq!(
        columns,
        vec!["id", "customer", "price", "seat"],
        "the table gained the new fields as columns, once"
    );
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().expect("id")).collect();
    assert_eq!(
        ids,
        (0..total as u64).collect::<Vec<_>>(),
        "every record exactly once\n{log}"
    );
    for row in &rows {
        let id = row["id"].as_u64().expect("id") as usize;
        let mut expected = record(id);
        if id < PER_STEP {
            // Earlier rows read the new columns as null.
            expected["price"] = Value::Null;
            expected["seat"] = Value::Null;
        }
        assert_eq!(*row, expected);
    }
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
    // One metadata commit: the restarts took the new columns from the table.
    let evolutions = std::fs::read_dir(table.join("_delta_log"))
        .expect("log")
        .filter_map(Result::ok)
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("\"ADD COLUMN\"")))
        .count();
    assert_eq!(evolutions, 1);
}

/// A sink of struct, array-of-struct and map-of-struct columns, `schema` and `extra_fields` as
/// given, reading `input.jsonl` (followed).
fn nested_config(dir: &Path, settings: &str) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "150ms"

[admin]
address = "127.0.0.1:0"

[sources.input]
kind = "file"
path = "input.jsonl"
follow = true

[sinks.bookings]
kind = "delta"
path = "delta/bookings"
{settings}
columns = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "seat", type = "struct<no:string>" }},
  {{ name = "legs", type = "array<struct<origin:string>>" }},
  {{ name = "fares", type = "map<string,struct<amount:decimal(10,2)>>" }},
]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.bookings]
source = "input"
dead_letter = "dead_letters"
batch = {{ max_events = 20, max_wait = "10ms" }}

[[pipelines.bookings.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "bookings" }}
"#,
        plugin = plugin_path("passthrough").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// Record `id` of the nested test: from `PER_STEP` on, its structs carry new members.
fn nested_record(id: usize) -> Value {
    let base = json!({"id": id, "seat": {"no": format!("{}A", id % 30)},
                      "legs": [{"origin": "OSL"}], "fares": {"adult": {"amount": "10.50"}}});
    if id < PER_STEP {
        return base;
    }
    json!({"id": id, "seat": {"no": format!("{}A", id % 30), "zone": format!("z{}", id % 3)},
           "legs": [{"origin": "OSL", "gate": id % 9}], "fares": {"adult": {"amount": "10.50", "currency": "EUR"}}})
}

fn append_nested(input: &Path, ids: std::ops::Range<usize>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(input)
        .expect("input");
    for id in ids {
        writeln!(file, "{}", nested_record(id)).expect("append");
    }
}

/// Rows as Python `deltalake` reads them, maps as JSON objects, decimals as text.
fn read_nested(table: &Path) -> (Value, Vec<Value>) {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
def plain(v):
    if isinstance(v, list) and v and all(isinstance(e, tuple) for e in v):
        return {k: plain(x) for k, x in v}
    if isinstance(v, list):
        return [plain(e) for e in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v
rows = sorted((plain(r) for r in t.to_pyarrow_table().to_pylist()), key=lambda r: r["id"])
print(json.dumps({"schema": json.loads(t.schema().to_json()), "rows": rows}, default=str))
"#;
    let output = python_command(SCRIPT).arg(table).output().expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("json");
    let rows = value["rows"].as_array().expect("rows").clone();
    (value["schema"].clone(), rows)
}

/// The names of the fields of the struct at `path` (field names, `[]` for an array's element,
/// `{}` for a map's value) in a Delta schema.
fn struct_fields(schema: &Value, path: &[&str]) -> Vec<String> {
    let mut at = schema;
    for step in path {
        at = match *step {
            "[]" => &at["elementType"],
            "{}" => &at["valueType"],
            name => &at["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .find(|f| f["name"] == name)
                .unwrap_or_else(|| panic!("no field {name} in {at}"))["type"],
        };
    }
    at["fields"]
        .as_array()
        .expect("a struct")
        .iter()
        .map(|f| {
            assert_eq!(f["nullable"], true, "{f}");
            f["name"].as_str().expect("name").to_owned()
        })
        .collect()
}

#[test]
fn nested_members_gained_mid_stream_become_nested_fields_exactly_once_through_sigkills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    let table = dir.path().join("delta/bookings");
    let config = nested_config(dir.path(), "schema = \"evolve\"");
    append_nested(&input, 0..PER_STEP);
    let process = WeirProcess::run(&config);
    wait_until("a first data commit", Duration::from_secs(60), || {
        log_state(&table).0 >= 2
    });
    // Killed right after the metadata commit that adds the nested members.
    append_nested(&input, PER_STEP..2 * PER_STEP);
    wait_until("the metadata commit", Duration::from_secs(60), || {
        log_state(&table).1
    });
    process.kill9();

    let process = WeirProcess::run(&config);
    append_nested(&input, 2 * PER_STEP..3 * PER_STEP);
    let total = 3 * PER_STEP;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (schema, rows) = loop {
        let (schema, rows) = read_nested(&table);
        if rows.len() >= total || Instant::now() > deadline {
            break (schema, rows);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    process.terminate();
    let log = process.log_text();
    process.wait(Duration::from_secs(60));

    assert_eq!(struct_fields(&schema, &["seat"]), ["no", "zone"]);
    assert_eq!(struct_fields(&schema, &["legs", "[]"]), ["origin", "gate"]);
    assert_eq!(
        struct_fields(&schema, &["fares", "{}"]),
        ["amount", "currency"]
    );
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().expect("id")).collect();
    assert_eq!(
        ids,
        (0..total as u64).collect::<Vec<_>>(),
        "every record exactly once\n{log}"
    );
    for row in &rows {
        let id = row["id"].as_u64().expect("id") as usize;
        let mut expected = nested_record(id);
        if id < PER_STEP {
            // Earlier rows read the new nested fields as null.
            expected["seat"]["zone"] = Value::Null;
            expected["legs"][0]["gate"] = Value::Null;
            expected["fares"]["adult"]["currency"] = Value::Null;
        }
        assert_eq!(*row, expected);
    }
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}

#[test]
fn fixed_schemas_ignore_counted_or_refuse_new_nested_members() {
    // `refuse`: the records with new nested members go to the dead letters, named.
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    append_nested(&input, PER_STEP - 2..PER_STEP + 2);
    let config = nested_config(dir.path(), "extra_fields = \"refuse\"");
    let process = WeirProcess::run(&config);
    let letters_dir = dir.path().join("dead_letters");
    wait_until("the dead letters", Duration::from_secs(60), || {
        read_jsonl_dir(&letters_dir).len() >= 2
    });
    process.terminate();
    process.wait(Duration::from_secs(60));
    let (_, rows) = read_nested(&dir.path().join("delta/bookings"));
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [PER_STEP as u64 - 2, PER_STEP as u64 - 1]);
    for letter in read_jsonl_dir(&letters_dir) {
        assert_eq!(
            letter["reason"],
            "the record has fields the table has no column for: `seat.zone`, `legs[].gate`, `fares{}.currency` (`extra_fields = \"refuse\"`)"
        );
    }

    // `ignore` (the default): written without them, and counted.
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("input.jsonl");
    append_nested(&input, PER_STEP - 2..PER_STEP + 3);
    let config = nested_config(dir.path(), "");
    let process = WeirProcess::run(&config);
    let admin = process.admin_address(0, Duration::from_secs(60));
    let table = dir.path().join("delta/bookings");
    wait_until("the rows", Duration::from_secs(60), || {
        table.join("_delta_log").exists() && read_nested(&table).1.len() >= 5
    });
    let (status, text) = http(&admin, "GET", "/metrics", None, b"");
    process.terminate();
    process.wait(Duration::from_secs(60));
    assert_eq!(status, 200);
    let ignored = parse_prometheus(&text)
        .iter()
        .flat_map(|(_, _, samples)| samples.iter())
        .find(|(name, labels, _)| {
            name == "weir_delta_maintenance_total"
                && labels["sink"] == "bookings"
                && labels["action"] == "extra_fields_ignored"
        })
        .map(|(_, _, v)| *v);
    assert_eq!(ignored, Some(3.0), "{text}");
    let (schema, rows) = read_nested(&table);
    assert_eq!(struct_fields(&schema, &["seat"]), ["no"]);
    assert_eq!(
        rows[4]["seat"],
        json!({"no": format!("{}A", (PER_STEP + 2) % 30)})
    );
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}
