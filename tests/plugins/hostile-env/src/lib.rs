//! Hostile plugin: on every event, tries to read the environment variable named by the stage's
//! `name` setting and to list the environment. Whatever it finds goes to output `leak`; if the
//! sandbox holds, there is nothing and the event is rejected saying so.

use weir_sdk::prelude::*;

#[derive(Clone, Deserialize)]
struct Settings {
    name: String,
}

/// Tries to read the host's environment.
#[weir_sdk::transform]
pub fn process(_event: &Event, ctx: &mut Context) -> Result<()> {
    let settings: Settings = ctx.config()?;
    let visible: Vec<(String, String)> = std::env::vars().collect();
    match std::env::var(&settings.name) {
        Ok(value) => {
            ctx.emit("leak", &value)?;
            Ok(())
        }
        Err(_) if !visible.is_empty() => {
            ctx.emit("leak", &visible)?;
            Ok(())
        }
        Err(error) => Err(Error::reject(format!(
            "cannot read environment variable {}: {error}; {} variables visible",
            settings.name,
            visible.len()
        ))),
    }
}
