//! A broken window version: panics on every fold and every finish. The window hot-swap tests
//! expect Weir to roll it back by itself, and the events and windows it trapped on to be folded
//! and finished by the version it replaced.

use weir_sdk::prelude::*;

/// Holds nothing: any accumulator of the version it replaces reads as this (unknown fields are
/// ignored), so that it is the call, not the decoding, that fails.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Nothing {}

#[weir_sdk::window]
impl Aggregate for Nothing {
    fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
        panic!(
            "window-trap-always: refusing event at position {}",
            event.position()
        );
    }

    fn finish(self, window: &Window, _ctx: &mut Context) -> Result<()> {
        panic!(
            "window-trap-always: refusing to finish the window of {}",
            window.key_json()
        );
    }
}
