//! The smallest Weir plugin: every event goes to output `out`, unchanged.
//!
//! It does no work of its own, so a benchmark of it measures what crossing the Wasm boundary
//! costs: the host's copy of the batch in, the walk over the batch, the output back.

use weir_sdk::prelude::*;

/// Forwards the event, uncopied, to output `out`.
#[weir_sdk::transform]
pub fn passthrough(_event: &Event, ctx: &mut Context) -> Result<()> {
    ctx.forward("out");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, TestEvent};

    #[test]
    fn forwards_every_event_unchanged_even_if_not_json() {
        let mut harness = Harness::new(passthrough);
        let bodies = ["{\"a\":1}", "not json", ""];
        let outcomes = harness.run_batch(bodies.iter().map(|b| TestEvent::new(*b)));
        for (outcome, body) in outcomes.iter().zip(bodies) {
            assert_eq!(outcome.rejection(), None);
            let records = outcome.output("out");
            assert_eq!(records.len(), 1);
            assert!(records[0].forwarded);
            assert_eq!(records[0].bytes, body.as_bytes());
        }
        let output = harness.last_output();
        assert_eq!(output.targets, ["out"]);
        assert!(output.payloads.is_empty(), "forwarding copies nothing");
    }
}
