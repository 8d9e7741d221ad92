//! The plugin-stage core with real plugins: the test plugins `tally` (counts events per key) and
//! `tally_trap_marked` (the same, but panics on events marked `"poison": true`), as the tests
//! crate builds them (`tests/build.rs`). Without them (a build that never ran the tests crate)
//! these tests say so and pass.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::plugin::slot::{Offered, RollbackPolicy, SlotSetup};
use crate::plugin::{
    InstanceSettings, KeyedState, Plugin, PluginEngine, PluginScope, PluginSlot, SlotControl,
    VersionOrigin,
};
use crate::reference::ReferenceTables;
use crate::stage::{Stage, StageOutput, WasmTransformStage};

/// The compiled test plugin `name`, if the tests crate built it.
fn test_plugin(name: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = std::env::var_os("WEIR_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("wasm-plugins/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} was not built (run the tests crate once)",
            path.display()
        );
        None
    }
}

/// Loads `name` as a transform.
fn load(engine: &PluginEngine, name: &str) -> Option<(Arc<Plugin>, Vec<u8>)> {
    let path = test_plugin(name)?;
    let bytes = std::fs::read(&path).expect("readable plugin");
    let plugin = engine
        .transform_from_bytes(&path, &bytes)
        .expect("a valid transform");
    Some((plugin, bytes))
}

fn settings(plugin: &Plugin) -> Arc<InstanceSettings> {
    Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "test".into(),
            stage: "tally".into(),
            partition: 0,
            plugin: plugin.name().clone(),
            version: plugin.version().clone(),
        },
        config_json: "{}".into(),
        max_memory_bytes: 256 * 1024 * 1024,
        call_timeout: Duration::from_secs(30),
        reference: ReferenceTables::none(),
    })
}

/// Events of `keys` (a key, and whether it is marked poison) from position `first` on.
fn events(first: u64, keys: &[(&str, bool)]) -> Vec<Event> {
    keys.iter()
        .zip(first..)
        .map(|((key, poison), position)| {
            let mut event = Event::new(0, position, format!(r#"{{"poison":{poison}}}"#));
            event.key = Some(key.as_bytes().to_vec().into());
            event
        })
        .collect()
}

/// The `version` field of each record, in order.
fn versions(out: &StageOutput) -> Vec<String> {
    out.emitted
        .iter()
        .map(|(_, record)| {
            let value: serde_json::Value = serde_json::from_slice(&record.body).expect("JSON");
            value["version"].as_str().expect("version").to_owned()
        })
        .collect()
}

/// A stage following a slot that runs `tally`, with `tally_trap_marked` offered on a probation
/// of 1,000 events that fails above `max_trap_ratio`.
fn swapped(max_trap_ratio: f64) -> Option<(WasmTransformStage, Arc<PluginSlot<Plugin>>)> {
    let policy = RollbackPolicy {
        probation_events: 1_000,
        max_trap_ratio,
        max_error_ratio: 2.0,
    };
    let engine = PluginEngine::new().expect("engine");
    let (v1, v1_bytes) = load(&engine, "tally")?;
    let (_, v2_bytes) = load(&engine, "tally_trap_marked")?;
    let slot = PluginSlot::open(
        SlotSetup {
            pipeline: "test".into(),
            stage: "tally".into(),
            file: v1.path().to_path_buf(),
            engine,
            store: None,
            policy,
            metrics: Metrics::new(),
        },
        v1.clone(),
        &v1_bytes,
    );
    let stage = WasmTransformStage::with_slot(
        "tally".into(),
        slot.clone(),
        settings(&v1),
        KeyedState::default(),
        None,
    );
    let offered = slot.offer(v2_bytes, VersionOrigin::Api).expect("v2 valid");
    assert!(matches!(offered, Offered::Activated { .. }), "{offered:?}");
    Some((stage, slot))
}

#[test]
fn a_trap_sends_only_its_event_to_the_dead_letters() {
    let engine = PluginEngine::new().expect("engine");
    let Some((plugin, _)) = load(&engine, "tally_trap_marked") else {
        return;
    };
    let mut stage = WasmTransformStage::new(
        "tally".into(),
        plugin.clone(),
        settings(&plugin),
        KeyedState::default(),
    );
    let batch = events(0, &[("a", false), ("a", true), ("a", false)]);
    let mut out = StageOutput::default();
    stage.process(&batch, &mut out).expect("never fails");
    assert_eq!(out.emitted.len(), 2, "the two good events went through");
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    let letter = &out.rejected[0];
    assert_eq!(letter.event.position, 1);
    assert!(
        letter
            .reason
            .starts_with("plugin trapped: panic: tally-trap-marked: poison event"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.plugin_version.as_ref(), Some(plugin.version()));
    // The trapped call committed nothing: the good events counted 1 and 2.
    let counts: Vec<u64> = out
        .emitted
        .iter()
        .map(|(_, r)| {
            let value: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
            value["count"].as_u64().expect("count")
        })
        .collect();
    assert_eq!(counts, [1, 2]);
}

#[test]
fn during_probation_an_event_the_new_version_traps_on_goes_to_the_previous_one() {
    // A probation no trap can fail.
    let Some((mut stage, _slot)) = swapped(2.0) else {
        return;
    };
    let batch = events(0, &[("a", false), ("a", true), ("b", false)]);
    let mut out = StageOutput::default();
    stage.process(&batch, &mut out).expect("never fails");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(
        versions(&out),
        ["tally-trap-marked", "tally", "tally-trap-marked"]
    );
    assert_eq!(
        stage.running_version().as_deref(),
        Some(stage.plugin_version().as_ref())
    );
}

#[test]
fn a_rollback_switches_at_once_within_the_batch() {
    // The first trap fails the probation.
    let Some((mut stage, slot)) = swapped(0.0) else {
        return;
    };
    let new_version = slot.active().plugin.version().clone();
    let batch = events(0, &[("a", true), ("a", false), ("b", false)]);
    let mut out = StageOutput::default();
    stage.process(&batch, &mut out).expect("never fails");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    // The poison event went to the previous version, and so did the rest of the batch: the slot
    // rolled back on it, and the stage switched before the next event.
    assert_eq!(versions(&out), ["tally", "tally", "tally"]);
    assert_ne!(stage.plugin_version(), &new_version);
    assert_eq!(stage.plugin_version(), slot.active().plugin.version());
}

#[test]
fn answer_errors_read_as_before() {
    use crate::stage::AnswerError;
    let cases = [
        (
            AnswerError::RecordFor {
                noun: "window",
                index: 3,
                units: 2,
            },
            "plugin emitted a record for window 3 of 2",
        ),
        (
            AnswerError::Target {
                index: 1,
                targets: 1,
            },
            "plugin emitted to target 1 of 1",
        ),
        (
            AnswerError::PayloadEnd {
                end: 9,
                start: 4,
                len: 8,
            },
            "plugin gave payload end 9 after 4 in a buffer of 8",
        ),
        (
            AnswerError::Rejection {
                noun: "event",
                index: 5,
                units: "a batch of 2".into(),
            },
            "plugin rejected event 5 of a batch of 2",
        ),
        (
            AnswerError::Accumulators {
                accumulators: 1,
                windows: 2,
            },
            "plugin returned 1 accumulators for 2 windows",
        ),
        (AnswerError::PairWithoutEvents, "a pair without events"),
    ];
    for (error, text) in cases {
        assert_eq!(error.to_string(), text);
    }
}
