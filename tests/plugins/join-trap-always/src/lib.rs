//! A broken join version: panics on every pair. The join hot-swap tests expect Weir to roll it
//! back by itself, and the pairs it trapped on to be enriched by the version it replaced.

use weir_sdk::prelude::*;

/// Panics, whatever the pair.
#[weir_sdk::join]
pub fn enrich(left: Option<&Event>, right: Option<&Event>, _ctx: &mut Context) -> Result<()> {
    panic!(
        "join-trap-always: refusing the pair at positions {:?} and {:?}",
        left.map(Event::position),
        right.map(Event::position)
    );
}
