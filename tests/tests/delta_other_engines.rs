//! Tables created elsewhere (issue 16): a table the Python `deltalake` package created with
//! deletion vectors, timestamp_ntz, a NOT NULL column and a CHECK constraint is appended to by
//! `weir run` (its columns taken from the table), and records breaking the constraint or the
//! NOT NULL column go to the dead letters with the constraint named; a table with column mapping,
//! which this writer cannot append under, is refused at start with the feature named.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::{WeirProcess, plugin_path, python_command, read_jsonl_dir, run_to_completion};

fn python(script: &str, table: &Path) -> Value {
    let output = python_command(script).arg(table).output().expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

const CREATE_WITH_CONSTRAINT: &str = r#"
import decimal, json, sys
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.decimal128(10, 2)),
                    pa.field("at", pa.timestamp("us"))])
rows = pa.Table.from_pylist([{"id": 0, "price": decimal.Decimal("1.00"), "at": None}], schema=schema)
write_deltalake(sys.argv[1], rows, configuration={"delta.enableDeletionVectors": "true"})
DeltaTable(sys.argv[1]).alter.add_constraint({"price_positive": "price > 0"})
print(json.dumps(DeltaTable(sys.argv[1]).protocol().writer_features))
"#;

/// Read through `QueryBuilder` (DataFusion): the pyarrow path of the Python package does not read
/// tables with the deletion vectors reader feature.
const READ: &str = r#"
import json, sys
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
query = QueryBuilder().register("t", DeltaTable(sys.argv[1])).execute("select * from t order by id")
print(json.dumps(pa.table(query.read_all()).to_pylist(), default=str))
"#;

fn config(dir: &Path, table: &str) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.input]
kind = "file"
path = "input.jsonl"

[sinks.table]
kind = "delta"
path = "{table}"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.p]
source = "input"
dead_letter = "dead_letters"

[[pipelines.p.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "table" }}
"#,
        plugin = plugin_path("passthrough").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

#[test]
fn a_table_with_a_constraint_and_newer_features_is_appended_to_and_breaking_records_dead_lettered()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("made_elsewhere");
    let features = python(CREATE_WITH_CONSTRAINT, &table);
    for feature in ["deletionVectors", "checkConstraints", "timestampNtz"] {
        assert!(
            features
                .as_array()
                .is_some_and(|f| f.contains(&json!(feature))),
            "{features}"
        );
    }
    let input = [
        json!({"id": 1, "price": "19.99", "at": "2026-05-01T10:00:00"}),
        json!({"id": 2, "price": -1}),
        json!({"id": 3, "price": 0}),
        json!({"id": 4, "price": null}),
        json!({"price": 5}),
        json!({"id": 5, "price": 0.01}),
    ];
    let lines: String = input.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.path().join("input.jsonl"), lines).expect("input");
    let config = config(dir.path(), "made_elsewhere");
    run_to_completion(&config, Duration::from_secs(120));

    let rows = python(READ, &table);
    assert_eq!(
        rows,
        json!([
            {"id": 0, "price": "1.00", "at": null},
            {"id": 1, "price": "19.99", "at": "2026-05-01 10:00:00"},
            {"id": 5, "price": "0.01", "at": null},
        ])
    );
    let mut letters: Vec<(Value, String)> = read_jsonl_dir(&dir.path().join("dead_letters"))
        .iter()
        .map(|l| {
            let body: Value =
                serde_json::from_str(l["body"].as_str().expect("body")).expect("json");
            (body, l["reason"].as_str().expect("reason").to_owned())
        })
        .collect();
    letters.sort_by_key(|(body, _)| body["id"].as_i64());
    let constraint = "the row breaks the table's check constraint `price_positive` (price > '0'::decimal(10, 2))";
    assert_eq!(
        letters,
        vec![
            (
                json!({"price": 5}),
                "column `id` is not nullable, but the record has no field `id`".to_owned()
            ),
            (json!({"id": 2, "price": -1}), constraint.to_owned()),
            (json!({"id": 3, "price": 0}), constraint.to_owned()),
            (json!({"id": 4, "price": null}), constraint.to_owned()),
        ]
    );
}

#[test]
fn a_table_with_column_mapping_is_refused_at_start_naming_the_feature() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("mapped");
    python(
        r#"
import json, sys
import pyarrow as pa
from deltalake import DeltaTable
schema = pa.schema([pa.field("id", pa.int64())])
DeltaTable.create(sys.argv[1], schema=schema, configuration={"delta.columnMapping.mode": "name"})
print(json.dumps(DeltaTable(sys.argv[1]).metadata().configuration))
"#,
        &table,
    );
    std::fs::write(dir.path().join("input.jsonl"), "{\"id\":1}\n").expect("input");
    let config = config(dir.path(), "mapped");
    let process = WeirProcess::run(&config);
    let status = process.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("uses writer features this sink cannot append under: `columnMapping`"),
        "{log}"
    );
}
