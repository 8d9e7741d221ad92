//! Hostile plugin: an infinite loop on events marked `"poison": true`; other events go to `out`.
//! Weir must interrupt it at the call deadline and dead-letter only the poison event.

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

/// Loops forever on a poison event.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    if poisoned(event) {
        let mut counter: u64 = 0;
        loop {
            counter = std::hint::black_box(counter.wrapping_add(1));
        }
    }
    ctx.forward("out");
    Ok(())
}
