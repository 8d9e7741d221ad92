//! Another version of the `tally` test plugin that panics on events marked `"poison": true`: while
//! it is on probation those events go to the version it replaced, so both versions write the same
//! keys in turn.

use weir_sdk::prelude::*;

/// Whether the event is marked `"poison": true`.
fn poisoned(event: &Event) -> bool {
    #[derive(Deserialize)]
    struct Marker {
        #[serde(default)]
        poison: bool,
    }
    event.json::<Marker>().is_ok_and(|m| m.poison)
}

/// Emits `{"key", "count", "version": "tally-trap-marked"}` to `tallies`; panics on poison.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    if poisoned(event) {
        panic!(
            "tally-trap-marked: poison event at position {}",
            event.position()
        );
    }
    let key = event.key().unwrap_or("none");
    let count = ctx.get::<u64>(key)?.unwrap_or(0) + 1;
    ctx.put(key, &count)?;
    ctx.emit(
        "tallies",
        &weir_sdk::serde_json::json!({"key": key, "count": count, "version": "tally-trap-marked"}),
    )
}
