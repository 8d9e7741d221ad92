//! Hostile plugin: allocates memory without end on events marked `"poison": true`; other events
//! go to `out`. Weir must stop it at the stage's memory limit and dead-letter only that event.

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

/// Keeps allocating (and touching) 1 MiB blocks on a poison event.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    if poisoned(event) {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
    ctx.forward("out");
    Ok(())
}
