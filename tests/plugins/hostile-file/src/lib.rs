//! Hostile plugin: on every event, tries to read the file named by the stage's `path` setting (and
//! to list `/`). Whatever it reads goes to output `leak`; if the sandbox holds, every attempt
//! fails and the event is rejected with the error, which names what was refused.

use weir_sdk::prelude::*;

#[derive(Clone, Deserialize)]
struct Settings {
    path: String,
}

/// Tries to read a host file.
#[weir_sdk::transform]
pub fn process(_event: &Event, ctx: &mut Context) -> Result<()> {
    let settings: Settings = ctx.config()?;
    let listing = std::fs::read_dir("/").map(|entries| entries.count());
    match std::fs::read_to_string(&settings.path) {
        Ok(text) => {
            ctx.emit("leak", &text)?;
            Ok(())
        }
        Err(error) => Err(Error::reject(format!(
            "cannot read {}: {error}; listing / gave {listing:?}",
            settings.path
        ))),
    }
}
