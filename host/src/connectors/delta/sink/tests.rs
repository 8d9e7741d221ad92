//! Tests of the Delta sink: conversion, exactly-once replays, concurrent partitions, date
//! partitions and schema checks, read back with the Rust kernel and with the Python `deltalake`
//! package as an independent reader.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::compute::concat_batches;
use deltalake::arrow::datatypes::{Int32Type, Int64Type, Schema};
use deltalake::kernel::engine::arrow_data::ArrowEngineData;
use serde_json::{Value, json};

use super::convert::{Cell, Json, RowConverter, convert, validate};
use super::location::Location;
use super::*;
use crate::config::{ColumnType, DeltaSinkConfig};
use crate::event::Event;
use crate::sink::RefusalKind;

// ---------------------------------------------------------------------------------------------
// Helpers

fn sink_config(path: &Path, toml_body: &str) -> DeltaSinkConfig {
    let text = format!(
        "path = {}\n{toml_body}",
        toml::Value::String(path.display().to_string())
    );
    toml::from_str(&text).expect("a valid Delta sink configuration")
}

/// Telemetry columns: readings from JSON plus metadata columns.
const TELEMETRY: &str = r#"
[[columns]]
name = "DeviceId"
type = "string"
nullable = false
[[columns]]
name = "Temperature"
type = "double"
[[columns]]
name = "Timestamp"
type = "timestamp"
[[columns]]
name = "Position"
type = "long"
value = "position"
nullable = false
[[columns]]
name = "Partition"
type = "integer"
value = "partition"
nullable = false
"#;

fn scope(pipeline: &str, partition: u32) -> WriterScope {
    WriterScope {
        pipeline: Arc::from(pipeline),
        partition,
    }
}

fn reading(partition: u32, position: u64) -> Event {
    Event::new(
        partition,
        position,
        format!(
            r#"{{"DeviceId":"device-{partition}","Temperature":{}.5,"Timestamp":"2024-05-01T10:{:02}:00Z"}}"#,
            20 + position % 10,
            position % 60
        ),
    )
}

fn readings(partition: u32, positions: std::ops::Range<u64>) -> Vec<Event> {
    positions.map(|p| reading(partition, p)).collect()
}

async fn open(dir: &Path, toml_body: &str) -> DeltaSink {
    DeltaSink::open_at("delta", &sink_config(dir, toml_body), Location::local(dir))
        .await
        .expect("the sink opens")
}

async fn writer(
    sink: &DeltaSink,
    partition: u32,
    progress: Option<&SinkProgress>,
) -> Box<dyn SinkWriter> {
    sink.open_writer(&scope("p", partition), progress)
        .await
        .expect("the writer opens")
}

async fn write_all(writer: &mut Box<dyn SinkWriter>, records: Vec<Event>) {
    let refused = writer.write(records).await.expect("write succeeds");
    assert!(refused.is_empty(), "unexpected refusals: {refused:?}");
}

/// Every row of the table, read with delta-kernel (log replay → parquet → arrow).
async fn read_with_rust(dir: &Path) -> RecordBatch {
    let url = deltalake::ensure_table_uri(dir.to_string_lossy()).expect("a table URL");
    let table = deltalake::open_table(url).await.expect("the table loads");
    let log_store = table.log_store();
    let snapshot = deltalake::kernel::Snapshot::try_new(log_store.as_ref(), None)
        .await
        .expect("a snapshot");
    let scan = snapshot.scan_builder().build().expect("a scan");
    let kernel_scan = Arc::clone(scan.snapshot())
        .scan_builder()
        .build()
        .expect("a kernel scan");
    let engine = log_store.engine(None);
    let schema = table.snapshot().expect("loaded").snapshot().arrow_schema();
    let batches: Vec<RecordBatch> = tokio::task::spawn_blocking(move || {
        kernel_scan
            .execute(engine)
            .expect("the scan runs")
            .map(|data| {
                ArrowEngineData::try_from_engine_data(data.expect("scan data"))
                    .expect("arrow data")
                    .record_batch()
                    .clone()
            })
            .collect()
    })
    .await
    .expect("the scan task");
    let schema = batches.first().map_or(schema, RecordBatch::schema);
    concat_batches(&schema, &batches).expect("batches concatenate")
}

fn longs(batch: &RecordBatch, column: &str) -> Vec<Option<i64>> {
    let column = batch.column_by_name(column).expect("the column exists");
    let array = column.as_primitive::<Int64Type>();
    (0..array.len())
        .map(|i| array.is_valid(i).then(|| array.value(i)))
        .collect()
}

fn ints(batch: &RecordBatch, column: &str) -> Vec<Option<i32>> {
    let column = batch.column_by_name(column).expect("the column exists");
    let array = column.as_primitive::<Int32Type>();
    (0..array.len())
        .map(|i| array.is_valid(i).then(|| array.value(i)))
        .collect()
}

/// (partition, position) of every row, sorted.
fn row_keys(batch: &RecordBatch) -> Vec<(i32, i64)> {
    let mut keys: Vec<(i32, i64)> = ints(batch, "Partition")
        .into_iter()
        .zip(longs(batch, "Position"))
        .map(|(p, q)| (p.expect("partition"), q.expect("position")))
        .collect();
    keys.sort_unstable();
    keys
}

fn expected_keys(ranges: &[(i32, std::ops::Range<i64>)]) -> Vec<(i32, i64)> {
    let mut keys: Vec<(i32, i64)> = ranges
        .iter()
        .flat_map(|(p, r)| r.clone().map(move |q| (*p, q)))
        .collect();
    keys.sort_unstable();
    keys
}

/// The Python interpreter of the project's virtual environment.
fn python() -> PathBuf {
    match std::env::var_os("WEIR_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

/// Runs `script` with the Python `deltalake` package; the script prints one JSON document.
fn run_python(script: &str, args: &[&str]) -> Value {
    let python = python();
    assert!(
        python.exists(),
        "no Python interpreter at {}: run the project's setup script `scripts/setup` (it creates \
         `.venv` at the workspace root with deltalake, pandas and pyarrow), or point WEIR_PYTHON at \
         an interpreter that has them",
        python.display()
    );
    // `os._exit` after flushing skips the interpreter's teardown, where pyarrow's native threads
    // were seen to abort the process ("terminate called without an active exception") after the
    // script's work was done; an exception in the script still exits non-zero before it.
    let guarded = format!(
        "{script}\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"
    );
    let output = Command::new(&python)
        .arg("-c")
        .arg(guarded)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "the Python reader failed ({}): {}\nIf `deltalake` is missing, run the project's setup script `scripts/setup`.",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the Python reader printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Rows (partition, position), transaction versions and partition values, as Python sees them.
const PY_READ: &str = r#"
import json, sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
df = dt.to_pandas()
keys = sorted([int(p), int(q)] for p, q in zip(df["Partition"], df["Position"]))
txns = {app: dt.transaction_version(app) for app in sys.argv[2:]}
print(json.dumps({"version": dt.version(), "rows": keys, "txns": txns}))
"#;

fn py_keys(value: &Value) -> Vec<(i32, i64)> {
    value["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|pair| {
            let p = pair[0].as_i64().expect("partition");
            (
                i32::try_from(p).expect("small partition"),
                pair[1].as_i64().expect("position"),
            )
        })
        .collect()
}

/// The actions of every commit after the table's creation, by version.
fn commits(dir: &Path) -> BTreeMap<u64, Vec<Value>> {
    let mut commits = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("_delta_log")).expect("a log directory") {
        let path = entry.expect("a log entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(version) = name
            .strip_suffix(".json")
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("a log file");
        let actions = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON action"))
            .collect();
        if version > 0 {
            commits.insert(version, actions);
        }
    }
    commits
}

fn txns_of(actions: &[Value]) -> BTreeMap<String, i64> {
    actions
        .iter()
        .filter_map(|a| a.get("txn"))
        .map(|t| {
            (
                t["appId"].as_str().expect("appId").to_owned(),
                t["version"].as_i64().expect("version"),
            )
        })
        .collect()
}

fn adds_of(actions: &[Value]) -> usize {
    actions.iter().filter(|a| a.get("add").is_some()).count()
}

fn progress_position(progress: &Value) -> Option<u64> {
    progress["position"].as_u64()
}

// ---------------------------------------------------------------------------------------------
// 1. Types and conversion

fn text(s: &str) -> Json<'_> {
    Json::Text(Cow::Borrowed(s))
}

#[test]
fn converts_each_type() {
    assert_eq!(
        convert(ColumnType::String, text("abc")),
        Ok(Cell::Text(Cow::Borrowed("abc")))
    );
    assert_eq!(
        convert(ColumnType::String, Json::Int(3)),
        Err("3".to_owned())
    );

    assert_eq!(convert(ColumnType::Long, Json::Int(-7)), Ok(Cell::Long(-7)));
    assert_eq!(convert(ColumnType::Long, Json::UInt(7)), Ok(Cell::Long(7)));
    assert_eq!(
        convert(ColumnType::Long, Json::Float(42.0)),
        Ok(Cell::Long(42))
    );
    assert_eq!(
        convert(ColumnType::Long, Json::Float(1.5)),
        Err("1.5".to_owned())
    );
    assert_eq!(
        convert(ColumnType::Long, Json::UInt(u64::MAX)),
        Err(u64::MAX.to_string())
    );
    assert_eq!(
        convert(ColumnType::Long, text("12")),
        Err(r#""12""#.to_owned())
    );

    assert_eq!(
        convert(ColumnType::Integer, Json::Int(12)),
        Ok(Cell::Integer(12))
    );
    assert_eq!(
        convert(ColumnType::Integer, Json::Float(-3.0)),
        Ok(Cell::Integer(-3))
    );
    assert_eq!(
        convert(ColumnType::Integer, Json::Int(1 << 40)),
        Err((1_i64 << 40).to_string())
    );

    assert_eq!(
        convert(ColumnType::Double, Json::Float(21.5)),
        Ok(Cell::Double(21.5))
    );
    assert_eq!(
        convert(ColumnType::Double, Json::Int(21)),
        Ok(Cell::Double(21.0))
    );
    assert_eq!(
        convert(ColumnType::Double, text("hot")),
        Err(r#""hot""#.to_owned())
    );

    assert_eq!(
        convert(ColumnType::Boolean, Json::Bool(true)),
        Ok(Cell::Boolean(true))
    );
    assert_eq!(
        convert(ColumnType::Boolean, Json::Int(1)),
        Err("1".to_owned())
    );

    // 2024-05-01T10:00:00Z = 1_714_557_600 s.
    let micros = 1_714_557_600_000_000;
    assert_eq!(
        convert(ColumnType::Timestamp, text("2024-05-01T10:00:00Z")),
        Ok(Cell::Micros(micros))
    );
    assert_eq!(
        convert(
            ColumnType::Timestamp,
            text("2024-05-01T12:00:00.000123+02:00")
        ),
        Ok(Cell::Micros(micros + 123))
    );
    assert_eq!(
        convert(ColumnType::Timestamp, Json::Int(1_714_557_600_000)),
        Ok(Cell::Micros(micros))
    );
    assert_eq!(
        convert(ColumnType::Timestamp, Json::Float(1_714_557_600_000.5)),
        Ok(Cell::Micros(micros + 500))
    );
    assert_eq!(
        convert(ColumnType::Timestamp, text("yesterday")),
        Err(r#""yesterday""#.to_owned())
    );
    assert_eq!(
        convert(ColumnType::Timestamp, Json::Int(i64::MAX)),
        Err(i64::MAX.to_string())
    );

    // 2024-05-01 is day 19844.
    assert_eq!(
        convert(ColumnType::Date, text("2024-05-01")),
        Ok(Cell::Days(19_844))
    );
    assert_eq!(
        convert(ColumnType::Date, text("2024-05-01T23:30:00-02:00")),
        Ok(Cell::Days(19_845))
    );
    assert_eq!(
        convert(ColumnType::Date, Json::Int(1_714_557_600_000)),
        Ok(Cell::Days(19_844))
    );
    assert_eq!(
        convert(ColumnType::Date, text("1969-12-31")),
        Ok(Cell::Days(-1))
    );
    assert_eq!(
        convert(ColumnType::Date, text("2024-13-01")),
        Err(r#""2024-13-01""#.to_owned())
    );
    assert_eq!(
        convert(ColumnType::Date, Json::Bool(false)),
        Err("false".to_owned())
    );
    assert_eq!(
        convert(ColumnType::Date, Json::Object),
        Err("an object".to_owned())
    );
}

fn arrow_schema(config: &DeltaSinkConfig) -> Arc<Schema> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoArrow as _;
    let fields = config.columns.iter().map(|c| {
        deltalake::kernel::StructField::new(
            c.name.clone(),
            super::table::delta_type(&c.data_type).expect("a Delta type"),
            c.nullable,
        )
    });
    let schema = deltalake::kernel::StructType::try_new(fields).expect("a schema");
    Arc::new((&schema).try_into_arrow().expect("an arrow schema"))
}

fn converter(toml_body: &str) -> RowConverter {
    let config = sink_config(Path::new("/unused"), toml_body);
    RowConverter::new(&config, arrow_schema(&config)).expect("valid columns")
}

/// The reason `body` is refused, or `None` if it converts.
fn refusal(converter: &RowConverter, body: &str) -> Option<String> {
    let mut batch = converter.batch(1);
    batch
        .push(&Event::new(0, 0, body.to_owned()), 0)
        .err()
        .map(|(_, reason)| reason)
}

#[test]
fn a_refusal_says_whether_the_body_or_the_schema_is_at_fault() {
    let c = converter(TELEMETRY);
    let kind = |body: &str| {
        let mut batch = c.batch(1);
        batch
            .push(&Event::new(0, 0, body.to_owned()), 0)
            .err()
            .map(|(kind, _)| kind)
    };
    assert_eq!(kind(r#"{"DeviceId":"d""#), Some(RefusalKind::Malformed));
    assert_eq!(kind("[1]"), Some(RefusalKind::Malformed));
    assert_eq!(
        kind(r#"{"DeviceId":"d","Temperature":"hot"}"#),
        Some(RefusalKind::Schema)
    );
    assert_eq!(kind(r#"{"DeviceId":null}"#), Some(RefusalKind::Schema));
    assert_eq!(kind(r#"{"DeviceId":"d"}"#), None);
}

#[test]
fn refuses_records_with_reasons() {
    let c = converter(TELEMETRY);
    assert_eq!(
        refusal(
            &c,
            r#"{"DeviceId":"d","Temperature":21.5,"Timestamp":"2024-05-01T10:00:00Z"}"#
        ),
        None
    );
    assert_eq!(
        refusal(&c, r#"{"DeviceId":"d","Temperature":"hot"}"#).as_deref(),
        Some(r#"column `Temperature` expects a double, found "hot""#)
    );
    assert_eq!(
        refusal(&c, r#"{"Temperature":1}"#).as_deref(),
        Some("column `DeviceId` is not nullable, but the record has no field `DeviceId`")
    );
    assert_eq!(
        refusal(&c, r#"{"DeviceId":null}"#).as_deref(),
        Some("column `DeviceId` is not nullable, but field `DeviceId` is null")
    );
    assert_eq!(
        refusal(&c, r#"{"DeviceId":"d","Timestamp":[1,2]}"#).as_deref(),
        Some(
            "column `Timestamp` expects a timestamp (RFC 3339 text or epoch milliseconds), found an array"
        )
    );
    let malformed = refusal(&c, r#"{"DeviceId":"d""#).expect("malformed JSON is refused");
    assert!(malformed.starts_with("malformed JSON: "), "{malformed}");
    let not_object = refusal(&c, "[1]").expect("a JSON array is refused");
    assert!(
        not_object.starts_with("malformed JSON: ") && not_object.contains("a JSON object"),
        "{not_object}"
    );
    assert!(refusal(&c, r#"{"DeviceId":"d"} trailing"#).is_some());
    // Nullable columns take nulls and missing fields; unknown fields are ignored.
    assert_eq!(
        refusal(
            &c,
            r#"{"DeviceId":"d","Temperature":null,"Other":{"a":[1]}}"#
        ),
        None
    );
    // A long string is shortened in the reason.
    let long = format!(r#"{{"DeviceId":"d","Temperature":"{}"}}"#, "x".repeat(500));
    assert!(refusal(&c, &long).expect("refused").len() < 200);
}

#[test]
fn builds_batches_from_fields_and_metadata() {
    let c = converter(
        r#"
[[columns]]
name = "Id"
type = "string"
from = "id"
[[columns]]
name = "Count"
type = "integer"
[[columns]]
name = "Ok"
type = "boolean"
[[columns]]
name = "Day"
type = "date"
from = "at"
[[columns]]
name = "At"
type = "timestamp"
from = "at"
[[columns]]
name = "Ingested"
type = "timestamp"
value = "ingestion_time"
[[columns]]
name = "EventTime"
type = "long"
value = "event_time"
[[columns]]
name = "Position"
type = "long"
value = "position"
[[columns]]
name = "Partition"
type = "integer"
value = "partition"
"#,
    );
    let mut batch = c.batch(4);
    let mut first = Event::new(
        3,
        17,
        r#"{"id":"a\"b","Count":2.0,"Ok":true,"at":1714557600000}"#,
    );
    first.event_time = Some(1_714_557_600_123);
    batch.push(&first, 1_000).expect("converts");
    batch
        .push(&Event::new(3, 18, r#"{"id":null}"#), 2_000)
        .expect("nulls convert");
    assert!(
        batch
            .push(&Event::new(3, 19, r#"{"Count":"2"}"#), 0)
            .is_err()
    );
    let (batch, positions) = batch.finish().expect("a batch");
    assert_eq!(positions, vec![17, 18]);
    assert_eq!(batch.num_rows(), 2);
    let ids = batch.column(0).as_string::<i32>();
    assert_eq!(ids.value(0), "a\"b");
    assert!(ids.is_null(1));
    assert_eq!(ints(&batch, "Count"), vec![Some(2), None]);
    let days = batch
        .column(3)
        .as_primitive::<deltalake::arrow::datatypes::Date32Type>();
    assert_eq!(days.value(0), 19_844);
    let ingested = batch
        .column(5)
        .as_primitive::<deltalake::arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(
        (ingested.value(0), ingested.value(1)),
        (1_000_000, 2_000_000)
    );
    assert_eq!(
        longs(&batch, "EventTime"),
        vec![Some(1_714_557_600_123), None]
    );
    assert_eq!(longs(&batch, "Position"), vec![Some(17), Some(18)]);
    assert_eq!(ints(&batch, "Partition"), vec![Some(3), Some(3)]);
}

#[test]
fn refuses_unusable_column_definitions() {
    let check = |body: &str| {
        validate(&sink_config(Path::new("/t"), body))
            .err()
            .unwrap_or_default()
    };
    assert!(check("columns = []").contains("no columns"));
    assert!(
        check("[[columns]]\nname = \"a\"\ntype = \"long\"\nfrom = \"x\"\nvalue = \"position\"")
            .contains("set one")
    );
    assert!(
        check("[[columns]]\nname = \"a\"\ntype = \"string\"\nvalue = \"position\"")
            .contains("fits type long, not string")
    );
    assert!(
        check(
            "[[columns]]\nname = \"a\"\ntype = \"long\"\n[[columns]]\nname = \"a\"\ntype = \"long\""
        )
        .contains("twice")
    );
    assert!(
        check("partition_by = [\"b\"]\n[[columns]]\nname = \"a\"\ntype = \"long\"")
            .contains("`b`, which is not one of the columns")
    );
    assert!(
        check("partition_by = [\"a\"]\n[[columns]]\nname = \"a\"\ntype = \"long\"")
            .contains("every column")
    );
    assert_eq!(check(TELEMETRY), "");
}

// ---------------------------------------------------------------------------------------------
// 2. Exactly once across a crash and a replay

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_crash_writes_every_row_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("telemetry");
    let sink = open(&table, TELEMETRY).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..10)).await;
    let checkpointed = w.flush().await.expect("flush");
    assert_eq!(progress_position(&checkpointed), Some(9));
    assert_eq!(checkpointed["table_version"], json!(1));
    // Committed, but the process dies before the checkpoint records it...
    write_all(&mut w, readings(0, 10..15)).await;
    let lost = w.flush().await.expect("flush");
    assert_eq!(progress_position(&lost), Some(14));
    // ...and with rows buffered that were never committed.
    write_all(&mut w, readings(0, 15..18)).await;
    drop(w);
    drop(sink);

    // Restart: the pipeline replays from the checkpoint (position 10 onwards).
    let sink = open(&table, TELEMETRY).await;
    let mut w = writer(&sink, 0, Some(&checkpointed)).await;
    write_all(&mut w, readings(0, 10..20)).await;
    write_all(&mut w, readings(0, 20..25)).await;
    let progress = w.flush().await.expect("flush");
    assert_eq!(progress_position(&progress), Some(24));
    assert_eq!(progress["table_version"], json!(3));

    // A writer reopened in the same process drops what the old one buffered, and the old one is
    // refused from then on.
    write_all(&mut w, readings(0, 25..28)).await;
    let mut again = writer(&sink, 0, Some(&progress)).await;
    assert!(
        w.write(readings(0, 28..29)).await.is_err(),
        "the replaced writer is refused"
    );
    assert!(w.flush().await.is_err(), "the replaced writer is refused");
    write_all(&mut again, readings(0, 20..30)).await;
    assert_eq!(
        progress_position(&again.flush().await.expect("flush")),
        Some(29)
    );
    // Nothing buffered: the last progress, no empty commit.
    assert_eq!(
        progress_position(&again.flush().await.expect("flush")),
        Some(29)
    );

    let expected = expected_keys(&[(0, 0..30)]);
    let rows = read_with_rust(&table).await;
    assert_eq!(
        row_keys(&rows),
        expected,
        "the Rust reader sees every row once"
    );

    let app = app_id("p", "delta", 0);
    let py = run_python(PY_READ, &[&table.display().to_string(), &app]);
    assert_eq!(py_keys(&py), expected, "Python sees every row once");
    assert_eq!(py["txns"][&app], json!(29));
    assert_eq!(py["version"], json!(4));
    assert!(
        commits(&table).values().all(|actions| adds_of(actions) > 0),
        "no empty commits"
    );
}

/// `progress` as a checkpoint saved just before an idle advance hands it back on a restart.
fn pending_advance(progress: &Value) -> Value {
    let mut progress = progress.clone();
    progress[crate::sink::IDLE_ADVANCE_PENDING] = json!(true);
    progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_advance_records_at_the_checkpointed_position_are_written_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("telemetry");
    let sink = open(&table, TELEMETRY).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..10)).await;
    // Advance A: its checkpoint first, then its record at the last position 9, committed; the
    // process dies before the checkpoint after it.
    let before_a = w.flush().await.expect("flush");
    w.checkpointed(9);
    write_all(&mut w, vec![reading(0, 9)]).await;
    w.flush().await.expect("flush");
    drop(w);

    // The replay repeats A: the log says its record is in the table, so it is skipped...
    let mut w = writer(&sink, 0, Some(&pending_advance(&before_a))).await;
    write_all(&mut w, vec![reading(0, 9)]).await;
    w.flush().await.expect("flush");
    w.checkpointed(9);
    // ...and advance B, after a checkpoint, is written although the table holds position 9.
    let before_b = w.flush().await.expect("flush");
    w.checkpointed(9);
    write_all(&mut w, vec![reading(0, 9)]).await;
    let after_b = w.flush().await.expect("flush");
    w.checkpointed(9);
    // Advance C: checkpointed, then the process dies before its record is committed.
    let before_c = w.flush().await.expect("flush");
    assert_eq!(before_c, after_b);
    w.checkpointed(9);
    write_all(&mut w, vec![reading(0, 9)]).await;
    drop(w);
    assert_ne!(before_b["table_version"], before_c["table_version"]);

    // The replay repeats C: no commit of this partition after its checkpoint, so it is written.
    let mut w = writer(&sink, 0, Some(&pending_advance(&before_c))).await;
    write_all(&mut w, vec![reading(0, 9)]).await;
    let last = w.flush().await.expect("flush");
    drop(w);
    // A restart without a pending advance skips what the table holds, as always.
    let mut w = writer(&sink, 0, Some(&last)).await;
    write_all(&mut w, readings(0, 5..10)).await;
    w.flush().await.expect("flush");

    let mut expected = expected_keys(&[(0, 0..10)]);
    // A, B and C once each.
    expected.extend([(0, 9); 3]);
    expected.sort_unstable();
    let rows = read_with_rust(&table).await;
    assert_eq!(row_keys(&rows), expected);
}

// ---------------------------------------------------------------------------------------------
// 3. Partitions writing and flushing concurrently

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_partitions_get_exact_transactions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, TELEMETRY).await;
    let mut w0 = writer(&sink, 0, None).await;
    let mut w1 = writer(&sink, 1, None).await;
    let (a0, a1) = (app_id("p", "delta", 0), app_id("p", "delta", 1));

    write_all(&mut w0, readings(0, 0..5)).await;
    write_all(&mut w1, readings(1, 0..3)).await;
    // Both flush at once: one commit carries both partitions.
    let (p0, p1) = tokio::join!(w0.flush(), w1.flush());
    let (p0, p1) = (p0.expect("flush 0"), p1.expect("flush 1"));
    assert_eq!(
        (progress_position(&p0), progress_position(&p1)),
        (Some(4), Some(2))
    );
    assert_eq!(
        (&p0["table_version"], &p1["table_version"]),
        (&json!(1), &json!(1))
    );

    write_all(&mut w1, readings(1, 3..6)).await;
    let p1 = w1.flush().await.expect("flush 1");
    assert_eq!(
        (progress_position(&p1), &p1["table_version"]),
        (Some(5), &json!(2))
    );
    let p0 = w0.flush().await.expect("flush 0 with nothing buffered");
    assert_eq!(
        (progress_position(&p0), &p0["table_version"]),
        (Some(4), &json!(1))
    );

    write_all(&mut w0, readings(0, 5..8)).await;
    write_all(&mut w1, readings(1, 6..9)).await;
    let p0 = w0.flush().await.expect("flush 0");
    let p1 = w1
        .flush()
        .await
        .expect("flush 1 after its rows went with partition 0's commit");
    assert_eq!(
        (progress_position(&p0), &p0["table_version"]),
        (Some(7), &json!(3))
    );
    assert_eq!(
        (progress_position(&p1), &p1["table_version"]),
        (Some(8), &json!(3))
    );

    let log = commits(&table);
    assert_eq!(
        log.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "three commits, none empty"
    );
    assert_eq!(
        txns_of(&log[&1]),
        BTreeMap::from([(a0.clone(), 4), (a1.clone(), 2)])
    );
    assert_eq!(txns_of(&log[&2]), BTreeMap::from([(a1.clone(), 5)]));
    assert_eq!(
        txns_of(&log[&3]),
        BTreeMap::from([(a0.clone(), 7), (a1.clone(), 8)])
    );
    assert!(log.values().all(|actions| adds_of(actions) > 0));

    let expected = expected_keys(&[(0, 0..8), (1, 0..9)]);
    assert_eq!(row_keys(&read_with_rust(&table).await), expected);
    let py = run_python(PY_READ, &[&table.display().to_string(), &a0, &a1]);
    assert_eq!(py_keys(&py), expected);
    assert_eq!((&py["txns"][&a0], &py["txns"][&a1]), (&json!(7), &json!(8)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_leaves_no_rows_behind() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, TELEMETRY).await;
    let mut w0 = writer(&sink, 0, None).await;
    let mut w1 = writer(&sink, 1, None).await;
    write_all(&mut w0, readings(0, 0..5)).await;
    // The partition stops without a flush: its rows are beyond its checkpoint.
    drop(w0);
    write_all(&mut w1, readings(1, 0..2)).await;
    w1.flush().await.expect("flush");
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(1, 0..2)])
    );
    // The replay writes them.
    let mut w0 = writer(&sink, 0, None).await;
    write_all(&mut w0, readings(0, 0..5)).await;
    w0.flush().await.expect("flush");
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 0..5), (1, 0..2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partition_tasks_commit_exactly_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    // A small buffer, so that writes also commit early.
    let sink = Arc::new(open(&table, &format!("max_buffered_rows = 25\n{TELEMETRY}")).await);
    let mut tasks = Vec::new();
    for partition in 0..4u32 {
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            let mut w = writer(&sink, partition, None).await;
            let mut last = None;
            for round in 0..8u64 {
                write_all(&mut w, readings(partition, round * 10..round * 10 + 10)).await;
                if round % 2 == 1 || partition == 0 {
                    last = Some(w.flush().await.expect("flush"));
                }
            }
            last
        }));
    }
    for task in tasks {
        let progress = task.await.expect("the task").expect("a progress");
        assert_eq!(progress_position(&progress), Some(79));
    }
    let log = commits(&table);
    assert!(
        log.values().all(|actions| adds_of(actions) > 0),
        "no empty commits"
    );
    let mut highest = BTreeMap::new();
    for actions in log.values() {
        for (app, version) in txns_of(actions) {
            let previous = highest.insert(app, version);
            assert!(
                previous.is_none_or(|p| p < version),
                "transaction versions only grow"
            );
        }
    }
    assert_eq!(
        highest,
        (0..4).map(|p| (app_id("p", "delta", p), 79)).collect()
    );
    let expected = expected_keys(&[(0, 0..80), (1, 0..80), (2, 0..80), (3, 0..80)]);
    assert_eq!(row_keys(&read_with_rust(&table).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_two_processes_retry_instead_of_failing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    // Two sinks on one table stand for two processes that own different partitions.
    let first = Arc::new(open(&table, TELEMETRY).await);
    let second = Arc::new(open(&table, TELEMETRY).await);
    // Both writers open (and read the table) before either commits, so each one's first commit
    // after the other's is made against an old snapshot.
    let w0 = writer(&first, 0, None).await;
    let w1 = writer(&second, 1, None).await;
    let run = |mut w: Box<dyn SinkWriter>, partition: u32| async move {
        for round in 0..10u64 {
            write_all(&mut w, readings(partition, round * 5..round * 5 + 5)).await;
            w.flush().await.expect("a conflicting commit retries");
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(run(w0, 0)), tokio::spawn(run(w1, 1)));
    a.expect("process 1");
    b.expect("process 2");
    let log = commits(&table);
    assert_eq!(log.len(), 20);
    let stale = log
        .iter()
        .filter(|(version, actions)| {
            let read = actions
                .iter()
                .find_map(|a| a["commitInfo"]["readVersion"].as_u64())
                .expect("a read version");
            read + 1 < **version
        })
        .count();
    assert!(
        stale > 0,
        "some commits were made against an older version and retried"
    );
    let expected = expected_keys(&[(0, 0..50), (1, 0..50)]);
    assert_eq!(row_keys(&read_with_rust(&table).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_of_one_partition_never_write_a_row_twice() {
    // Two processes briefly own one partition while its ownership moves: the second commit
    // conflicts on the partition's transaction, is redone against the table, and writes only
    // what the first did not.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let first = open(&table, TELEMETRY).await;
    let second = open(&table, TELEMETRY).await;
    let mut owner = writer(&first, 0, None).await;
    let mut zombie = writer(&second, 0, None).await;
    write_all(&mut owner, readings(0, 0..5)).await;
    write_all(&mut zombie, readings(0, 0..6)).await;
    owner.flush().await.expect("the owner commits");
    let progress = zombie
        .flush()
        .await
        .expect("the conflicting commit is redone without positions 0..=4");
    assert_eq!(progress_position(&progress), Some(5));
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 0..6)])
    );

    // The same when the second process's table already holds the first's commit (it committed
    // another partition meanwhile): its next commit drops what the table covers.
    let mut other = writer(&second, 1, None).await;
    write_all(&mut owner, readings(0, 6..9)).await;
    owner.flush().await.expect("the owner commits 6..=8");
    write_all(&mut other, readings(1, 0..2)).await;
    other
        .flush()
        .await
        .expect("a commit of partition 1 lands after the owner's");
    write_all(&mut zombie, readings(0, 6..10)).await;
    let progress = zombie.flush().await.expect("only position 9 is left");
    assert_eq!(progress_position(&progress), Some(9));
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 0..10), (1, 0..2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_skips_its_replay_up_to_the_old_owners_commit_until_its_checkpoint_passes_it() {
    // The interleaving the scale-out tests of issue 13 found: process B takes a partition over
    // while A still writes it. B's first commit conflicts with A's commit of positions 0..=9 and
    // is redone without them, so B's partition holds 9 from then on; B's checkpoint after that
    // flush is at its own position 3, and its replay goes on making positions 4..=9, which A
    // committed. The rule "rows at or below what this partition holds are dropped only when the
    // table holds more" (kept for idle advances) took them as new and wrote them twice.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let old = open(&table, TELEMETRY).await;
    let new = open(&table, TELEMETRY).await;
    let mut a = writer(&old, 0, None).await;
    let mut b = writer(&new, 0, None).await;
    write_all(&mut a, readings(0, 0..10)).await;
    a.flush().await.expect("the old owner commits 0..=9");
    write_all(&mut b, readings(0, 0..4)).await;
    let progress = b
        .flush()
        .await
        .expect("the conflicting commit is redone without 0..=9");
    assert_eq!(progress_position(&progress), Some(9));
    b.checkpointed(3);
    write_all(&mut b, readings(0, 4..12)).await;
    b.flush().await.expect("the new owner commits 10 and 11");
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 0..12)]),
        "positions 4..=9 once"
    );

    // The same when B learns of A's commit through a commit of another partition (no conflict):
    // A commits 12..=15, B's partition 1 commits after it, B's replay of 12..=15 is skipped.
    let mut other = writer(&new, 1, None).await;
    write_all(&mut a, readings(0, 12..16)).await;
    a.flush().await.expect("the old owner commits 12..=15");
    write_all(&mut other, readings(1, 0..2)).await;
    other.flush().await.expect("partition 1 commits");
    write_all(&mut b, readings(0, 12..14)).await;
    assert_eq!(
        progress_position(&b.flush().await.expect("nothing new")),
        Some(15)
    );
    b.checkpointed(13);
    write_all(&mut b, readings(0, 14..17)).await;
    b.flush().await.expect("the new owner commits 16");
    // Once B's checkpoint passes A's position, a record at B's position is new (an idle
    // advance's), as before.
    b.checkpointed(16);
    write_all(&mut b, vec![reading(0, 16)]).await;
    b.flush().await.expect("the idle advance's record");
    let mut expected = expected_keys(&[(0, 0..17), (1, 0..2)]);
    expected.push((0, 16));
    expected.sort_unstable();
    assert_eq!(row_keys(&read_with_rust(&table).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_returned_and_the_rest_written() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, TELEMETRY).await;
    let mut w = writer(&sink, 0, None).await;
    let records = vec![
        reading(0, 0),
        Event::new(0, 1, r#"{"DeviceId":"d","Temperature":"hot"}"#),
        Event::new(0, 2, "not json"),
        reading(0, 3),
    ];
    let refused = w.write(records).await.expect("write");
    let reasons: Vec<(u64, &str)> = refused
        .iter()
        .map(|r| (r.record.position, r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(
        reasons[0],
        (1, r#"column `Temperature` expects a double, found "hot""#)
    );
    assert_eq!(reasons[1].0, 2);
    assert_eq!(progress_position(&w.flush().await.expect("flush")), Some(3));
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        vec![(0, 0), (0, 3)]
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A table partitioned by a date derived from a timestamp

const BY_DATE: &str = r#"
partition_by = ["EventDate"]
[[columns]]
name = "DeviceId"
type = "string"
[[columns]]
name = "Timestamp"
type = "timestamp"
[[columns]]
name = "EventDate"
type = "date"
from = "Timestamp"
nullable = false
[[columns]]
name = "Position"
type = "long"
value = "position"
[[columns]]
name = "Partition"
type = "integer"
value = "partition"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_partitions_derived_from_timestamps() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("by-date");
    let sink = open(&table, BY_DATE).await;
    let mut w = writer(&sink, 0, None).await;
    let records = vec![
        Event::new(
            0,
            0,
            r#"{"DeviceId":"a","Timestamp":"2024-05-01T23:59:59Z"}"#,
        ),
        Event::new(
            0,
            1,
            r#"{"DeviceId":"a","Timestamp":"2024-05-02T00:00:00Z"}"#,
        ),
        // 2024-05-03T01:00:00+02:00 is still May 2nd in UTC.
        Event::new(
            0,
            2,
            r#"{"DeviceId":"b","Timestamp":"2024-05-03T01:00:00+02:00"}"#,
        ),
        // Epoch milliseconds: 2024-05-03T12:00:00Z.
        Event::new(0, 3, r#"{"DeviceId":"b","Timestamp":1714737600000}"#),
        Event::new(0, 4, r#"{"DeviceId":"c"}"#),
    ];
    let refused = w.write(records).await.expect("write");
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].reason,
        "column `EventDate` is not nullable, but the record has no field `Timestamp`"
    );
    w.flush().await.expect("flush");

    let files: Vec<String> = commits(&table)[&1]
        .iter()
        .filter_map(|a| a.get("add"))
        .map(|add| {
            add["partitionValues"]["EventDate"]
                .as_str()
                .expect("a partition value")
                .to_owned()
        })
        .collect();
    let mut files = files;
    files.sort();
    assert_eq!(
        files,
        vec!["2024-05-01", "2024-05-02", "2024-05-03"],
        "one file per date"
    );

    let py = run_python(
        r#"
import json, sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1])
partitions = sorted(p["EventDate"] for p in dt.partitions())
df = dt.to_pandas().sort_values("Position")
rows = [[int(p), str(d), t.isoformat()] for p, d, t in zip(df["Position"], df["EventDate"], df["Timestamp"])]
print(json.dumps({"partitions": partitions, "rows": rows, "columns": dt.metadata().partition_columns}))
"#,
        &[&table.display().to_string()],
    );
    assert_eq!(
        py["partitions"],
        json!(["2024-05-01", "2024-05-02", "2024-05-03"])
    );
    assert_eq!(py["columns"], json!(["EventDate"]));
    assert_eq!(
        py["rows"],
        json!([
            [0, "2024-05-01", "2024-05-01T23:59:59+00:00"],
            [1, "2024-05-02", "2024-05-02T00:00:00+00:00"],
            [2, "2024-05-02", "2024-05-02T23:00:00+00:00"],
            [3, "2024-05-03", "2024-05-03T12:00:00+00:00"],
        ])
    );
}

/// The compression codec and row groups of every data file added by commit `version`.
fn data_files(table: &Path, version: u64) -> Vec<(String, usize)> {
    use deltalake::parquet::file::reader::{FileReader as _, SerializedFileReader};
    commits(table)[&version]
        .iter()
        .filter_map(|a| a.get("add"))
        .map(|add| {
            let path = table.join(add["path"].as_str().expect("a path"));
            let file = std::fs::File::open(&path).expect("a data file");
            let reader = SerializedFileReader::new(file).expect("a parquet file");
            let metadata = reader.metadata();
            let codec = metadata.row_group(0).column(0).compression().to_string();
            (codec, metadata.num_row_groups())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_settings_compression_row_groups_file_size_and_table_properties() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Default: zstd, one file per commit.
    let table = dir.path().join("default");
    let sink = open(&table, TELEMETRY).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..100)).await;
    w.flush().await.expect("flush");
    let files = data_files(&table, 1);
    assert_eq!(files.len(), 1);
    assert!(files[0].0.starts_with("ZSTD"), "{files:?}");

    // snappy, 10-row row groups, table properties at creation.
    let table = dir.path().join("snappy");
    let settings = format!(
        "compression = \"snappy\"\nrow_group_rows = 10\ntable_properties = {{ \"delta.logRetentionDuration\" = \"interval 7 days\" }}\n{TELEMETRY}"
    );
    let sink = open(&table, &settings).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..100)).await;
    w.flush().await.expect("flush");
    assert_eq!(data_files(&table, 1), vec![("SNAPPY".to_owned(), 10)]);
    let created = std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json"))
        .expect("the first commit");
    assert!(
        created.contains(r#""delta.logRetentionDuration":"interval 7 days""#),
        "{created}"
    );

    // Uncompressed, and a small target file size: one commit, several files.
    let table = dir.path().join("small-files");
    let settings =
        format!("compression = \"none\"\ntarget_file_size = 1\nrow_group_rows = 20\n{TELEMETRY}");
    let sink = open(&table, &settings).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..100)).await;
    w.flush().await.expect("flush");
    let files = data_files(&table, 1);
    assert!(files.len() > 1, "{files:?}");
    assert!(
        files.iter().all(|(codec, _)| codec == "UNCOMPRESSED"),
        "{files:?}"
    );
    assert_eq!(read_with_rust(&table).await.num_rows(), 100);

    // An unknown Delta property refuses the start.
    let settings = format!("table_properties = {{ \"delta.noSuchThing\" = \"1\" }}\n{TELEMETRY}");
    let config = sink_config(&dir.path().join("bad"), &settings);
    let err = DeltaSink::open_at("delta", &config, Location::local(&dir.path().join("bad")))
        .await
        .expect_err("an unknown property");
    assert!(err.to_string().contains("delta.noSuchThing"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 5. An existing table that does not match the configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_existing_table_with_another_schema() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    drop(open(&table, TELEMETRY).await);
    // The same configuration opens it again.
    drop(open(&table, TELEMETRY).await);

    let refuse = |body: String| {
        let table = table.clone();
        async move {
            DeltaSink::open_at(
                "delta",
                &sink_config(&table, &body),
                Location::local(&table),
            )
            .await
            .expect_err("a different schema is refused")
            .to_string()
        }
    };
    let retyped = TELEMETRY.replacen(
        "name = \"Temperature\"\ntype = \"double\"",
        "name = \"Temperature\"\ntype = \"long\"",
        1,
    );
    let error = refuse(retyped).await;
    assert!(
        error.contains("does not match the configured columns"),
        "{error}"
    );
    assert!(
        error.contains("column `Temperature` is double in the table but long in the configuration"),
        "{error}"
    );

    let renamed = TELEMETRY.replacen("name = \"Temperature\"", "name = \"Temp\"", 1);
    let error = refuse(renamed).await;
    assert!(
        error.contains("the table has no column `Temp` (column 2 of the table is `Temperature`)"),
        "{error}"
    );

    let extra = format!("{TELEMETRY}\n[[columns]]\nname = \"Humidity\"\ntype = \"double\"\n");
    let error = refuse(extra).await;
    assert!(
        error.contains("the table has no column `Humidity`"),
        "{error}"
    );

    let fewer = TELEMETRY.replacen("[[columns]]\nname = \"Partition\"\ntype = \"integer\"\nvalue = \"partition\"\nnullable = false\n", "", 1);
    let error = refuse(fewer).await;
    assert!(
        error.contains("the table has a column `Partition` that the configuration does not list"),
        "{error}"
    );

    let nullable = TELEMETRY.replacen(
        "type = \"string\"\nnullable = false",
        "type = \"string\"",
        1,
    );
    let error = refuse(nullable).await;
    assert!(
        error.contains("column `DeviceId` is not nullable in the table"),
        "{error}"
    );

    let partitioned = format!("partition_by = [\"DeviceId\"]\n{TELEMETRY}");
    let error = refuse(partitioned).await;
    assert!(
        error.contains(
            "the table is partitioned by [] but the configuration has `partition_by = [`DeviceId`]`"
        ),
        "{error}"
    );
    assert!(
        error.starts_with("sink `delta`"),
        "the error names the sink: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_are_taken_from_an_existing_table_and_differences_listed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let none = DeltaSink::open_at("delta", &sink_config(&table, ""), Location::local(&table))
        .await
        .expect_err("no table, no columns")
        .to_string();
    assert!(
        none.contains("no `columns` are configured and there is no table"),
        "{none}"
    );

    let readings_only = "partition_by = [\"DeviceId\"]\n[[columns]]\nname = \"DeviceId\"\ntype = \"string\"\nnullable = false\n[[columns]]\nname = \"Temperature\"\ntype = \"decimal(6,1)\"\n[[columns]]\nname = \"Timestamp\"\ntype = \"timestamp\"\n";
    drop(open(&table, readings_only).await);
    // Reopened without columns: the table's, each from the field of its name; its partitioning.
    let sink = open(&table, "").await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..10)).await;
    let refused = w
        .write(vec![Event::new(0, 10, r#"{"Temperature":1.5}"#)])
        .await
        .expect("write");
    assert_eq!(
        refused[0].reason,
        "column `DeviceId` is not nullable, but the record has no field `DeviceId`"
    );
    w.flush().await.expect("flush");
    let batch = read_with_rust(&table).await;
    assert_eq!(batch.num_rows(), 10);
    let commit = &commits(&table)[&1];
    assert!(
        commit
            .iter()
            .filter_map(|a| a.get("add"))
            .all(|add| add["partitionValues"]["DeviceId"] == "device-0")
    );

    // Both given and different: every difference listed.
    let different = "[[columns]]\nname = \"DeviceId\"\ntype = \"string\"\n[[columns]]\nname = \"Temperature\"\ntype = \"double\"\n[[columns]]\nname = \"Humidity\"\ntype = \"double\"\n";
    let error = DeltaSink::open_at(
        "delta",
        &sink_config(&table, different),
        Location::local(&table),
    )
    .await
    .expect_err("a different schema")
    .to_string();
    for difference in [
        "column `DeviceId` is not nullable in the table but nullable in the configuration",
        "column `Temperature` is decimal(6,1) in the table but double in the configuration",
        "the table has no column `Humidity` (column 3 of the table is `Timestamp`)",
        "the table has a column `Timestamp` that the configuration does not list",
        "the table is partitioned by [`DeviceId`] but the configuration has `partition_by = []`",
    ] {
        assert!(error.contains(difference), "{difference}: {error}");
    }
}

const EVOLVING: &str = "schema = \"evolve\"\n[[columns]]\nname = \"id\"\ntype = \"long\"\nnullable = false\n[[columns]]\nname = \"Name\"\ntype = \"string\"\n";

const PY_ROWS: &str = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
rows = sorted(t.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
print(json.dumps({"columns": [f.name for f in t.schema().fields], "rows": rows}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolve_adds_new_fields_as_nullable_columns() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, EVOLVING).await;
    let mut w = writer(&sink, 0, None).await;
    let records = vec![
        Event::new(0, 0, r#"{"id":0,"Name":"a"}"#),
        Event::new(
            0,
            1,
            r#"{"id":1,"Name":"b","price":1.5,"seat":{"no":"1A","row":3},"tags":["x"]}"#,
        ),
        // A field that is null, and one that differs from a column's name only in case: not new.
        Event::new(0, 2, r#"{"id":2,"later":null,"name":"c","price":2}"#),
        Event::new(0, 3, r#"{"id":3,"count":7}"#),
    ];
    write_all(&mut w, records).await;
    w.flush().await.expect("flush");
    let py = run_python(PY_ROWS, &[&table.display().to_string()]);
    assert_eq!(
        py["columns"],
        json!(["id", "Name", "price", "seat", "tags", "count"])
    );
    assert_eq!(
        py["rows"],
        json!([
            {"id": 0, "Name": "a", "price": null, "seat": null, "tags": null, "count": null},
            {"id": 1, "Name": "b", "price": 1.5, "seat": {"no": "1A", "row": 3}, "tags": ["x"], "count": null},
            {"id": 2, "Name": null, "price": 2.0, "seat": null, "tags": null, "count": null},
            {"id": 3, "Name": null, "price": null, "seat": null, "tags": null, "count": 7},
        ])
    );
    // Metadata commits between the data commits, each adding the columns of one record.
    let operations: Vec<String> = commits(&table)
        .values()
        .filter_map(|actions| actions.iter().find_map(|a| a.get("commitInfo")))
        .map(|info| info["operation"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        operations,
        vec!["WRITE", "ADD COLUMN", "WRITE", "ADD COLUMN", "WRITE"],
        "{operations:?}"
    );
    drop(w);
    drop(sink);

    // Reopened with the original configuration: the new columns are taken from the table.
    let sink = open(&table, EVOLVING).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, vec![Event::new(0, 4, r#"{"id":4,"count":8}"#)]).await;
    w.flush().await.expect("flush");
    let py = run_python(PY_ROWS, &[&table.display().to_string()]);
    assert_eq!(py["rows"][4]["count"], json!(8));
    // A fixed schema with the original columns no longer matches the table.
    let fixed = EVOLVING.replace("schema = \"evolve\"", "");
    let error = DeltaSink::open_at(
        "delta",
        &sink_config(&table, &fixed),
        Location::local(&table),
    )
    .await
    .expect_err("the table has more columns")
    .to_string();
    assert!(
        error.contains("the table has a column `price` that the configuration does not list"),
        "{error}"
    );
}

#[test]
fn fixed_schema_ignores_or_refuses_extra_fields() {
    let columns = "[[columns]]\nname = \"id\"\ntype = \"long\"\n[[columns]]\nname = \"At\"\ntype = \"date\"\nfrom = \"time\"\n";
    let push = |config: &str, body: &str| {
        let c = converter(config);
        let mut batch = c.batch(1);
        batch.push(&Event::new(0, 0, body.to_owned()), 0)
    };
    let ignore = push(
        columns,
        r#"{"id":1,"time":"2026-01-01","At":"x","extra":1,"none":null}"#,
    );
    assert_eq!(ignore, Ok(super::convert::Pushed::Ignored));
    assert_eq!(
        push(columns, r#"{"id":1,"time":"2026-01-01","none":null}"#),
        Ok(super::convert::Pushed::Row)
    );
    let refuse = format!("extra_fields = \"refuse\"\n{columns}");
    assert_eq!(
        push(&refuse, r#"{"id":1,"extra":1,"more":[2]}"#),
        Err((
            RefusalKind::Schema,
            "the record has fields the table has no column for: `extra`, `more` (`extra_fields = \"refuse\"`)".to_owned()
        ))
    );
    // The same with a table read through the JSON tree (a decimal column).
    let refuse_tree = format!("{refuse}[[columns]]\nname = \"d\"\ntype = \"decimal(4,2)\"\n");
    assert!(
        push(&refuse_tree, r#"{"id":1,"d":"1.5","extra":{"a":1}}"#)
            .is_err_and(|(_, reason)| reason.contains("`extra`"))
    );
    let evolve = format!("schema = \"evolve\"\n{columns}");
    assert_eq!(
        push(&evolve, r#"{"id":1,"new":true,"NEW":false}"#),
        Ok(super::convert::Pushed::Evolve(vec![
            "new".to_owned(),
            "NEW".to_owned()
        ]))
    );
}

const NESTED: &str = "[[columns]]\nname = \"id\"\ntype = \"long\"\nnullable = false\n[[columns]]\nname = \"seat\"\ntype = \"struct<no:string>\"\n[[columns]]\nname = \"legs\"\ntype = \"array<struct<from:string>>\"\n[[columns]]\nname = \"fares\"\ntype = \"map<string,struct<amount:double>>\"\n";

#[test]
fn fixed_schema_treats_new_nested_members_as_extra_fields() {
    let push = |config: &str, body: &str| {
        let c = converter(config);
        let mut batch = c.batch(1);
        batch.push(&Event::new(0, 0, body.to_owned()), 0)
    };
    let plain = r#"{"id":1,"seat":{"no":"1A","NO":"x","n":null,"e":{}},"legs":[{"from":"A"}],"fares":{"x":{"amount":1}}}"#;
    assert_eq!(push(NESTED, plain), Ok(super::convert::Pushed::Row));
    let body = r#"{"id":1,"seat":{"no":"1A","zone":"B"},"legs":[{"from":"A"},{"from":"B","to":"C"}],"fares":{"x":{"amount":1,"currency":"EUR"}}}"#;
    assert_eq!(push(NESTED, body), Ok(super::convert::Pushed::Ignored));
    let refuse = format!("extra_fields = \"refuse\"\n{NESTED}");
    assert_eq!(
        push(&refuse, body),
        Err((
            RefusalKind::Schema,
            "the record has fields the table has no column for: `seat.zone`, `legs[].to`, `fares{}.currency` (`extra_fields = \"refuse\"`)".to_owned()
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolve_adds_new_nested_members_as_nullable_fields() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let evolving = format!("schema = \"evolve\"\n{NESTED}");
    let sink = open(&table, &evolving).await;
    let mut w = writer(&sink, 0, None).await;
    let records = vec![
        Event::new(0, 0, r#"{"id":0,"seat":{"no":"1A"},"legs":[{"from":"A"}]}"#),
        Event::new(
            0,
            1,
            r#"{"id":1,"seat":{"no":"2B","zone":"front","pos":{"x":1}},"legs":[{"from":"A"},{"from":"B","to":"C"}],"fares":{"adult":{"amount":9.5,"currency":"EUR"}}}"#,
        ),
        // Nothing to type in `e`: written without it.
        Event::new(0, 2, r#"{"id":2,"seat":{"no":"3C","e":{}},"empty":{}}"#),
    ];
    write_all(&mut w, records).await;
    w.flush().await.expect("flush");
    let py = run_python(PY_ROWS, &[&table.display().to_string()]);
    assert_eq!(py["columns"], json!(["id", "seat", "legs", "fares"]));
    assert_eq!(
        py["rows"],
        json!([
            {"id": 0, "seat": {"no": "1A", "zone": null, "pos": null}, "legs": [{"from": "A", "to": null}], "fares": null},
            {"id": 1, "seat": {"no": "2B", "zone": "front", "pos": {"x": 1}}, "legs": [{"from": "A", "to": null}, {"from": "B", "to": "C"}], "fares": [["adult", {"amount": 9.5, "currency": "EUR"}]]},
            {"id": 2, "seat": {"no": "3C", "zone": null, "pos": null}, "legs": null, "fares": null},
        ])
    );
    let schema = commits(&table)
        .values()
        .flat_map(|actions| {
            actions
                .iter()
                .filter_map(|a| a["metaData"]["schemaString"].as_str())
        })
        .last()
        .map(|s| serde_json::from_str::<Value>(s).expect("schema"))
        .expect("a metadata action");
    assert_eq!(
        schema["fields"][1]["type"]["fields"][1],
        json!({"name": "zone", "type": "string", "nullable": true, "metadata": {}})
    );
    drop(w);
    drop(sink);
    // Reopened with the original configuration: the nested fields are taken from the table.
    let sink = open(&table, &evolving).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(
        &mut w,
        vec![Event::new(
            0,
            3,
            r#"{"id":3,"seat":{"no":"4D","zone":"back"}}"#,
        )],
    )
    .await;
    w.flush().await.expect("flush");
    let py = run_python(PY_ROWS, &[&table.display().to_string()]);
    assert_eq!(
        py["rows"][3]["seat"],
        json!({"no": "4D", "zone": "back", "pos": null})
    );
    let operations: Vec<String> = commits(&table)
        .values()
        .filter_map(|actions| actions.iter().find_map(|a| a.get("commitInfo")))
        .map(|info| info["operation"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        operations,
        vec!["WRITE", "ADD COLUMN", "WRITE", "WRITE"],
        "{operations:?}"
    );
}

#[test]
fn vacuum_takes_a_flag_or_a_mode() {
    use crate::connectors::delta::config::Vacuum;
    let vacuum = |value: &str| {
        toml::from_str::<DeltaMaintenanceProbe>(&format!("vacuum = {value}"))
            .map(|probe| probe.maintenance.vacuum)
            .map_err(|e| e.to_string())
    };
    assert_eq!(vacuum("false"), Ok(Vacuum::Off));
    assert_eq!(vacuum("true"), Ok(Vacuum::Removed));
    assert_eq!(vacuum("\"removed\""), Ok(Vacuum::Removed));
    assert_eq!(vacuum("\"full\""), Ok(Vacuum::Full));
    let error = vacuum("\"everything\"").expect_err("unknown mode");
    assert!(error.contains("`\"full\"`"), "{error}");
}

/// A `maintenance` table on its own.
#[derive(serde::Deserialize)]
struct DeltaMaintenanceProbe {
    #[serde(flatten)]
    maintenance: crate::connectors::delta::config::DeltaMaintenance,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_of_the_table_are_honoured() {
    use deltalake::kernel::{DataType, MetadataValue, StructField};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table_dir = dir.path().join("t");
    let invariant = |sql: &str| {
        [(
            "delta.invariants",
            MetadataValue::String(json!({"expression": {"expression": sql}}).to_string()),
        )]
    };
    let seat =
        deltalake::kernel::StructType::try_new([
            StructField::new("row", DataType::LONG, true).with_metadata(invariant("seat.row > 0"))
        ])
        .expect("struct");
    let table = Location::local(&table_dir)
        .table()
        .await
        .expect("table")
        .create()
        .with_columns([
            StructField::new("id", DataType::LONG, false),
            StructField::new("qty", DataType::INTEGER, true)
                .with_metadata(invariant("qty BETWEEN 1 AND 10")),
            StructField::new("seat", DataType::Struct(Box::new(seat)), true),
        ])
        .await
        .expect("create");
    drop(table);
    let sink = open(&table_dir, "").await;
    let mut w = writer(&sink, 0, None).await;
    let refused = w
        .write(vec![
            Event::new(0, 0, r#"{"id":0,"qty":1,"seat":{"row":1}}"#),
            Event::new(0, 1, r#"{"id":1,"qty":11}"#),
            Event::new(0, 2, r#"{"id":2,"qty":2,"seat":{"row":0}}"#),
            Event::new(0, 3, r#"{"id":3,"qty":3,"seat":{"row":5}}"#),
            // A null makes the invariant null, which breaks it, as with CHECK constraints.
            Event::new(0, 4, r#"{"id":4,"qty":3}"#),
        ])
        .await
        .expect("write");
    let reasons: Vec<(u64, String)> = refused
        .iter()
        .map(|r| (r.record.position, r.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                1,
                "the row breaks the table's invariant on `qty` (qty BETWEEN 1 AND 10)".to_owned()
            ),
            (
                2,
                "the row breaks the table's invariant on `seat.row` (seat.row > 0)".to_owned()
            ),
            (
                4,
                "the row breaks the table's invariant on `seat.row` (seat.row > 0)".to_owned()
            ),
        ]
    );
    w.flush().await.expect("flush");
    assert_eq!(
        longs(&read_with_rust(&table_dir).await, "id"),
        [Some(0), Some(3)]
    );
}

/// Data files under the table's directory (referenced or not).
fn parquet_files(dir: &Path) -> usize {
    let mut count = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("a directory")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_vacuum_keep_every_row_and_the_transactions() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let settings = format!(
        "maintenance = {{ interval = \"1h\", compact = true, vacuum = true, compact_min_age = \"0ms\", compact_min_files = 2, vacuum_retention = \"0ms\", checkpoint_every = 5 }}\n{BY_DATE}"
    );
    let sink = open(&table, &settings).await;
    let mut w = writer(&sink, 0, None).await;
    // 20 commits of 5 rows, spread over two dates: 2 small files per commit.
    for commit in 0..20u64 {
        let records = (0..5u64)
            .map(|i| {
                let position = commit * 5 + i;
                let day = 1 + position % 2;
                Event::new(
                    0,
                    position,
                    format!(
                        r#"{{"DeviceId":"d{position}","Timestamp":"2024-05-0{day}T10:00:00Z"}}"#
                    ),
                )
            })
            .collect();
        write_all(&mut w, records).await;
        w.flush().await.expect("flush");
    }
    let before = read_with_rust(&table).await;
    assert_eq!(before.num_rows(), 100);
    assert_eq!(parquet_files(&table), 40);
    let checkpoints = std::fs::read_dir(table.join("_delta_log"))
        .expect("log")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".checkpoint.parquet")
        })
        .count();
    assert_eq!(checkpoints, 4, "a checkpoint every 5 commits");
    assert_eq!(sink.shared.maintenance_counts.get("checkpoints"), 4);

    maintenance::run_once(&sink.shared)
        .await
        .expect("maintenance");
    let counts = &sink.shared.maintenance_counts;
    assert_eq!(counts.get("compactions"), 1);
    assert_eq!(counts.get("files_compacted"), 40);
    assert_eq!(counts.get("files_written"), 2, "one file per date");
    assert_eq!(counts.get("files_vacuumed"), 40);
    assert_eq!(parquet_files(&table), 2);
    let after = read_with_rust(&table).await;
    let sorted = |batch: &RecordBatch| {
        let mut rows: Vec<(i64, String)> = longs(batch, "Position")
            .into_iter()
            .zip(
                batch
                    .column_by_name("DeviceId")
                    .expect("DeviceId")
                    .as_string::<i32>()
                    .iter(),
            )
            .map(|(p, d)| (p.expect("position"), d.expect("device").to_owned()))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(sorted(&before), sorted(&after));
    let operations: Vec<(String, Vec<Value>)> = commits(&table)
        .into_values()
        .skip(20)
        .map(|actions| {
            let info = actions
                .iter()
                .find_map(|a| a.get("commitInfo"))
                .expect("commit info");
            (
                info["operation"].as_str().expect("an operation").to_owned(),
                actions,
            )
        })
        .collect();
    let names: Vec<&str> = operations.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, vec!["OPTIMIZE", "VACUUM START", "VACUUM END"]);
    let optimize = &operations[0].1;
    assert!(
        optimize
            .iter()
            .filter_map(|a| a.get("add"))
            .all(|add| add["dataChange"] == false)
    );
    assert!(optimize.iter().all(|a| a.get("txn").is_none()));

    // The stream goes on: the transaction still skips what the table holds.
    drop(w);
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 95..110)).await;
    w.flush().await.expect("flush");
    let py = run_python(
        "import json, sys\nfrom deltalake import DeltaTable\nt = DeltaTable(sys.argv[1])\nprint(json.dumps(sorted(t.to_pandas()['Position'].tolist())))",
        &[&table.display().to_string()],
    );
    assert_eq!(py, json!((0..110).collect::<Vec<u64>>()));
}

// ---------------------------------------------------------------------------------------------
// Timing (not an assertion): `cargo test -p weir --lib connectors::delta::sink::tests::commit_timings -- --ignored --nocapture`

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints timings; run by hand"]
async fn commit_timings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("weir::connectors::delta::sink=debug")
        .with_test_writer()
        .try_init();
    for rows in [1_000u64, 100_000] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sink = open(&dir.path().join("t"), TELEMETRY).await;
        let mut w = writer(&sink, 0, None).await;
        let mut flushes = Vec::new();
        let mut next = 0;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let end = next + rows;
            for start in (next..end).step_by(1024) {
                write_all(&mut w, readings(0, start..(start + 1024).min(end))).await;
            }
            next = end;
            let converted = started.elapsed();
            let flushed = std::time::Instant::now();
            w.flush().await.expect("flush");
            flushes.push((converted, flushed.elapsed()));
        }
        for (round, (converted, flushed)) in flushes.iter().enumerate() {
            println!(
                "{rows} rows, flush {}: conversion {:.1} ms, flush (parquet + fsync + commit) {:.1} ms",
                round + 1,
                converted.as_secs_f64() * 1000.0,
                flushed.as_secs_f64() * 1000.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_begun_covers_what_came_before_it_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, TELEMETRY).await;
    let mut w0 = writer(&sink, 0, None).await;
    let mut w1 = writer(&sink, 1, None).await;
    write_all(&mut w0, readings(0, 0..10)).await;
    let flushing = w0.begin_flush().await.expect("begin");
    // The partition goes on while its commit runs: these rows are the next checkpoint's.
    write_all(&mut w0, readings(0, 10..15)).await;
    let progress = flushing.await.expect("flush");
    let covered = progress_position(&progress).expect("a position");
    assert!((9..=14).contains(&covered), "{progress}");
    let held = row_keys(&read_with_rust(&table).await);
    assert!(
        expected_keys(&[(0, 0..10)])
            .iter()
            .all(|key| held.contains(key)),
        "every row written before the flush began is in the table"
    );

    // Partition 1's commit takes partition 0's rows too: partition 0's next flush then ends
    // without a commit of its own.
    write_all(&mut w0, readings(0, 15..20)).await;
    write_all(&mut w1, readings(1, 0..3)).await;
    let one = w1.begin_flush().await.expect("begin").await.expect("flush");
    let zero = w0.begin_flush().await.expect("begin").await.expect("flush");
    assert_eq!(progress_position(&zero), Some(19));
    assert_eq!(zero["table_version"], one["table_version"]);
    // Nothing new: the same progress, no empty commit.
    let again = w0.begin_flush().await.expect("begin").await.expect("flush");
    assert_eq!(again, zero);
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 0..20), (1, 0..3)])
    );
    assert!(
        commits(&table).values().all(|actions| adds_of(actions) > 0),
        "no empty commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_commits_beside_the_writer_which_waits_only_at_twice_the_size() {
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, &format!("max_buffered_rows = 10\n{TELEMETRY}")).await;
    let mut w = writer(&sink, 0, None).await;
    // The test holds the committer, as a slow commit would.
    let committing = sink.shared.committer.lock().await;
    // Full: the write returns while its commit waits.
    tokio::time::timeout(
        Duration::from_secs(10),
        write_all(&mut w, readings(0, 0..12)),
    )
    .await
    .expect("a full buffer made the writer wait for its commit");
    drop(committing);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while commits(&table)
        .values()
        .all(|actions| adds_of(actions) == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a full buffer was never committed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Twice full: the writer waits until everything buffered is in the table.
    let committing = sink.shared.committer.lock().await;
    let writing = tokio::spawn(async move {
        write_all(&mut w, readings(0, 12..40)).await;
        w
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writing.is_finished(),
        "the writer went on with twice a full buffer"
    );
    drop(committing);
    let mut w = writing.await.expect("the write");
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 0..40)])
    );
    let progress = w.flush().await.expect("flush");
    assert_eq!(progress_position(&progress), Some(39));
    assert!(
        commits(&table).values().all(|actions| adds_of(actions) > 0),
        "no empty commits"
    );
}

/// A commit took a partition's rows, found every one of them in the table already (another
/// process committed those positions while the partition moved) and failed for another
/// partition's rows: it puts none back. The partition's flush then ends, rather than waiting
/// (committing nothing, again and again) for a take that will never be committed as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_whose_rows_a_failed_commit_found_in_the_table_ends() {
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let table = dir.path().join("t");
    let sink = open(&table, TELEMETRY).await;
    let mut w = writer(&sink, 0, None).await;
    write_all(&mut w, readings(0, 0..10)).await;
    let flushing = w.begin_flush().await.expect("begin");
    // What such a commit leaves: the rows taken, none left after the table's, put back.
    {
        let _committing = sink.shared.committer.lock().await;
        let mut taken = sink.shared.take_buffered();
        for pending in &mut taken {
            pending.chunks.clear();
        }
        sink.shared.restore(taken);
    }
    let progress = tokio::time::timeout(Duration::from_secs(20), flushing)
        .await
        .expect("the flush ends")
        .expect("flush");
    assert_eq!(progress_position(&progress), None, "{progress}");
    // The partition goes on: its next rows are committed as usual.
    write_all(&mut w, readings(0, 10..12)).await;
    let next = w.begin_flush().await.expect("begin").await.expect("flush");
    assert_eq!(progress_position(&next), Some(11));
    assert_eq!(
        row_keys(&read_with_rust(&table).await),
        expected_keys(&[(0, 10..12)])
    );
}
