//! Tests of the plugin, run natively by `cargo test` with the SDK's harness (no wasm needed).

use weir_sdk::testing::{TestEvent, TestWindow, WindowHarness};
use {{crate}}::Temperatures;

#[test]
fn a_window_gives_its_count_average_and_highest_temperature() {
    let mut harness = WindowHarness::<Temperatures>::new();
    let window = TestWindow::new(serde_json::json!(["d1"]), 0, 60_000);
    let outcome = harness.window(
        &window,
        [
            TestEvent::new(r#"{"Temperature": 20}"#).at(1_000),
            TestEvent::new(r#"{"Temperature": 30}"#).at(2_000),
        ],
    );
    let row = &outcome.json("rows")[0];
    assert_eq!(row["EventCount"], 2);
    assert_eq!(row["AvgTemperature"], 25.0);
    assert_eq!(row["MaxTemperature"], 30.0);
}

/// Fields the host adds to the records of the stage, which the native harness does not: a window's bounds (the stage's `start_field` and `end_field`).
const HOST_FIELDS: &[&str] = &["WindowStart", "WindowEnd"];

/// Runs a case's events as one window (the case's events all fall in one window of one group).
fn run_case(input: &[InputLine], config: serde_json::Value) -> Outputs {
    let mut harness = WindowHarness::<Temperatures>::new().with_config(config);
    let window = TestWindow::new(serde_json::Value::Null, 0, 60_000);
    let outcome = harness.window(&window, input.iter().map(InputLine::event));
    let mut outputs = Outputs::new();
    for (index, reason) in &outcome.rejected {
        outputs
            .entry("dead-letters".to_owned())
            .or_default()
            .push(dead_letter(index + 1, reason));
    }
    collect(&mut outputs, &outcome.outcome, &["rows"]);
    outputs
}
