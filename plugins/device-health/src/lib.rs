//! Device health: per device and 10-minute window, the number of messages and the average battery
//! level and signal strength; an alert when a device sends too little, or its battery or signal is
//! low. The seed's Azure Stream Analytics query:
//!
//! ```sql
//! SELECT DeviceId, Location, COUNT(*) AS MessageCount,
//!        AVG(BatteryLevel) AS AvgBattery, AVG(SignalStrength) AS AvgSignal,
//!        CASE WHEN AVG(BatteryLevel) < 10 THEN 'Critical'
//!             WHEN COUNT(*) < 5 THEN 'High' ELSE 'Medium' END AS Severity
//! FROM telemetry TIMESTAMP BY Timestamp
//! GROUP BY DeviceId, Location, TumblingWindow(minute, 10)
//! HAVING COUNT(*) < 10 OR AVG(BatteryLevel) < 20 OR AVG(SignalStrength) < -80
//! ```
//!
//! The thresholds are the stage's `config` ([`Thresholds`]). Alerts go to output `alerts`; the
//! host adds `DeviceId`, `Location`, `WindowStart` and `WindowEnd`.

use weir_sdk::prelude::*;

/// When a window raises an alert; the defaults are the seed's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Alert when a window has fewer messages than this.
    pub min_messages: u64,
    /// Alert when the average battery level is below this.
    pub min_battery: f64,
    /// Alert when the average signal strength is below this (dBm).
    pub min_signal: f64,
    /// `Critical` when the average battery level is below this.
    pub critical_battery: f64,
    /// `High` when a window has fewer messages than this.
    pub high_below_messages: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_messages: 10,
            min_battery: 20.0,
            min_signal: -80.0,
            critical_battery: 10.0,
            high_below_messages: 5,
        }
    }
}

/// The fields of a reading the window reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reading {
    /// Battery level, percent.
    pub battery_level: f64,
    /// Signal strength, dBm.
    pub signal_strength: f64,
}

/// The accumulator of one device's window.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Messages folded.
    pub messages: u64,
    /// Sum of their battery levels.
    pub battery_sum: f64,
    /// Sum of their signal strengths.
    pub signal_sum: f64,
}

/// The alert sent to output `alerts`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthAlert {
    /// `COUNT(*)`.
    pub message_count: u64,
    /// `AVG(BatteryLevel)`.
    pub avg_battery: f64,
    /// `AVG(SignalStrength)`.
    pub avg_signal: f64,
    /// Always `DeviceHealth`.
    pub alert_type: &'static str,
    /// `Critical`, `High` or `Medium`.
    pub severity: &'static str,
}

/// The alert a window with these figures raises, if any.
pub fn assess(thresholds: &Thresholds, health: &Health) -> Option<HealthAlert> {
    if health.messages == 0 {
        return None;
    }
    let avg_battery = health.battery_sum / health.messages as f64;
    let avg_signal = health.signal_sum / health.messages as f64;
    let unhealthy = health.messages < thresholds.min_messages
        || avg_battery < thresholds.min_battery
        || avg_signal < thresholds.min_signal;
    if !unhealthy {
        return None;
    }
    let severity = if avg_battery < thresholds.critical_battery {
        "Critical"
    } else if health.messages < thresholds.high_below_messages {
        "High"
    } else {
        "Medium"
    };
    Some(HealthAlert {
        message_count: health.messages,
        avg_battery,
        avg_signal,
        alert_type: "DeviceHealth",
        severity,
    })
}

#[weir_sdk::window]
impl Aggregate for Health {
    fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
        let reading: Reading = event.json()?;
        self.messages += 1;
        self.battery_sum += reading.battery_level;
        self.signal_sum += reading.signal_strength;
        Ok(())
    }

    fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
        let thresholds: Thresholds = ctx.config()?;
        if let Some(alert) = assess(&thresholds, &self) {
            ctx.counter("alerts", 1);
            ctx.emit("alerts", &alert)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::serde_json::json;
    use weir_sdk::testing::{TestEvent, TestWindow, WindowHarness};

    fn readings(count: usize, battery: f64, signal: f64) -> Vec<TestEvent> {
        (0..count)
            .map(|_| TestEvent::json(&json!({"BatteryLevel": battery, "SignalStrength": signal})))
            .collect()
    }

    fn severity(count: usize, battery: f64, signal: f64) -> Option<String> {
        let mut harness = WindowHarness::<Health>::new();
        let window = TestWindow::new(json!({"DeviceId": "d1", "Location": "Paris"}), 0, 600_000);
        let outcome = harness.window(&window, readings(count, battery, signal));
        outcome
            .json("alerts")
            .first()
            .map(|a| a["Severity"].as_str().unwrap_or_default().to_owned())
    }

    #[test]
    fn alerts_follow_the_seed_rule() {
        assert_eq!(severity(60, 80.0, -60.0), None, "healthy");
        assert_eq!(
            severity(9, 80.0, -60.0).as_deref(),
            Some("Medium"),
            "few messages"
        );
        assert_eq!(
            severity(4, 80.0, -60.0).as_deref(),
            Some("High"),
            "very few messages"
        );
        assert_eq!(
            severity(60, 15.0, -60.0).as_deref(),
            Some("Medium"),
            "low battery"
        );
        assert_eq!(
            severity(4, 9.0, -60.0).as_deref(),
            Some("Critical"),
            "battery first"
        );
        assert_eq!(
            severity(60, 80.0, -81.0).as_deref(),
            Some("Medium"),
            "weak signal"
        );
        assert_eq!(
            severity(10, 20.0, -80.0),
            None,
            "the bounds themselves are healthy"
        );
    }

    #[test]
    fn thresholds_come_from_the_stage_config() {
        let mut harness = WindowHarness::<Health>::new().with_config(json!({"min_messages": 100}));
        let window = TestWindow::new(json!({}), 0, 600_000);
        let outcome = harness.window(&window, readings(60, 80.0, -60.0));
        assert_eq!(outcome.json("alerts")[0]["MessageCount"], 60);
        assert_eq!(harness.counters()["alerts"], 1);
    }
}
