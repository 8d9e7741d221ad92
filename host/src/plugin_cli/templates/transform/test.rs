//! Tests of the plugin, run natively by `cargo test` with the SDK's harness (no wasm needed).

use weir_sdk::testing::{Harness, TestEvent};
use {{crate}}::process;

#[test]
fn a_jump_of_temperature_is_an_alert_and_every_reading_a_row() {
    let mut harness = Harness::new(process);
    let first = harness.run(r#"{"DeviceId":"d1","Temperature":20.0}"#);
    assert!(first.json("alerts").is_empty());
    assert!(first.forwarded_to("rows"));
    let second = harness.run(r#"{"DeviceId":"d1","Temperature":40.0}"#);
    assert_eq!(second.json("alerts")[0]["To"], 40.0);
}

#[test]
fn the_threshold_comes_from_the_stage_config() {
    let mut harness =
        Harness::new(process).with_config(serde_json::json!({ "max_jump": 30.0 }));
    harness.run(r#"{"DeviceId":"d1","Temperature":20.0}"#);
    let outcome = harness.run(r#"{"DeviceId":"d1","Temperature":40.0}"#);
    assert!(outcome.json("alerts").is_empty());
}

/// Fields the host adds to the records of the stage, which the native harness does not: none for a transform.
const HOST_FIELDS: &[&str] = &[];

/// Runs a case's events one by one, in order, on one harness (one partition).
fn run_case(input: &[InputLine], config: serde_json::Value) -> Outputs {
    let mut harness = Harness::new(process).with_config(config);
    let mut outputs = Outputs::new();
    for (n, line) in input.iter().enumerate() {
        let outcome = harness.run_event(line.event());
        match outcome.rejection() {
            Some(reason) => outputs
                .entry("dead-letters".to_owned())
                .or_default()
                .push(dead_letter(n + 1, reason)),
            None => collect(&mut outputs, &outcome, &["rows", "alerts"]),
        }
    }
    outputs
}
