use weir_sdk::prelude::*;
use weir_sdk::testing::{JoinHarness, TestEvent};

#[weir_sdk::join]
fn enrich(left: Option<&Event>, right: Option<&weir_sdk::Event<'_>>, ctx: &mut Context) -> Result<()> {
    ctx.emit("rows", &serde_json::json!({ "Left": left.is_some(), "Right": right.is_some() }))
}

fn main() {
    let mut harness = JoinHarness::new(enrich);
    let outcome = harness.pair(Some(TestEvent::new("{}")), None);
    assert_eq!(outcome.json("rows")[0]["Right"], false);
}
