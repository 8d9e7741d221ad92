//! A Weir window aggregate: per window (the stage's `window` table says which), the number of
//! readings and their average and highest temperature, to output `rows`. Built with
//! `weir plugin build`; see the README of Weir, "Writing a plugin".

use weir_sdk::prelude::*;

/// The accumulator of one window, stored as JSON by the host between calls: a later version can
/// add fields with `#[serde(default)]` and keep the windows already open.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Temperatures {
    count: u64,
    sum: f64,
    max: Option<f64>,
}

#[weir_sdk::window]
impl Aggregate for Temperatures {
    /// Called for each event of a window, in event-time order. An `Err` sends the event to the
    /// dead letters and leaves the accumulator as it was.
    fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
        let reading: serde_json::Value = event.value()?;
        let temperature = reading["Temperature"]
            .as_f64()
            .ok_or("no Temperature")?;
        self.count += 1;
        self.sum += temperature;
        self.max = Some(self.max.map_or(temperature, |max| max.max(temperature)));
        Ok(())
    }

    /// Called once, when the window closes.
    fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
        ctx.emit(
            "rows",
            &serde_json::json!({
                "EventCount": self.count,
                "AvgTemperature": self.sum / self.count.max(1) as f64,
                "MaxTemperature": self.max,
            }),
        )
    }
}
