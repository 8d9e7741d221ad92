//! Telemetry test data, the anomaly rule re-derived from its specification (not from the plugin),
//! and a pipeline configuration that runs the anomaly plugin into Delta and JSON Lines.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// One telemetry reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device id.
    pub device: String,
    /// Location of the device.
    pub location: String,
    /// Kind of device.
    pub device_type: String,
    /// °C.
    pub temperature: f64,
    /// %.
    pub humidity: f64,
    /// hPa.
    pub pressure: f64,
    /// %.
    pub battery: f64,
    /// dBm.
    pub signal: f64,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// Unique id of the reading.
    pub event_id: String,
}

/// 2026-11-01T00:00:00Z in ms.
pub const BASE_TIME_MS: i64 = 1_793_491_200_000;

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(time_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(time_ms)
        .expect("time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Reading {
    /// A reading with plausible values for the fields the rule does not look at.
    pub fn new(device: &str, time_ms: i64, temperature: f64, event_id: &str) -> Reading {
        Reading {
            device: device.to_owned(),
            location: format!("Site-{}", device.len() % 3),
            device_type: "Thermostat".to_owned(),
            temperature,
            humidity: 45.5,
            pressure: 1013.25,
            battery: 88.0,
            signal: -61.0,
            time_ms,
            event_id: event_id.to_owned(),
        }
    }

    /// The reading as the seed's JSON event.
    pub fn to_json(&self) -> String {
        json!({
            "DeviceId": self.device,
            "Location": self.location,
            "DeviceType": self.device_type,
            "Temperature": self.temperature,
            "Humidity": self.humidity,
            "Pressure": self.pressure,
            "BatteryLevel": self.battery,
            "SignalStrength": self.signal,
            "Timestamp": timestamp(self.time_ms),
            "EventId": self.event_id,
        })
        .to_string()
    }
}

/// Readings with known anomalies, and their expected alerts worked out by hand:
/// `(readings, [(EventId, Severity, PrevTemperature, TempDelta)])`.
#[allow(
    clippy::type_complexity,
    reason = "a table of hand-written expectations"
)]
pub fn hand_checked_scenario() -> (
    Vec<Reading>,
    Vec<(&'static str, &'static str, Option<f64>, Option<f64>)>,
) {
    let m = 60_000;
    let t = BASE_TIME_MS;
    let readings = vec![
        Reading::new("dev-a", t, 20.0, "a1"), // first reading: nothing to compare with
        Reading::new("dev-a", t + m, 36.0, "a2"), // +16 within 5 min: Medium
        Reading::new("dev-a", t + 2 * m, 57.5, "a3"), // +21.5: High
        Reading::new("dev-a", t + 8 * m, 20.0, "a4"), // 6 min gap: no previous, no alert
        Reading::new("dev-a", t + 13 * m, 85.0, "a5"), // exactly 5 min: +65, and > 80: Critical
        Reading::new("dev-a", t + 14 * m, -1.0, "a6"), // -86 and < 0: High
        Reading::new("dev-b", t, 90.0, "b1"), // first reading above 80: Critical
        Reading::new("dev-b", t + 30_000, 89.0, "b2"), // still above 80: Critical, delta -1
        Reading::new("dev-c", t, 10.0, "c1"), // first reading
        Reading::new("dev-c", t + m, 25.0, "c2"), // +15 exactly: not above 15, no alert
        Reading::new("dev-c", t + 2 * m, 40.01, "c3"), // +15.01: Medium
        Reading::new("dev-c", t + 20 * m, -5.0, "c4"), // long gap, below 0: Medium, no delta
        Reading::new("dev-c", t + 20 * m + 1, 10.0, "c5"), // +15 exactly: no alert
    ];
    let expected = vec![
        ("a2", "Medium", Some(20.0), Some(16.0)),
        ("a3", "High", Some(36.0), Some(21.5)),
        ("a5", "Critical", Some(20.0), Some(65.0)),
        ("a6", "High", Some(85.0), Some(-86.0)),
        ("b1", "Critical", None, None),
        ("b2", "Critical", Some(90.0), Some(-1.0)),
        ("c3", "Medium", Some(25.0), Some(40.01 - 25.0)),
        ("c4", "Medium", None, None),
    ];
    (readings, expected)
}

/// A deterministic mix of normal readings, jumps, values past the limits and gaps.
pub fn generated_readings(devices: usize, per_device: usize, seed: u64) -> Vec<Reading> {
    let mut rng = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut readings = Vec::with_capacity(devices * per_device);
    let mut times = vec![BASE_TIME_MS; devices];
    let mut temps: Vec<f64> = (0..devices).map(|d| 18.0 + (d % 12) as f64).collect();
    for step in 0..per_device {
        for device in 0..devices {
            // Mostly 20 s apart; sometimes a gap of 5 to 7 minutes.
            times[device] += if next() < 0.02 {
                300_000 + (next() * 120_000.0) as i64
            } else {
                20_000
            };
            temps[device] += (next() - 0.5) * 2.0;
            let mut temperature = temps[device];
            let r = next();
            if r < 0.05 {
                temperature += if next() < 0.5 { -1.0 } else { 1.0 } * (16.0 + next() * 20.0);
            } else if r < 0.052 {
                temperature = 80.5 + next() * 10.0;
            } else if r < 0.054 {
                temperature = -0.5 - next() * 5.0;
            }
            let temperature = (temperature * 100.0).round() / 100.0;
            let mut reading = Reading::new(
                &format!("device-{device:03}"),
                times[device],
                temperature,
                &format!("evt-{seed}-{step}-{device}"),
            );
            reading.battery = (100.0 - step as f64 * 0.01).max(0.0);
            readings.push(reading);
        }
    }
    readings
}

/// Readings in event-time order over the whole input: device `d` reads every 20 s at
/// `step * 20 s + d * spacing`, where the spacing is 100 ms for up to 200 devices and 20 s divided
/// among the devices beyond (so that a step's readings end before the next step's begin),
/// sometimes falls silent for 6 minutes (a gap the rule must not bridge),
/// with jumps and values past the limits mixed in. Unlike [`generated_readings`], the file order is
/// the event-time order, so that the input can be shuffled within a known bound.
pub fn ordered_readings(devices: usize, steps: usize, seed: u64) -> Vec<Reading> {
    let mut rng = seed.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(3);
    let mut next = move || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut readings = Vec::with_capacity(devices * steps);
    let mut temps: Vec<f64> = (0..devices).map(|d| 18.0 + (d % 12) as f64).collect();
    let mut silent_until = vec![0usize; devices];
    let spacing_ms = (20_000 / devices.max(1) as i64).min(100);
    for step in 0..steps {
        for device in 0..devices {
            if step < silent_until[device] {
                continue;
            }
            if next() < 0.01 {
                silent_until[device] = step + 18; // 6 minutes without a reading
            }
            temps[device] += (next() - 0.5) * 2.0;
            let mut temperature = temps[device];
            let r = next();
            if r < 0.05 {
                temperature += if next() < 0.5 { -1.0 } else { 1.0 } * (16.0 + next() * 20.0);
            } else if r < 0.052 {
                temperature = 80.5 + next() * 10.0;
            } else if r < 0.054 {
                temperature = -0.5 - next() * 5.0;
            }
            let temperature = (temperature * 100.0).round() / 100.0;
            let time = BASE_TIME_MS + step as i64 * 20_000 + device as i64 * spacing_ms;
            readings.push(Reading::new(
                &format!("device-{device:03}"),
                time,
                temperature,
                &format!("ord-{seed}-{step}-{device}"),
            ));
        }
    }
    readings
}

/// `readings` shuffled so that no reading comes more than `max_delay_ms` of event time after a
/// reading with a later time: each is sorted by its time plus a random delay below the bound.
pub fn shuffle_within(readings: &[Reading], max_delay_ms: i64, seed: u64) -> Vec<Reading> {
    let mut rng = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut keyed: Vec<(i64, usize)> = readings
        .iter()
        .enumerate()
        .map(|(index, reading)| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let delay = ((rng >> 11) % max_delay_ms.max(1) as u64) as i64;
            (reading.time_ms + delay, index)
        })
        .collect();
    keyed.sort();
    keyed
        .into_iter()
        .map(|(_, i)| readings[i].clone())
        .collect()
}

/// An alert the rule must raise, derived here from the rule's text.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedAlert {
    /// EventId of the reading.
    pub event_id: String,
    /// DeviceId.
    pub device: String,
    /// Location.
    pub location: String,
    /// Temperature.
    pub temperature: f64,
    /// Previous temperature within 5 minutes, if any.
    pub prev: Option<f64>,
    /// Temperature minus the previous one.
    pub delta: Option<f64>,
    /// Critical, High or Medium.
    pub severity: &'static str,
    /// The reading's Timestamp text.
    pub event_time: String,
}

/// The seed's rule, applied to `readings` in the order given (per device, the order of the
/// partition): alert when |Temperature − previous Temperature of the device within the last 5
/// minutes| > 15, or Temperature > 80, or Temperature < 0; Critical above 80, else High when
/// |delta| > 20, else Medium.
pub fn expected_alerts(readings: &[Reading]) -> Vec<ExpectedAlert> {
    let mut last: HashMap<&str, (f64, i64)> = HashMap::new();
    let mut alerts = Vec::new();
    for reading in readings {
        let prev = last
            .get(reading.device.as_str())
            .filter(|(_, time)| (0..=300_000).contains(&(reading.time_ms - time)))
            .map(|(temp, _)| *temp);
        let delta = prev.map(|p| reading.temperature - p);
        let big_delta = delta.is_some_and(|d| d.abs() > 15.0);
        if big_delta || reading.temperature > 80.0 || reading.temperature < 0.0 {
            let severity = if reading.temperature > 80.0 {
                "Critical"
            } else if delta.is_some_and(|d| d.abs() > 20.0) {
                "High"
            } else {
                "Medium"
            };
            alerts.push(ExpectedAlert {
                event_id: reading.event_id.clone(),
                device: reading.device.clone(),
                location: reading.location.clone(),
                temperature: reading.temperature,
                prev,
                delta,
                severity,
                event_time: timestamp(reading.time_ms),
            });
        }
        let keep = last
            .get(reading.device.as_str())
            .is_none_or(|(_, time)| reading.time_ms >= *time);
        if keep {
            last.insert(&reading.device, (reading.temperature, reading.time_ms));
        }
    }
    alerts
}

/// Checks the alerts Weir wrote against the expected ones, exactly (floats within 1e-9), in any
/// order; panics with the difference.
pub fn assert_alerts_match(actual: &[Value], expected: &[ExpectedAlert]) {
    let mut by_id: HashMap<String, &Value> = HashMap::new();
    for alert in actual {
        let id = alert["EventId"]
            .as_str()
            .expect("alert has an EventId")
            .to_owned();
        assert!(
            by_id.insert(id.clone(), alert).is_none(),
            "two alerts for reading {id}"
        );
    }
    let mut problems = String::new();
    for want in expected {
        let Some(got) = by_id.remove(&want.event_id) else {
            let _ = writeln!(problems, "missing alert for {want:?}");
            continue;
        };
        let checks = [
            ("DeviceId", json!(want.device)),
            ("Location", json!(want.location)),
            ("Temperature", json!(want.temperature)),
            ("PrevTemperature", json!(want.prev)),
            ("TempDelta", json!(want.delta)),
            ("Severity", json!(want.severity)),
            ("AlertType", json!("TemperatureAnomaly")),
            ("EventTime", json!(want.event_time)),
        ];
        for (field, value) in checks {
            if !crate::close(&got[field], &value) {
                let _ = writeln!(
                    problems,
                    "{}: {field} is {} but should be {value}",
                    want.event_id, got[field]
                );
            }
        }
    }
    for (id, alert) in by_id {
        let _ = writeln!(problems, "unexpected alert for {id}: {alert}");
    }
    assert!(
        problems.is_empty(),
        "alerts differ from the rule:\n{problems}"
    );
}

/// Writes `readings` (and `extra` raw lines after them) as a JSON Lines file.
pub fn write_input(path: &Path, readings: &[Reading], extra: &[&str]) {
    let mut text = String::new();
    for reading in readings {
        text.push_str(&reading.to_json());
        text.push('\n');
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write input");
}

/// Knobs of the test pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Partitions of the file source.
    pub partitions: u32,
    /// Checkpoint interval, as configuration text.
    pub checkpoint_interval: &'static str,
    /// Most events per batch.
    pub batch_max_events: usize,
    /// Largest accepted event.
    pub max_event_bytes: usize,
    /// The pipeline's `event_time` table, as inline TOML.
    pub event_time: String,
    /// Extra keys of the file source, as TOML lines.
    pub source_extra: String,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            partitions: 4,
            checkpoint_interval: "200ms",
            batch_max_events: 256,
            max_event_bytes: 4096,
            event_time: r#"{ field = "Timestamp" }"#.to_owned(),
            source_extra: String::new(),
        }
    }
}

/// Paths of a test pipeline's outputs.
#[derive(Debug, Clone)]
pub struct PipelinePaths {
    /// The configuration file.
    pub config: PathBuf,
    /// The raw_telemetry Delta table.
    pub raw_table: PathBuf,
    /// Directory of the alert files.
    pub alerts: PathBuf,
    /// Directory of the dead-letter files.
    pub dead_letters: PathBuf,
    /// Checkpoint directory.
    pub checkpoints: PathBuf,
}

/// The columns of the `raw_telemetry` Delta table, as configuration text.
pub const RAW_TELEMETRY_COLUMNS: &str = r#"columns = [
  { name = "EventId", type = "string", nullable = false },
  { name = "DeviceId", type = "string", nullable = false },
  { name = "Location", type = "string" },
  { name = "DeviceType", type = "string" },
  { name = "Temperature", type = "double" },
  { name = "Humidity", type = "double" },
  { name = "Pressure", type = "double" },
  { name = "BatteryLevel", type = "double" },
  { name = "SignalStrength", type = "double" },
  { name = "Timestamp", type = "timestamp" },
  { name = "EventDate", type = "date", from = "Timestamp" },
  { name = "IngestionTime", type = "timestamp", value = "ingestion_time" },
]"#;

/// Writes a configuration that reads `input` and runs the anomaly plugin into a `raw_telemetry`
/// Delta table (partitioned by EventDate), JSON Lines alerts and dead letters, all under `dir`.
pub fn anomaly_pipeline(dir: &Path, input: &Path, options: &PipelineOptions) -> PipelinePaths {
    let plugin = crate::plugin_path("telemetry_anomaly");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "{interval}"

[sources.telemetry]
kind = "file"
path = "{input}"
partitions = {partitions}
key_field = "DeviceId"
{source_extra}

[sinks.raw_telemetry]
kind = "delta"
path = "delta/raw_telemetry"
partition_by = ["EventDate"]
{columns}

[sinks.alerts]
kind = "file"
path = "alerts"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.telemetry]
source = "telemetry"
event_time = {event_time}
dead_letter = "dead_letters"
max_event_bytes = {max_event_bytes}
batch = {{ max_events = {batch}, max_wait = "20ms" }}

[[pipelines.telemetry.stages]]
name = "anomaly"
plugin = "{plugin}"
outputs = {{ alerts = "alerts", rows = "raw_telemetry" }}
"#,
        interval = options.checkpoint_interval,
        input = input.display(),
        partitions = options.partitions,
        max_event_bytes = options.max_event_bytes,
        batch = options.batch_max_events,
        plugin = plugin.display(),
        event_time = options.event_time,
        source_extra = options.source_extra,
        columns = RAW_TELEMETRY_COLUMNS,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    PipelinePaths {
        config: path,
        raw_table: dir.join("delta/raw_telemetry"),
        alerts: dir.join("alerts"),
        dead_letters: dir.join("dead_letters"),
        checkpoints: dir.join("checkpoints"),
    }
}

/// Asserts that the Delta rows hold every reading exactly once (by `EventId`): none written
/// twice, none missing.
pub fn assert_each_reading_once(rows: &[Value], readings: &[Reading]) {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for row in rows {
        *counts
            .entry(row["EventId"].as_str().expect("EventId"))
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "rows written twice: {twice:?}");
    assert_eq!(rows.len(), readings.len(), "every event is in the table");
    let missing: Vec<_> = readings
        .iter()
        .filter(|r| !counts.contains_key(r.event_id.as_str()))
        .map(|r| r.event_id.as_str())
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "events missing from the table: {missing:?}"
    );
}

/// Length of the telemetry aggregates' tumbling windows.
pub const FIVE_MINUTES: i64 = 300_000;

/// One expected row of the 5-minute aggregates, by (DeviceId, WindowStart).
#[derive(Debug, Default)]
pub struct Aggregate {
    /// `Location` of the device.
    pub location: String,
    /// `DeviceType` of the device.
    pub device_type: String,
    /// Readings in the window.
    pub count: u64,
    /// Sum of their temperatures.
    pub temperature_sum: f64,
    /// Lowest temperature.
    pub min: f64,
    /// Highest temperature.
    pub max: f64,
    /// Sum of their humidities.
    pub humidity_sum: f64,
    /// Sum of their pressures.
    pub pressure_sum: f64,
}

/// `GROUP BY DeviceId, Location, DeviceType, TumblingWindow(minute, 5)`, folded plainly with
/// Weir's windows `[start, end)`.
pub fn expected_aggregates(readings: &[Reading]) -> BTreeMap<(String, i64), Aggregate> {
    aggregates_by(readings, |time| {
        time.div_euclid(FIVE_MINUTES) * FIVE_MINUTES
    })
}

/// The same with Stream Analytics' windows `(start, end]`: a reading exactly on a fifth minute
/// belongs to the window ending there.
pub fn expected_asa_aggregates(readings: &[Reading]) -> BTreeMap<(String, i64), Aggregate> {
    aggregates_by(readings, |time| {
        (time - 1).div_euclid(FIVE_MINUTES) * FIVE_MINUTES
    })
}

/// The 5-minute aggregates, each reading in the window starting at `start(time)`.
fn aggregates_by(
    readings: &[Reading],
    start: impl Fn(i64) -> i64,
) -> BTreeMap<(String, i64), Aggregate> {
    let mut groups: BTreeMap<(String, i64), Aggregate> = BTreeMap::new();
    for r in readings {
        let start = start(r.time_ms);
        let group = groups
            .entry((r.device.clone(), start))
            .or_insert_with(|| Aggregate {
                location: r.location.clone(),
                device_type: r.device_type.clone(),
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                ..Aggregate::default()
            });
        group.count += 1;
        group.temperature_sum += r.temperature;
        group.min = group.min.min(r.temperature);
        group.max = group.max.max(r.temperature);
        group.humidity_sum += r.humidity;
        group.pressure_sum += r.pressure;
    }
    groups
}

/// Checks the aggregate rows (as read back from Delta) against the fold: one row per device and
/// window, each exactly (floats within 1e-9).
pub fn assert_aggregate_rows(rows: &[Value], expected: &BTreeMap<(String, i64), Aggregate>) {
    assert_eq!(rows.len(), expected.len(), "one row per device and window");
    let mut seen = std::collections::BTreeSet::new();
    for row in rows {
        let device = row["DeviceId"].as_str().expect("DeviceId").to_owned();
        let start = crate::python_timestamp_ms(row["WindowStart"].as_str().expect("WindowStart"));
        let end = crate::python_timestamp_ms(row["WindowEnd"].as_str().expect("WindowEnd"));
        assert_eq!(end - start, FIVE_MINUTES, "{row}");
        let want = expected
            .get(&(device.clone(), start))
            .unwrap_or_else(|| panic!("unexpected row {row}"));
        let n = want.count as f64;
        let checks = [
            ("Location", json!(want.location)),
            ("DeviceType", json!(want.device_type)),
            ("EventCount", json!(want.count)),
            ("AvgTemperature", json!(want.temperature_sum / n)),
            ("MinTemperature", json!(want.min)),
            ("MaxTemperature", json!(want.max)),
            ("AvgHumidity", json!(want.humidity_sum / n)),
            ("AvgPressure", json!(want.pressure_sum / n)),
        ];
        for (field, value) in checks {
            assert!(
                crate::close(&row[field], &value),
                "{field}: {row} vs {value}"
            );
        }
        assert!(seen.insert((device, start)), "row twice: {row}");
    }
}
