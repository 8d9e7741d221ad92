//! Keyed state carries over a hot swap (issue 4) even though plugin instances cache it: the
//! state moves between instances — the new version's, the version it falls back on during its
//! probation, an instance made ready off the worker's thread by a rehearsal batch — and an
//! instance whose cache another one wrote past must not read it.
//!
//! The `tally` plugins count the events of each key in keyed state, so whatever version ran,
//! a key's counts must go 1, 2, 3, ... in the order of its events: any stale read repeats a count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use weir::event::Event;
use weir::metrics::Metrics;
use weir::plugin::slot::{Offered, SlotSetup};
use weir::plugin::{
    InstanceSettings, KeyedState, PluginEngine, PluginScope, PluginSlot, RollbackPolicy,
    SlotControl, VersionOrigin,
};
use weir::reference::ReferenceTables;
use weir::stage::{Stage, StageOutput, WasmTransformStage};

/// A probation that neither ends nor rolls back within the test: every trap goes to the fallback.
const ENDLESS_PROBATION: RollbackPolicy = RollbackPolicy {
    probation_events: 1_000_000,
    max_trap_ratio: 2.0,
    max_error_ratio: 2.0,
};

/// Events of `keys` (a key, and whether the event is marked poison), from `first` on.
fn events(first: u64, keys: &[(&str, bool)]) -> Vec<Event> {
    keys.iter()
        .enumerate()
        .map(|(index, (key, poison))| {
            let mut event =
                Event::new(0, first + index as u64, format!(r#"{{"poison":{poison}}}"#));
            event.key = Some(key.as_bytes().to_vec().into());
            event
        })
        .collect()
}

/// One record of the plugins: the key, its count, the version that counted.
#[derive(Debug, PartialEq)]
struct Tally {
    key: String,
    count: u64,
    version: String,
}

/// Runs `batch` through `stage`; returns its records, in order.
fn run(stage: &mut WasmTransformStage, batch: &[Event]) -> Vec<Tally> {
    let mut out = StageOutput::default();
    stage
        .process(batch, &mut out)
        .expect("the stage never fails");
    assert!(
        out.rejected.is_empty(),
        "nothing rejected: {:?}",
        out.rejected
    );
    out.emitted
        .iter()
        .map(|(target, record)| {
            assert_eq!(&**target, "tallies");
            let value: serde_json::Value =
                serde_json::from_slice(&record.body).expect("a JSON record");
            Tally {
                key: value["key"].as_str().expect("key").to_owned(),
                count: value["count"].as_u64().expect("count"),
                version: value["version"].as_str().expect("version").to_owned(),
            }
        })
        .collect()
}

/// The counts of `batches`, computed here: each key's events counted in order.
fn expected_counts(batches: &[&[Event]]) -> Vec<(String, u64)> {
    let mut seen: HashMap<String, u64> = HashMap::new();
    batches
        .iter()
        .flat_map(|batch| batch.iter())
        .map(|event| {
            let key = String::from_utf8(event.key.clone().expect("keyed").to_vec()).expect("text");
            let count = seen.entry(key.clone()).or_default();
            *count += 1;
            (key, *count)
        })
        .collect()
}

#[test]
fn versions_that_take_turns_on_a_key_never_read_a_stale_count() {
    let v1_path = weir_tests::plugin_path("tally");
    let v2_bytes = std::fs::read(weir_tests::plugin_path("tally_trap_marked")).expect("v2");
    let v1_bytes = std::fs::read(&v1_path).expect("v1");
    let engine = PluginEngine::new().expect("engine");
    let v1 = engine
        .transform_from_bytes(&v1_path, &v1_bytes)
        .expect("v1 loads");
    let slot = PluginSlot::open(
        SlotSetup {
            pipeline: "test".into(),
            stage: "tally".into(),
            file: v1_path.clone(),
            engine: engine.clone(),
            store: None,
            policy: ENDLESS_PROBATION,
            metrics: Metrics::new(),
        },
        v1.clone(),
        &v1_bytes,
    );
    let settings = Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "test".into(),
            stage: "tally".into(),
            partition: 0,
            plugin: v1.name().clone(),
            version: v1.version().clone(),
        },
        config_json: "{}".into(),
        max_memory_bytes: 256 * 1024 * 1024,
        call_timeout: Duration::from_secs(30),
        reference: ReferenceTables::none(),
    });
    let mut stage = WasmTransformStage::with_slot(
        "tally".into(),
        slot.clone(),
        settings,
        KeyedState::default(),
        None,
    );

    // v1 alone. The larger first batch is what a new version rehearses on, on a throwaway copy
    // of the state taken after it: there it counts `a` to 4, where the real count is 3.
    let first = events(0, &[("a", false), ("a", false), ("b", false)]);
    let second = events(3, &[("a", false)]);
    let mut got = run(&mut stage, &first);
    got.extend(run(&mut stage, &second));

    // v2, on probation: it counts what it can, and v1 (whose instance stayed warm, its cache as
    // it was before the swap) counts the poison events, between v2's counts of the same key.
    let offered = slot
        .offer(v2_bytes, VersionOrigin::Api)
        .expect("v2 is valid");
    assert!(matches!(offered, Offered::Activated { .. }), "{offered:?}");
    let third = events(
        4,
        &[
            ("a", false),
            ("a", true),
            ("b", false),
            ("a", true),
            ("a", false),
            ("b", true),
        ],
    );
    let on_v2 = run(&mut stage, &third);
    assert!(
        stage.started_prepared(),
        "v2 started on the instance made ready at the activation"
    );
    let versions: Vec<&str> = on_v2.iter().map(|t| t.version.as_str()).collect();
    assert_eq!(
        versions,
        [
            "tally-trap-marked",
            "tally",
            "tally-trap-marked",
            "tally",
            "tally-trap-marked",
            "tally"
        ],
        "poison events went to the fallback"
    );
    got.extend(on_v2);

    // An operator rolls back to v1: its new instance, made ready by a rehearsal, must forget what
    // the rehearsal cached and count on from the real state.
    let control: Arc<dyn SlotControl> = slot.clone();
    control.rollback(None).expect("rollback to v1");
    let fourth = events(10, &[("a", false), ("b", false), ("c", false)]);
    let on_v1 = run(&mut stage, &fourth);
    assert!(stage.started_prepared(), "v1 came back on a ready instance");
    assert!(on_v1.iter().all(|t| t.version == "tally"));
    got.extend(on_v1);

    let counts: Vec<(String, u64)> = got.into_iter().map(|t| (t.key, t.count)).collect();
    let expected = expected_counts(&[&first, &second, &third, &fourth]);
    assert_eq!(
        counts, expected,
        "every key counted once per event, in order, across versions"
    );
    for key in ["a", "b", "c"] {
        let last = expected
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n);
        let stored = stage.keyed_state().committed(key.as_bytes());
        assert_eq!(
            stored.map(|v| String::from_utf8_lossy(v).into_owned()),
            last.map(u64::to_string),
            "the stored count of {key}"
        );
    }
}
