//! Temperature anomalies in IoT telemetry: the seed pipeline's rule as a Weir plugin.
//!
//! For every reading of a device, the rule alerts when
//!
//! - the temperature moved by more than `delta_threshold` (15) since the device's previous
//!   reading, if that reading is at most `lag_window_seconds` (300, inclusive) older; or
//! - the temperature is above `max_temperature` (80) or below `min_temperature` (0).
//!
//! which is the Azure Stream Analytics query
//!
//! ```sql
//! SELECT DeviceId, Location, Temperature, PrevTemperature, Temperature - PrevTemperature AS TempDelta, ...
//! FROM (SELECT *, LAG(Temperature) OVER (PARTITION BY DeviceId LIMIT DURATION(minute, 5)) AS PrevTemperature
//!       FROM telemetry TIMESTAMP BY Timestamp)
//! WHERE ABS(Temperature - PrevTemperature) > 15 OR Temperature > 80 OR Temperature < 0
//! ```
//!
//! # Outputs
//!
//! - `rows`: every valid reading, unchanged (it feeds the `raw_telemetry` Delta table).
//! - `alerts`: one [`Alert`] per anomalous reading, with `Severity` `Critical` above
//!   `max_temperature`, else `High` when the temperature moved by more than `high_delta` (20),
//!   else `Medium`. It carries the reading's `EventId`, so consumers of an at-least-once sink can
//!   drop duplicates.
//!
//! # State
//!
//! The device's last reading ([`LastReading`]: temperature and event time), keyed by `DeviceId`.
//! A reading older than the stored one (out of order) is checked but does not replace it.
//!
//! # Rejected readings
//!
//! A body that is not JSON, lacks `DeviceId`, `Temperature`, `Timestamp` or `EventId`, or has a
//! field of the wrong type (see [`Reading`]) is rejected with the reason, and goes to the
//! dead-letter sink instead of `rows`.

use weir_sdk::lag::{Lag, Timed};
use weir_sdk::prelude::*;

/// The rule's settings: the stage's `config` table. Each one has the seed rule's value as its
/// default; an unknown setting is an error (a misspelt threshold must not go unnoticed).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Alert when the temperature moved by more than this since the previous reading.
    pub delta_threshold: f64,
    /// An alert whose temperature moved by more than this is `High` (else `Medium`).
    pub high_delta: f64,
    /// Alert, `Critical`, when the temperature is above this.
    pub max_temperature: f64,
    /// Alert when the temperature is below this.
    pub min_temperature: f64,
    /// The previous reading counts only if it is at most this many seconds older.
    pub lag_window_seconds: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            delta_threshold: 15.0,
            high_delta: 20.0,
            max_temperature: 80.0,
            min_temperature: 0.0,
            lag_window_seconds: 300,
        }
    }
}

/// One telemetry reading, borrowed from the event's body.
///
/// `DeviceId`, `Temperature`, `Timestamp` and `EventId` are required. The other fields may be
/// missing or `null` (a missing `Location` gives an alert with `"Location": null`), but when
/// present they must have their type, since the reading goes on to a typed table. Fields not
/// listed here are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reading<'a> {
    /// The device; the key of the keyed state.
    #[serde(borrow)]
    pub device_id: Text<'a>,
    /// Where the device is.
    #[serde(borrow, default)]
    pub location: Option<Text<'a>>,
    /// The kind of device.
    #[serde(borrow, default)]
    pub device_type: Option<Text<'a>>,
    /// Degrees Celsius.
    pub temperature: f64,
    /// Relative humidity, percent.
    #[serde(default)]
    pub humidity: Option<f64>,
    /// Pressure, hPa.
    #[serde(default)]
    pub pressure: Option<f64>,
    /// Battery level, percent.
    #[serde(default)]
    pub battery_level: Option<f64>,
    /// Signal strength, dBm.
    #[serde(default)]
    pub signal_strength: Option<f64>,
    /// When the reading was taken, as the device wrote it. The pipeline's event time is taken from
    /// it by the host (`Event::time`); the rule copies the text into the alert.
    #[serde(borrow)]
    pub timestamp: Text<'a>,
    /// The reading's unique id.
    #[serde(borrow)]
    pub event_id: Text<'a>,
}

/// The keyed state of one device: its latest reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LastReading {
    /// Its temperature.
    pub temperature: f64,
    /// Its event time, in milliseconds since the Unix epoch.
    pub time: i64,
}

impl Timed for LastReading {
    fn time(&self) -> i64 {
        self.time
    }
}

/// How bad an anomaly is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Severity {
    /// Above `max_temperature`.
    Critical,
    /// The temperature moved by more than `high_delta`.
    High,
    /// Any other anomaly.
    Medium,
}

/// The record sent to output `alerts`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Alert<'a> {
    /// The device.
    pub device_id: &'a str,
    /// Where it is, if the reading said.
    pub location: Option<&'a str>,
    /// The temperature read.
    pub temperature: f64,
    /// The previous reading's temperature, if there was one within the window.
    pub prev_temperature: Option<f64>,
    /// `Temperature - PrevTemperature`, if there was a previous reading within the window.
    pub temp_delta: Option<f64>,
    /// The reading's `Timestamp`, as written.
    pub event_time: &'a str,
    /// Always `TemperatureAnomaly`.
    pub alert_type: &'static str,
    /// How bad it is.
    pub severity: Severity,
    /// The reading's `EventId`: one alert per reading, so consumers can deduplicate on it.
    pub event_id: &'a str,
}

/// Checks one reading: forwards it to `rows`, alerts on `alerts` when it is anomalous, and
/// remembers it as the device's latest reading.
#[weir_sdk::transform]
pub fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    let thresholds: Thresholds = ctx.config()?;
    let reading: Reading = event.json()?;
    let now = event.time();

    let window_ms =
        i64::try_from(thresholds.lag_window_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    // LAG(Temperature) OVER (PARTITION BY DeviceId LIMIT DURATION(second, 300)), counting a
    // reading exactly 300 s older as this rule always has (Stream Analytics' own bound leaves it
    // out, see `weir_sdk::lag`).
    let latest = LastReading {
        temperature: reading.temperature,
        time: now,
    };
    let step = Lag::limit_duration(window_ms)
        .inclusive()
        .step(ctx, &reading.device_id, latest)?;
    let previous = step.previous;

    if let Some(severity) = anomaly(&thresholds, reading.temperature, previous) {
        let alert = Alert {
            device_id: &reading.device_id,
            location: reading.location.as_deref(),
            temperature: reading.temperature,
            prev_temperature: previous.map(|last| last.temperature),
            temp_delta: previous.map(|last| reading.temperature - last.temperature),
            event_time: &reading.timestamp,
            alert_type: "TemperatureAnomaly",
            severity,
            event_id: &reading.event_id,
        };
        ctx.emit("alerts", &alert)?;
        ctx.counter("alerts", 1);
    }

    if !step.stored {
        ctx.counter("out_of_order_readings", 1);
    }

    ctx.forward("rows");
    Ok(())
}

/// The severity of the anomaly `temperature` is, given the device's previous reading within the
/// window; `None` when it is normal.
pub fn anomaly(
    thresholds: &Thresholds,
    temperature: f64,
    previous: Option<LastReading>,
) -> Option<Severity> {
    let delta = previous.map_or(0.0, |last| (temperature - last.temperature).abs());
    if temperature > thresholds.max_temperature {
        Some(Severity::Critical)
    } else if delta > thresholds.delta_threshold || temperature < thresholds.min_temperature {
        Some(if delta > thresholds.high_delta {
            Severity::High
        } else {
            Severity::Medium
        })
    } else {
        None
    }
}
