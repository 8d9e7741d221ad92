//! A Weir event transform: forwards every reading to output `rows`, and emits an alert to output
//! `alerts` when a device's temperature jumps by more than the stage's `max_jump` since its
//! previous reading (kept in keyed state). Built with `weir plugin build`; see the README of Weir,
//! "Writing a plugin".

use weir_sdk::prelude::*;

/// The stage's `config` table; every setting has a default.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The largest change of temperature between two readings that is not an alert.
    pub max_jump: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_jump: 15.0 }
    }
}

/// The part of an event the plugin reads, borrowed from the batch.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reading<'a> {
    #[serde(borrow)]
    device_id: Text<'a>,
    temperature: f64,
}

/// What the plugin keeps per device between events.
#[derive(Serialize, Deserialize)]
struct Last {
    temperature: f64,
}

/// Called for every event, in order per partition. An `Err` sends the event to the dead letters
/// with the error as its reason.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    let config: Config = ctx.config()?;
    let reading: Reading = event.json()?;
    if let Some(last) = ctx.get::<Last>(&reading.device_id)?
        && (reading.temperature - last.temperature).abs() > config.max_jump
    {
        ctx.emit(
            "alerts",
            &serde_json::json!({
                "DeviceId": &*reading.device_id,
                "From": last.temperature,
                "To": reading.temperature,
            }),
        )?;
    }
    let last = Last {
        temperature: reading.temperature,
    };
    ctx.put(&reading.device_id, &last)?;
    ctx.forward("rows");
    Ok(())
}
