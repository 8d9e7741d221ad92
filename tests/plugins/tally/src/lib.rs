//! Counts the events of each key in keyed state: each event's record says how many events of its
//! key the stage has seen, itself included. Whatever versions ran, the counts of a key go 1, 2,
//! 3, ...: a version whose cached state is stale breaks that at once.

use weir_sdk::prelude::*;

/// Emits `{"key", "count", "version": "tally"}` to `tallies`.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    let key = event.key().unwrap_or("none");
    let count = ctx.get::<u64>(key)?.unwrap_or(0) + 1;
    ctx.put(key, &count)?;
    ctx.emit(
        "tallies",
        &weir_sdk::serde_json::json!({"key": key, "count": count, "version": "tally"}),
    )
}
