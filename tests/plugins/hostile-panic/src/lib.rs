//! Hostile plugin: panics on events marked `"poison": true`; other events go to `out`.

use weir_sdk::prelude::*;

/// Whether the event asks for the hostile behaviour (`"poison": true`).
fn poisoned(event: &Event) -> bool {
    #[derive(Deserialize)]
    struct Marker {
        #[serde(default)]
        poison: bool,
    }
    event.json::<Marker>().is_ok_and(|m| m.poison)
}

/// Panics on a poison event.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    if poisoned(event) {
        panic!(
            "hostile-panic: poison event at position {}",
            event.position()
        );
    }
    ctx.forward("out");
    Ok(())
}
