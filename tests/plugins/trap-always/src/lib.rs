//! A broken version: panics on every event. The hot-swap tests expect Weir to roll it back by
//! itself, and the events it saw to be processed by the version it replaced.

use weir_sdk::prelude::*;

/// Panics, whatever the event.
#[weir_sdk::transform]
pub fn process(event: &Event, _ctx: &mut Context) -> Result<()> {
    panic!(
        "trap-always: refusing event at position {}",
        event.position()
    );
}
