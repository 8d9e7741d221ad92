//! Tests of the plugin, run natively by `cargo test` with the SDK's harness (no wasm needed).

use weir_sdk::testing::{JoinHarness, TestEvent};
use {{crate}}::enrich;

#[test]
fn a_paid_seat_an_unpaid_one_and_a_payment_alone() {
    let mut harness = JoinHarness::new(enrich);
    let seat = TestEvent::new(r#"{"OrderId":"o1","SeatId":"A1"}"#).at(1_000);
    let payment = TestEvent::new(r#"{"OrderId":"o1","Amount":40.0}"#).at(31_000);
    let row = &harness.pair(Some(seat.clone()), Some(payment.clone())).json("rows")[0];
    assert_eq!(row["Paid"], true);
    assert_eq!(row["Amount"], 40.0);
    assert_eq!(harness.pair(Some(seat), None).json("rows")[0]["Paid"], false);
    assert!(harness.pair(None, Some(payment)).json("rows").is_empty());
}

/// Fields the host adds to the records of the stage, which the native harness does not: none for a join.
const HOST_FIELDS: &[&str] = &[];

/// The case's join bound: a right event joins a left one with the same `OrderId` up to this many
/// milliseconds after it (the case's `join.within`, 2 minutes).
const WITHIN_MS: i64 = 120_000;

/// Pairs a case's events as the stage's `join` table says (on `OrderId`, within 2 minutes, a left
/// event alone emitted, a right one alone dropped) and enriches each pair, left events in order.
fn run_case(input: &[InputLine], config: serde_json::Value) -> Outputs {
    let mut harness = JoinHarness::new(enrich).with_config(config);
    let order = |line: &InputLine| line.body["OrderId"].clone();
    let side = |line: &&InputLine, name: &str| line.side.as_deref() == Some(name);
    let rights: Vec<&InputLine> = input.iter().filter(|l| side(l, "right")).collect();
    let mut outputs = Outputs::new();
    for (n, left) in input.iter().enumerate().filter(|(_, l)| side(l, "left")) {
        let right = rights.iter().find(|r| {
            order(r) == order(left) && (0..=WITHIN_MS).contains(&(r.time - left.time))
        });
        let outcome = harness.pair(Some(left.event()), right.map(|r| r.event()));
        match outcome.rejection() {
            Some(reason) => outputs
                .entry("dead-letters".to_owned())
                .or_default()
                .push(dead_letter(n + 1, reason)),
            None => collect(&mut outputs, &outcome, &["rows"]),
        }
    }
    outputs
}
