//! Property-based tests (issue 19): arbitrary bytes and structured garbage fed to what reads
//! input from outside the process. None may panic; each refuses with an error that says what.
//! The HTTP source's body parsing and write-ahead-log recovery have theirs beside them
//! (`connectors/http/source/proptests.rs`).
//!
//! CI runs a few cases from a fixed seed, in seconds. A longer run (see the README):
//! `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=$RANDOM cargo test -p weir --lib proptests`.
//! An input that ever made one fail is kept below as a plain regression test.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use crate::codec::Reader;
use crate::json::{FieldValue, event_time_millis, top_level_field};
use crate::plugin::bindings::{OutputBatch, Rejection};

/// The configuration of every property here: `PROPTEST_CASES` and `PROPTEST_RNG_SEED` when set,
/// else 64 cases from a fixed seed; failures are kept as regression tests by hand, not in files.
pub(crate) fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5745_4952);
    }
    config.failure_persistence = None;
    config
}

/// A configuration that loads, to mutate.
const VALID: &str = r#"
[checkpoint]
dir = "checkpoints"
interval = "1s"

[sources.in]
kind = "http"
address = "127.0.0.1:0"
partitions = 2
auth = { tokens = ["k"] }

[sinks.out]
kind = "stdout"

[pipelines.p]
source = "in"
dead_letter = "out"
event_time = { field = "ts" }

[[pipelines.p.stages]]
name = "dedup"
dedup = { id_field = "id", horizon = "1m" }
outputs = { events = "out" }
"#;

fn load(text: &str) -> Result<(), String> {
    crate::config::load_str(text, Path::new("fuzz.toml"), Path::new("."))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A line of `VALID` replaced by `garbage`, or `garbage` inserted after it.
fn mutated(line: usize, garbage: &str, insert: bool) -> String {
    let mut lines: Vec<&str> = VALID.lines().collect();
    let at = line % lines.len();
    if insert {
        lines.insert(at, garbage);
    } else {
        lines[at] = garbage;
    }
    lines.join("\n")
}

/// Garbage a person might type: keys and values of the wrong kind, cut syntax.
fn typed_garbage() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "kind",
        "address",
        "partitions",
        "interval",
        "source",
        "plugin",
        "field",
        "max_wal_bytes",
        "tls",
        "auth",
        "window",
        "size",
        "[sources.x]",
        "[[pipelines.p.stages]]",
        "key",
    ]);
    let values = prop::sample::select(vec![
        "\"\"",
        "0",
        "-1",
        "18446744073709551616",
        "\"5x\"",
        "[]",
        "{}",
        "{ a = 1 }",
        "\"",
        "true",
        "\"0.0.0.0:80\"",
        "\"9999999999999h\"",
        "1e308",
        "\"ms\"",
        "[[",
        "nan",
    ]);
    (keys, values).prop_map(|(k, v)| format!("{k} = {v}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_config_loader_refuses_arbitrary_text_with_the_file_named(text in any::<String>()) {
        if let Err(e) = load(&text) {
            prop_assert!(e.contains("fuzz.toml"), "{}", e);
        }
    }

    #[test]
    fn the_config_loader_refuses_mutated_configurations_with_the_file_named(
        line in any::<usize>(),
        garbage in prop_oneof![typed_garbage(), any::<String>()],
        insert in any::<bool>(),
    ) {
        if let Err(e) = load(&mutated(line, &garbage, insert)) {
            prop_assert!(e.contains("fuzz.toml"), "{}", e);
        }
    }

    #[test]
    fn event_decoding_refuses_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut reader = Reader::new(&bytes);
        // Either an event or an error naming what could not be read, never a panic or a huge
        // allocation from a length field.
        if let Err(e) = reader.event() {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn event_time_parsing_takes_any_field_value(
        body in prop::collection::vec(any::<u8>(), 0..256),
        text in any::<String>(),
        number in any::<f64>(),
    ) {
        if let Ok(Some(value)) = top_level_field(&body, "ts") {
            let _ = event_time_millis(&value);
        }
        let _ = event_time_millis(&FieldValue::Text(text.clone().into()));
        let _ = event_time_millis(&FieldValue::Number(number));
        let json = serde_json::json!({ "ts": text }).to_string();
        let found = top_level_field(json.as_bytes(), "ts");
        prop_assert!(matches!(found, Ok(Some(FieldValue::Text(_)))));
    }

    #[test]
    fn the_checkpoint_reader_refuses_garbage_even_with_a_valid_checksum(
        body in prop::collection::vec(any::<u8>(), 0..512),
        flip in any::<usize>(),
        real in any::<bool>(),
    ) {
        let outcome = read_checkpoint_file(body, flip, real);
        if let Err(e) = outcome {
            prop_assert!(e.contains("unreadable") || e.contains("checkpoint"), "{}", e);
        }
    }

    #[test]
    fn a_plugin_output_batch_is_checked_before_the_host_reads_it(
        targets in prop::collection::vec(any::<String>(), 0..4),
        payloads in prop::collection::vec(any::<u8>(), 0..64),
        emitted in prop::collection::vec((0u32..12, 0u32..6, 0u32..80, 0u32..3), 0..16),
        // Bytes cut off the end of the emitted column: a column that is not whole records.
        cut in prop::sample::select(vec![0usize, 0, 0, 1, 5]),
        rejected in prop::collection::vec(0u32..12, 0..4),
        events in 0usize..10,
    ) {
        let mut column = Vec::new();
        for (event, target, payload_end, forward) in emitted {
            // A forward flag other than 0 or 1, as a guest might write it, reads as true.
            for number in [event, target, payload_end, forward] {
                crate::plugin::columns::push_u32(&mut column, number);
            }
        }
        column.truncate(column.len().saturating_sub(cut));
        let output = OutputBatch {
            targets,
            payloads,
            emitted: column,
            rejected: rejected
                .into_iter()
                .map(|event| Rejection { event, reason: "r".into() })
                .collect(),
            wanted_fields: Vec::new(),
        };
        if crate::plugin::check_output(&output, events).is_ok() {
            // What the host then reads is all in range.
            let mut start = 0usize;
            prop_assert!(crate::plugin::columns::whole_records(&output.emitted));
            for e in crate::plugin::columns::emitted(&output.emitted) {
                prop_assert!((e.event as usize) < events);
                prop_assert!(output.targets.get(e.target as usize).is_some());
                prop_assert!(output.payloads.get(start..e.payload_end as usize).is_some());
                start = e.payload_end as usize;
            }
            for r in &output.rejected {
                prop_assert!((r.event as usize) < events);
            }
        }
    }
}

/// Writes a checkpoint through the store, replaces its file with `body` (or with the real file,
/// one byte flipped, when `real`) under a valid checksum, and reads it back through the store.
fn read_checkpoint_file(body: Vec<u8>, flip: usize, real: bool) -> Result<(), String> {
    use crate::checkpoint::{Checkpoint, CheckpointStore, LocalCheckpointStore};
    use sha2::Digest;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = LocalCheckpointStore::new(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let checkpoint = Checkpoint {
        position: Some(7),
        ..Default::default()
    };
    runtime
        .block_on(store.save("p", 0, &checkpoint))
        .map_err(|e| e.to_string())?;
    let path = store.path("p", 0);
    let mut bytes = if real {
        let mut file = std::fs::read(&path).map_err(|e| e.to_string())?;
        file.truncate(file.len().saturating_sub(32));
        if !file.is_empty() {
            let at = flip % file.len();
            file[at] ^= 0x55;
        }
        file
    } else {
        body
    };
    let digest = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
    runtime
        .block_on(store.load("p", 0))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Regression inputs: each once found a panic or a wrong acceptance, or stands for a class.
#[test]
fn regressions() {
    // A length field far larger than the input must not allocate it.
    let mut huge = vec![0u8; 4 + 8 + 1 + 9];
    huge.extend_from_slice(&[0xff; 8]);
    assert!(Reader::new(&huge).event().is_err());
    // Empty, whitespace and NUL configurations.
    for text in ["", " ", "\0", "[", "[pipelines.p]\n"] {
        assert!(load(text).is_err());
    }
    // Numbers out of range saturate; a NaN is refused.
    assert_eq!(
        event_time_millis(&FieldValue::Number(f64::MAX)),
        Ok(i64::MAX)
    );
    assert!(event_time_millis(&FieldValue::Number(f64::NAN)).is_err());
}

#[test]
fn the_mutation_base_loads() {
    assert_eq!(load(VALID), Ok(()));
}
