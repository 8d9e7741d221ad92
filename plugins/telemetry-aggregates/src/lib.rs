//! Telemetry aggregates: per device and window, the number of readings and the average, lowest
//! and highest temperature, average humidity and average pressure. The seed's Azure Stream
//! Analytics query:
//!
//! ```sql
//! SELECT DeviceId, Location, DeviceType, COUNT(*) AS EventCount,
//!        AVG(Temperature) AS AvgTemperature, MIN(Temperature) AS MinTemperature,
//!        MAX(Temperature) AS MaxTemperature, AVG(Humidity) AS AvgHumidity,
//!        AVG(Pressure) AS AvgPressure,
//!        System.Timestamp() AS WindowEnd
//! FROM telemetry TIMESTAMP BY Timestamp
//! GROUP BY DeviceId, Location, DeviceType, TumblingWindow(minute, 5)
//! ```
//!
//! The pipeline groups by `DeviceId, Location, DeviceType` in 5-minute tumbling windows (see
//! `examples/telemetry.toml`); the host adds those fields and `WindowStart`/`WindowEnd` to each
//! output row. The plugin only folds readings into [`Readings`] and turns them into a
//! [`WindowRow`] on output `rows`.

use weir_sdk::prelude::*;

/// The fields of a reading the aggregate reads. `Temperature` is required; a reading without
/// humidity or pressure still counts, and the averages of those are over the readings that have
/// them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reading {
    /// Degrees Celsius.
    pub temperature: f64,
    /// Relative humidity, percent.
    #[serde(default)]
    pub humidity: Option<f64>,
    /// Pressure, hPa.
    #[serde(default)]
    pub pressure: Option<f64>,
}

/// The accumulator of one device's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// Readings folded.
    pub count: u64,
    /// Sum of their temperatures.
    pub temperature_sum: f64,
    /// Lowest temperature.
    pub temperature_min: f64,
    /// Highest temperature.
    pub temperature_max: f64,
    /// Sum of the humidities, and how many readings had one.
    pub humidity_sum: f64,
    /// Readings with a humidity.
    pub humidity_count: u64,
    /// Sum of the pressures.
    pub pressure_sum: f64,
    /// Readings with a pressure.
    pub pressure_count: u64,
}

impl Default for Readings {
    fn default() -> Self {
        Readings {
            count: 0,
            temperature_sum: 0.0,
            temperature_min: f64::INFINITY,
            temperature_max: f64::NEG_INFINITY,
            humidity_sum: 0.0,
            humidity_count: 0,
            pressure_sum: 0.0,
            pressure_count: 0,
        }
    }
}

/// One output row (the host adds the device's fields and the window's bounds).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WindowRow {
    /// `COUNT(*)`.
    pub event_count: u64,
    /// `AVG(Temperature)`.
    pub avg_temperature: f64,
    /// `MIN(Temperature)`.
    pub min_temperature: f64,
    /// `MAX(Temperature)`.
    pub max_temperature: f64,
    /// `AVG(Humidity)`, `null` when no reading had one.
    pub avg_humidity: Option<f64>,
    /// `AVG(Pressure)`, `null` when no reading had one.
    pub avg_pressure: Option<f64>,
}

fn average(sum: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum / count as f64)
}

#[weir_sdk::window]
impl Aggregate for Readings {
    fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
        let reading: Reading = event.json()?;
        self.count += 1;
        self.temperature_sum += reading.temperature;
        self.temperature_min = self.temperature_min.min(reading.temperature);
        self.temperature_max = self.temperature_max.max(reading.temperature);
        if let Some(humidity) = reading.humidity {
            self.humidity_sum += humidity;
            self.humidity_count += 1;
        }
        if let Some(pressure) = reading.pressure {
            self.pressure_sum += pressure;
            self.pressure_count += 1;
        }
        Ok(())
    }

    fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        ctx.emit(
            "rows",
            &WindowRow {
                event_count: self.count,
                avg_temperature: self.temperature_sum / self.count as f64,
                min_temperature: self.temperature_min,
                max_temperature: self.temperature_max,
                avg_humidity: average(self.humidity_sum, self.humidity_count),
                avg_pressure: average(self.pressure_sum, self.pressure_count),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::serde_json::json;
    use weir_sdk::testing::{TestEvent, TestWindow, WindowHarness};

    fn reading(temperature: f64, humidity: Option<f64>, pressure: f64) -> TestEvent {
        TestEvent::json(&json!({
            "DeviceId": "d1", "Temperature": temperature, "Humidity": humidity, "Pressure": pressure
        }))
    }

    #[test]
    fn averages_minimum_and_maximum_over_the_window_even_across_batches() {
        let mut harness = WindowHarness::<Readings>::new();
        let window = TestWindow::new(json!({"DeviceId": "d1"}), 0, 300_000);
        // Two batches, as the host folds them: the accumulator goes through its stored form.
        let (first, rejected) = harness.fold(
            &window,
            None,
            [
                reading(20.0, Some(40.0), 1000.0),
                reading(26.0, None, 1010.0),
            ],
        );
        assert!(rejected.is_empty());
        let (all, rejected) = harness.fold(
            &window,
            Some(&first),
            [
                reading(23.0, Some(50.0), 1020.0),
                TestEvent::new(r#"{"DeviceId":"d1"}"#),
            ],
        );
        assert_eq!(
            rejected,
            vec![(1, "missing field `Temperature`".to_owned())]
        );
        let outcome = harness.finish(&window, &all);
        let row = &outcome.json("rows")[0];
        assert_eq!(row["EventCount"], 3);
        assert_eq!(row["AvgTemperature"], 23.0);
        assert_eq!(row["MinTemperature"], 20.0);
        assert_eq!(row["MaxTemperature"], 26.0);
        assert_eq!(row["AvgHumidity"], 45.0);
        assert_eq!(row["AvgPressure"], 1010.0);
    }
}
