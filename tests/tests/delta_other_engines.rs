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

/// A table with the constraints a data engineer writes: some added through Python `deltalake`
/// (which stores them rewritten: `IN` as `OR`s, `BETWEEN` as two comparisons, casts as `::`,
/// `seat.row` as `get_field`), and some in the words Spark keeps, put in the log as Databricks
/// writes it (an `ALTER TABLE ... ADD CONSTRAINT` commit's metadata).
const CREATE_WITH_CONSTRAINTS: &str = r#"
import glob, json, sys
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
seat = pa.struct([pa.field("no", pa.string()), pa.field("row", pa.int64())])
schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("price", pa.decimal128(10, 2)),
                    pa.field("qty", pa.int32()), pa.field("kind", pa.string()), pa.field("day", pa.date32()),
                    pa.field("lo", pa.float64()), pa.field("hi", pa.float64()), pa.field("seat", seat)])
write_deltalake(sys.argv[1], pa.Table.from_pylist([], schema=schema))
DeltaTable(sys.argv[1]).alter.add_constraint({
    "qty_and_kind": "qty BETWEEN 1 AND 10 AND (kind IN ('adult', 'child') OR kind IS NULL)",
    "recent": "day >= '2020-01-01'",
    "seat_row": "seat.row > 0 OR seat IS NULL",
})
spark = {
    "delta.constraints.amount_limit": "price * qty <= 100.00 OR kind = 'child'",
    "delta.constraints.range_order": "NOT (lo > hi) AND hi - lo < 10",
    "delta.constraints.kind_code": "kind NOT LIKE 'x%' AND length(kind) <= 8",
    "delta.constraints.this_decade": "day BETWEEN DATE '2020-01-01' AND DATE '2029-12-31'",
    "delta.constraints.seat_no": "seat IS NULL OR seat.no IN ('1A', '2B', '3C')",
}
last = sorted(glob.glob(sys.argv[1] + "/_delta_log/*.json"))[-1]
actions = [json.loads(line) for line in open(last)]
for action in actions:
    if "metaData" in action:
        action["metaData"]["configuration"].update(spark)
open(last, "w").write("".join(json.dumps(a) + "\n" for a in actions))
print(json.dumps(DeltaTable(sys.argv[1]).metadata().configuration))
"#;

#[test]
fn constraints_as_spark_and_delta_rs_write_them_are_evaluated_and_breaking_records_dead_lettered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("constrained");
    let configuration = python(CREATE_WITH_CONSTRAINTS, &table);
    assert_eq!(
        configuration["delta.constraints.qty_and_kind"],
        "qty >= 1 AND qty <= 10 AND (kind = 'adult' OR kind = 'child' OR kind IS NULL)",
        "{configuration}"
    );
    let good = json!({"id": 1, "price": "19.99", "qty": 5, "kind": "adult", "day": "2026-05-01",
                      "lo": 1.5, "hi": 2.5, "seat": {"no": "2B", "row": 4}});
    let with = |id: i64, field: &str, value: Value| {
        let mut record = good.clone();
        record["id"] = json!(id);
        record[field] = value;
        record
    };
    let cases = [
        (
            {
                let mut r = with(2, "qty", json!(11));
                r["price"] = json!("1.00");
                r
            },
            Some("qty_and_kind"),
        ),
        (with(3, "kind", json!("senior")), Some("qty_and_kind")),
        // Null satisfies `qty_and_kind` (`OR kind IS NULL`) but not `kind_code`.
        (with(4, "kind", Value::Null), Some("kind_code")),
        (with(5, "price", json!("20.01")), Some("amount_limit")),
        (
            {
                let mut r = with(6, "price", json!("20.01"));
                r["kind"] = json!("child");
                r
            },
            None,
        ),
        (with(7, "lo", json!(3.0)), Some("range_order")),
        (with(8, "hi", json!(12.0)), Some("range_order")),
        (with(9, "day", json!("2019-12-31")), Some("recent")),
        (with(10, "day", json!("2030-01-01")), Some("this_decade")),
        (
            with(11, "seat", json!({"no": "1A", "row": 0})),
            Some("seat_row"),
        ),
        (
            with(12, "seat", json!({"no": "9Z", "row": 1})),
            Some("seat_no"),
        ),
        (with(13, "seat", Value::Null), None),
        // A record breaking several constraints names the first (by name) it breaks; here the
        // `OR` keeps `amount_limit` despite the null.
        (
            {
                let mut r = with(14, "qty", Value::Null);
                r["kind"] = json!("child");
                r
            },
            Some("qty_and_kind"),
        ),
        (with(15, "price", json!("0.01")), None),
    ];
    let mut lines = format!("{good}\n");
    for (record, _) in &cases {
        lines.push_str(&format!("{record}\n"));
    }
    std::fs::write(dir.path().join("input.jsonl"), lines).expect("input");
    let config = config(dir.path(), "constrained");
    run_to_completion(&config, Duration::from_secs(120));

    let rows = python(READ, &table);
    let written: Vec<i64> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect();
    let mut expected_written = vec![1];
    expected_written.extend(
        cases
            .iter()
            .filter(|(_, broken)| broken.is_none())
            .map(|(r, _)| r["id"].as_i64().expect("id")),
    );
    assert_eq!(written, expected_written);
    let letters: Vec<(i64, String)> = read_jsonl_dir(&dir.path().join("dead_letters"))
        .iter()
        .map(|l| {
            let body: Value =
                serde_json::from_str(l["body"].as_str().expect("body")).expect("json");
            (
                body["id"].as_i64().expect("id"),
                l["reason"].as_str().expect("reason").to_owned(),
            )
        })
        .collect();
    let mut letters = letters;
    letters.sort();
    let expected_letters: Vec<(i64, String)> = cases
        .iter()
        .filter_map(|(record, broken)| {
            let name = (*broken)?;
            let sql = configuration[format!("delta.constraints.{name}")]
                .as_str()
                .expect("constraint");
            Some((
                record["id"].as_i64().expect("id"),
                format!("the row breaks the table's check constraint `{name}` ({sql})"),
            ))
        })
        .collect();
    assert_eq!(letters, expected_letters);
}

#[test]
fn a_constraint_beyond_the_grammar_refuses_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("beyond");
    python(
        &CREATE_WITH_CONSTRAINTS.replace(
            "\"NOT (lo > hi) AND hi - lo < 10\"",
            "\"regexp_like(kind, '^[a-z]+$')\"",
        ),
        &table,
    );
    std::fs::write(dir.path().join("input.jsonl"), "{\"id\":1}\n").expect("input");
    let config = config(dir.path(), "beyond");
    let process = WeirProcess::run(&config);
    let status = process.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(
            "check constraint `range_order` (`regexp_like(kind, '^[a-z]+$')`) is beyond what this writer evaluates: the function `regexp_like`"
        ),
        "{log}"
    );
}
