//! Tags each event with the source it came from, as the host says through the batch: emits
//! `{"source": <source name>, "event": <the body>}` to `tagged`.

use weir_sdk::prelude::*;

/// Emits the event's body with its source's name to `tagged`.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    let body: weir_sdk::serde_json::Value = event.json()?;
    ctx.emit(
        "tagged",
        &weir_sdk::serde_json::json!({"source": event.source(), "event": body}),
    )
}
