//! The Delta type system through `weir run` (issue 16): a table with every type the sink writes,
//! nested columns included, read back by the Python `deltalake` package and by polars equal to
//! the input,
//! decimals exact to the last digit; an out-of-range decimal and a wrong nested type dead-lettered
//! with the column named; a misspelt type refused at start with file, line and key.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::{WeirProcess, plugin_path, python_command, read_jsonl_dir, run_to_completion};

/// A sink with every type; `partition_by` on a date and an hour derived from a timestamp.
const COLUMNS: &str = r#"
partition_by = ["day", "hour"]

[[sinks.all_types.columns]]
name = "id"
type = "long"
nullable = false
[[sinks.all_types.columns]]
name = "name"
type = "string"
[[sinks.all_types.columns]]
name = "small"
type = "smallint"
[[sinks.all_types.columns]]
name = "tiny"
type = "tinyint"
[[sinks.all_types.columns]]
name = "ratio"
type = "float"
[[sinks.all_types.columns]]
name = "score"
type = "double"
[[sinks.all_types.columns]]
name = "ok"
type = "boolean"
[[sinks.all_types.columns]]
name = "blob"
type = "binary"
[[sinks.all_types.columns]]
name = "amount"
type = "decimal(10,2)"
[[sinks.all_types.columns]]
name = "big"
type = "decimal(38,9)"
[[sinks.all_types.columns]]
name = "at"
type = "timestamp"
[[sinks.all_types.columns]]
name = "local"
type = "timestamp_ntz"
[[sinks.all_types.columns]]
name = "born"
type = "date"
[[sinks.all_types.columns]]
name = "seats"
type = "array<struct<seat_no:string,price:decimal(10,2)>>"
[[sinks.all_types.columns]]
name = "counts"
type = "map<string,long>"
[[sinks.all_types.columns]]
name = "deep"
type = "struct<tags:array<string>,inner:struct<level:int,matrix:array<array<int>>,notes:map<string,array<decimal(5,1)>>>>"
[[sinks.all_types.columns]]
name = "day"
type = "date"
from = "at"
derive = "date"
[[sinks.all_types.columns]]
name = "hour"
type = "integer"
from = "at"
derive = "hour"
"#;

fn config(dir: &Path, columns: &str) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.input]
kind = "file"
path = "input.jsonl"

[sinks.all_types]
kind = "delta"
path = "delta/all_types"
{columns}

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.types]
source = "input"
dead_letter = "dead_letters"

[[pipelines.types.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "all_types" }}
"#,
        plugin = plugin_path("passthrough").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// The records written: `expected` is how the reader must see each (None for refused ones).
fn records() -> Vec<(Value, Option<Value>)> {
    vec![
        (
            json!({
                "id": 1, "name": "first", "small": -32768, "tiny": 127, "ratio": 0.5,
                "score": 1.25, "ok": true, "blob": "AAEC/w==", "amount": 19.99,
                "big": "12345678901234567890123456789.123456789",
                "at": "2026-05-01T10:15:00Z", "local": "2026-05-01T10:15:00.123456",
                "born": "1990-12-31",
                "seats": [{"seat_no": "1A", "price": 0.1}, {"seat_no": "1B", "price": "99999999.99"}],
                "counts": {"adults": 2, "children": 0},
                "deep": {"tags": ["a", "b"], "inner": {"level": 3, "matrix": [[1, 2], [], [3]],
                         "notes": {"x": [1.5, -0.5], "y": []}}},
                "ignored": "not a column"
            }),
            Some(json!({
                "id": 1, "name": "first", "small": -32768, "tiny": 127, "ratio": 0.5,
                "score": 1.25, "ok": true, "blob": "AAEC/w==", "amount": "19.99",
                "big": "12345678901234567890123456789.123456789",
                "at": "2026-05-01T10:15:00+00:00", "local": "2026-05-01T10:15:00.123456",
                "born": "1990-12-31",
                "seats": [{"seat_no": "1A", "price": "0.10"}, {"seat_no": "1B", "price": "99999999.99"}],
                "counts": [["adults", 2], ["children", 0]],
                "deep": {"tags": ["a", "b"], "inner": {"level": 3, "matrix": [[1, 2], [], [3]],
                         "notes": [["x", ["1.5", "-0.5"]], ["y", []]]}},
                "day": "2026-05-01", "hour": 10
            })),
        ),
        (
            // Nulls everywhere they are allowed, at every depth.
            json!({
                "id": 2, "amount": "-0.01", "at": 1777630500000_i64, "local": 0,
                "seats": [null, {"seat_no": null, "price": null}], "counts": {"none": null},
                "deep": {"tags": null, "inner": null}
            }),
            Some(json!({
                "id": 2, "name": null, "small": null, "tiny": null, "ratio": null,
                "score": null, "ok": null, "blob": null, "amount": "-0.01", "big": null,
                "at": "2026-05-01T10:15:00+00:00", "local": "1970-01-01T00:00:00",
                "born": null,
                "seats": [null, {"seat_no": null, "price": null}],
                "counts": [["none", null]],
                "deep": {"tags": null, "inner": null},
                "day": "2026-05-01", "hour": 10
            })),
        ),
        (
            // An out-of-range decimal: refused, the column named.
            json!({"id": 3, "amount": 123456789.5, "at": "2026-05-01T11:00:00Z"}),
            None,
        ),
        (
            // A wrong type deep inside a nested column: refused, the path named.
            json!({"id": 4, "at": "2026-05-01T11:00:00Z",
                   "deep": {"inner": {"level": 1, "matrix": [[1], ["two"]]}}}),
            None,
        ),
        (
            // A decimal with more digits after the point than its scale: refused, not rounded.
            json!({"id": 5, "at": "2026-05-01T11:00:00Z",
                   "seats": [{"seat_no": "2C", "price": 10.005}]}),
            None,
        ),
        (
            json!({"id": 6, "at": "2026-05-02T23:59:59Z", "tiny": 128}),
            None,
        ),
    ]
}

/// Reads the table with Python `deltalake` (through pyarrow) and with polars, every value in a
/// JSON form that keeps decimals as their exact text and binary as base64.
fn read_table(table: &Path) -> (Vec<Value>, Vec<Value>, Value) {
    const SCRIPT: &str = r#"
import base64, datetime, decimal, json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
def plain(v):
    if isinstance(v, decimal.Decimal): return str(v)
    if isinstance(v, bytes): return base64.b64encode(v).decode()
    if isinstance(v, datetime.datetime): return v.isoformat()
    if isinstance(v, datetime.date): return v.isoformat()
    if isinstance(v, dict): return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)): return [plain(x) for x in v]
    return v
rows = [plain(r) for r in t.to_pyarrow_table().to_pylist()]
schema = json.loads(t.schema().to_json())
import polars
polars_rows = [plain(r) for r in polars.read_delta(sys.argv[1]).to_dicts()]
print(json.dumps({"rows": rows, "polars_rows": polars_rows, "schema": schema, "partitions": t.metadata().partition_columns,
                  "protocol": [t.protocol().min_reader_version, t.protocol().min_writer_version,
                               t.protocol().writer_features]}))
"#;
    let output = python_command(SCRIPT)
        .arg(table)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).expect("json");
    let sorted = |key: &str| {
        let mut rows = value[key].as_array().expect("rows").clone();
        rows.sort_by_key(|r| r["id"].as_i64());
        rows
    };
    (sorted("rows"), sorted("polars_rows"), value)
}

/// `[[key, value], ...]` as `{key: value, ...}` (null stays null).
fn pairs_to_object(value: &mut Value) {
    if let Value::Array(pairs) = value {
        let object = pairs
            .iter()
            .map(|pair| (pair[0].as_str().expect("a key").to_owned(), pair[1].clone()))
            .collect();
        *value = Value::Object(object);
    }
}

#[test]
fn every_type_written_by_weir_run_reads_back_equal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let records = records();
    let input: String = records
        .iter()
        .map(|(record, _)| format!("{record}\n"))
        .collect();
    std::fs::write(dir.path().join("input.jsonl"), input).expect("input");
    let config = config(dir.path(), COLUMNS);
    run_to_completion(&config, Duration::from_secs(120));

    let (rows, polars_rows, table) = read_table(&dir.path().join("delta/all_types"));
    let expected: Vec<Value> = records.iter().filter_map(|(_, e)| e.clone()).collect();
    assert_eq!(
        rows, expected,
        "rows as the Python deltalake reader sees them"
    );
    // polars shows a map as an object, pyarrow as a list of pairs.
    let mut expected_by_polars = expected.clone();
    for row in &mut expected_by_polars {
        pairs_to_object(&mut row["counts"]);
        if let Some(inner) = row["deep"]["inner"].as_object_mut()
            && let Some(notes) = inner.get_mut("notes")
        {
            pairs_to_object(notes);
        }
    }
    assert_eq!(polars_rows, expected_by_polars, "rows as polars sees them");
    assert_eq!(table["partitions"], json!(["day", "hour"]));
    // The Delta types are the ones spelt in the configuration.
    let types: Vec<(String, Value)> = table["schema"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            (
                f["name"].as_str().expect("name").to_owned(),
                f["type"].clone(),
            )
        })
        .collect();
    let type_of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("column {name}"))
    };
    assert_eq!(type_of("small"), json!("short"));
    assert_eq!(type_of("tiny"), json!("byte"));
    assert_eq!(type_of("ratio"), json!("float"));
    assert_eq!(type_of("blob"), json!("binary"));
    assert_eq!(type_of("amount"), json!("decimal(10,2)"));
    assert_eq!(type_of("local"), json!("timestamp_ntz"));
    assert_eq!(type_of("seats")["type"], json!("array"));
    assert_eq!(
        type_of("seats")["elementType"]["fields"][1]["type"],
        json!("decimal(10,2)")
    );
    assert_eq!(type_of("counts")["type"], json!("map"));

    let letters = read_jsonl_dir(&dir.path().join("dead_letters"));
    let mut reasons: Vec<String> = letters
        .iter()
        .map(|l| l["reason"].as_str().expect("reason").to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    let has = |text: &str| {
        assert!(
            reasons.iter().any(|r| r.contains(text)),
            "a reason contains {text:?}: {reasons:#?}"
        );
    };
    has(
        "column `amount` expects a decimal(10,2), found 123456789.5 (9 digits before the point, at most 8 fit)",
    );
    has("column `deep` at `deep.inner.matrix[1][0]` expects an integer, found \"two\"");
    has(
        "column `seats` at `seats[0].price` expects a decimal(10,2), found 10.005 (3 digits after the point, at most 2 fit)",
    );
    has("column `tiny` expects a byte (-128 to 127), found 128");
}

#[test]
fn a_misspelt_type_is_refused_at_start_with_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("input.jsonl"), "").expect("input");
    let columns = "[[sinks.all_types.columns]]\nname = \"seats\"\ntype = \"array<struct<seat_no:string,price:decimal(10,2)>\"\n";
    let config = config(dir.path(), columns);
    let process = WeirProcess::run(&config);
    let log_path = config.with_extension("log");
    let status = process.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("weir.toml:15:8: `sinks.all_types.columns[0].type`")
            && log.contains(
                "invalid type `array<struct<seat_no:string,price:decimal(10,2)>`: expected `>` at the end"
            ),
        "{log}"
    );
}
