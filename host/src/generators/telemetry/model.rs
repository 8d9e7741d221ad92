//! The telemetry model: every reading is a pure function of the seed and its number.
//!
//! Nothing here keeps state from one reading to the next. Each random choice is a counter-based
//! hash (splitmix64's finaliser) of the seed, the reading (or device) number and a tag naming the
//! choice, so reading `r` can be regenerated on its own after a crash, byte for byte.

use std::f64::consts::TAU;

use bytes::Bytes;

use crate::event::partition_for_key;
use crate::generators::random::{hash, unit};

/// Cities the devices are spread over.
const LOCATIONS: [&str; 10] = [
    "Seattle",
    "London",
    "Paris",
    "Berlin",
    "Tokyo",
    "Sydney",
    "Toronto",
    "Singapore",
    "Amsterdam",
    "Sao Paulo",
];

/// Kinds of devices.
const DEVICE_TYPES: [&str; 5] = [
    "Thermostat",
    "HVAC",
    "Refrigerator",
    "ServerRack",
    "WeatherStation",
];

/// Tags naming each random choice, so that two choices about the same reading are independent.
mod tag {
    pub(super) const LOCATION: u64 = 1;
    pub(super) const DEVICE_TYPE: u64 = 2;
    pub(super) const BASE_TEMPERATURE: u64 = 3;
    pub(super) const TEMPERATURE_PHASE: u64 = 4;
    pub(super) const TEMPERATURE_AMPLITUDE: u64 = 5;
    pub(super) const HUMIDITY_BASE: u64 = 6;
    pub(super) const HUMIDITY_PHASE: u64 = 7;
    pub(super) const PRESSURE_BASE: u64 = 8;
    pub(super) const PRESSURE_PHASE: u64 = 9;
    pub(super) const BATTERY_DRAIN: u64 = 10;
    pub(super) const BATTERY_OFFSET: u64 = 11;
    pub(super) const SIGNAL_BASE: u64 = 12;
    pub(super) const TEMPERATURE_NOISE: u64 = 20;
    pub(super) const JUMP: u64 = 21;
    pub(super) const JUMP_SIZE: u64 = 22;
    pub(super) const JUMP_SIGN: u64 = 23;
    pub(super) const JUMP_EXTREME: u64 = 24;
    pub(super) const HUMIDITY_NOISE: u64 = 25;
    pub(super) const PRESSURE_NOISE: u64 = 26;
    pub(super) const SIGNAL_NOISE: u64 = 27;
    pub(super) const DUPLICATE: u64 = 28;
    pub(super) const EVENT_ID_HIGH: u64 = 29;
    pub(super) const EVENT_ID_LOW: u64 = 30;
}

/// Share of temperature jumps that go to an extreme reading above 80 °C.
const EXTREME_SHARE: f64 = 0.1;
/// Battery level at which a device's battery is replaced.
const BATTERY_REPLACED_AT: f64 = 5.0;
/// Period of the slow temperature drift, in milliseconds of event time (6 hours).
const TEMPERATURE_PERIOD_MS: f64 = 6.0 * 3_600_000.0;
/// Period of the humidity and pressure drift (a day).
const WEATHER_PERIOD_MS: f64 = 24.0 * 3_600_000.0;

/// A uniform number in `[low, high)` for `(seed, counter, tag)`.
fn uniform(seed: u64, counter: u64, tag: u64, low: f64, high: f64) -> f64 {
    low + (high - low) * unit(hash(seed, counter, tag))
}

/// What is fixed about one device.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    /// `device-001`, ...
    pub(crate) id: String,
    /// The id as the events' partition key.
    pub(crate) key: Bytes,
    /// The partition its readings go to.
    pub(crate) partition: u32,
    location: &'static str,
    device_type: &'static str,
    base_temperature: f64,
    temperature_amplitude: f64,
    temperature_phase: f64,
    humidity_base: f64,
    humidity_phase: f64,
    pressure_base: f64,
    pressure_phase: f64,
    /// Battery percentage points used per reading.
    battery_drain: f64,
    /// Points already used at reading 0.
    battery_offset: f64,
    signal_base: f64,
}

impl Device {
    /// Device number `d` of the simulation seeded with `seed`.
    pub(crate) fn new(seed: u64, d: u32, partitions: u32) -> Self {
        let n = u64::from(d);
        let id = format!("device-{:03}", u64::from(d) + 1);
        let partition = partition_for_key(id.as_bytes(), partitions);
        let pick = |tag: u64, len: usize| (hash(seed, n, tag) % len as u64) as usize;
        Device {
            partition,
            location: LOCATIONS[pick(tag::LOCATION, LOCATIONS.len())],
            device_type: DEVICE_TYPES[pick(tag::DEVICE_TYPE, DEVICE_TYPES.len())],
            base_temperature: uniform(seed, n, tag::BASE_TEMPERATURE, 18.0, 30.0),
            temperature_amplitude: uniform(seed, n, tag::TEMPERATURE_AMPLITUDE, 1.0, 4.0),
            temperature_phase: uniform(seed, n, tag::TEMPERATURE_PHASE, 0.0, TAU),
            humidity_base: uniform(seed, n, tag::HUMIDITY_BASE, 42.0, 58.0),
            humidity_phase: uniform(seed, n, tag::HUMIDITY_PHASE, 0.0, TAU),
            pressure_base: uniform(seed, n, tag::PRESSURE_BASE, 1000.0, 1020.0),
            pressure_phase: uniform(seed, n, tag::PRESSURE_PHASE, 0.0, TAU),
            battery_drain: uniform(seed, n, tag::BATTERY_DRAIN, 0.002, 0.05),
            battery_offset: uniform(
                seed,
                n,
                tag::BATTERY_OFFSET,
                0.0,
                100.0 - BATTERY_REPLACED_AT,
            ),
            signal_base: uniform(seed, n, tag::SIGNAL_BASE, -85.0, -50.0),
            key: Bytes::from(id.clone()),
            id,
        }
    }
}

/// The parameters of one simulation.
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) seed: u64,
    pub(crate) devices: Vec<Device>,
    pub(crate) start_time: i64,
    pub(crate) reading_interval_ms: u64,
    pub(crate) jump_ratio: f64,
    pub(crate) duplicate_ratio: f64,
}

/// One reading, before it is written as JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    /// The reading number.
    pub(crate) number: u64,
    /// Index of the device in [`Model::devices`].
    pub(crate) device: usize,
    /// Event time, in milliseconds since the Unix epoch.
    pub(crate) time: i64,
    pub(crate) temperature: f64,
    pub(crate) humidity: f64,
    pub(crate) pressure: f64,
    pub(crate) battery: f64,
    pub(crate) signal: f64,
    /// The temperature before any jump.
    pub(crate) smooth_temperature: f64,
    /// Whether this reading has a sudden temperature jump.
    pub(crate) jump: bool,
    /// Whether this reading is sent twice.
    pub(crate) duplicate: bool,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Model {
    /// Reading number `r`.
    pub(crate) fn reading(&self, r: u64) -> Reading {
        let seed = self.seed;
        let count = self.devices.len().max(1) as u64;
        let device = (r % count) as usize;
        let d = &self.devices[device];
        let k = r / count;
        // Each device reads every interval; the devices are staggered evenly within it.
        let offset = i128::from(r) * i128::from(self.reading_interval_ms) / i128::from(count);
        let time = self
            .start_time
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX));
        let t = time as f64;

        let drift =
            d.temperature_amplitude * (TAU * t / TEMPERATURE_PERIOD_MS + d.temperature_phase).sin();
        let noise = uniform(seed, r, tag::TEMPERATURE_NOISE, -0.3, 0.3);
        let smooth_temperature = d.base_temperature + drift + noise;
        let jump = unit(hash(seed, r, tag::JUMP)) < self.jump_ratio;
        let temperature = if !jump {
            smooth_temperature
        } else if unit(hash(seed, r, tag::JUMP_EXTREME)) < EXTREME_SHARE {
            uniform(seed, r, tag::JUMP_SIZE, 80.5, 95.0)
        } else {
            let size = uniform(seed, r, tag::JUMP_SIZE, 16.0, 35.0);
            if hash(seed, r, tag::JUMP_SIGN) & 1 == 0 {
                smooth_temperature + size
            } else {
                smooth_temperature - size
            }
        };

        let weather = TAU * t / WEATHER_PERIOD_MS;
        let humidity = (d.humidity_base
            + 10.0 * (weather + d.humidity_phase).sin()
            + uniform(seed, r, tag::HUMIDITY_NOISE, -1.0, 1.0))
        .clamp(30.0, 70.0);
        let pressure = (d.pressure_base
            + 8.0 * (weather + d.pressure_phase).sin()
            + uniform(seed, r, tag::PRESSURE_NOISE, -0.5, 0.5))
        .clamp(990.0, 1030.0);
        let span = 100.0 - BATTERY_REPLACED_AT;
        let battery = 100.0 - (d.battery_offset + k as f64 * d.battery_drain) % span;
        let signal =
            (d.signal_base + uniform(seed, r, tag::SIGNAL_NOISE, -10.0, 10.0)).clamp(-95.0, -40.0);
        let duplicate = unit(hash(seed, r, tag::DUPLICATE)) < self.duplicate_ratio;
        Reading {
            number: r,
            device,
            time,
            temperature: round2(temperature),
            humidity: round2(humidity),
            pressure: round2(pressure),
            battery: round2(battery),
            signal: round2(signal),
            smooth_temperature,
            jump,
            duplicate,
        }
    }

    /// Writes reading `reading` as compact JSON into `out` (cleared first).
    pub(crate) fn write_body(&self, reading: &Reading, out: &mut Vec<u8>) {
        let d = &self.devices[reading.device];
        out.clear();
        out.extend_from_slice(b"{\"DeviceId\":\"");
        out.extend_from_slice(d.id.as_bytes());
        out.extend_from_slice(b"\",\"Location\":\"");
        out.extend_from_slice(d.location.as_bytes());
        out.extend_from_slice(b"\",\"DeviceType\":\"");
        out.extend_from_slice(d.device_type.as_bytes());
        out.extend_from_slice(b"\",\"Temperature\":");
        push_fixed2(out, reading.temperature);
        out.extend_from_slice(b",\"Humidity\":");
        push_fixed2(out, reading.humidity);
        out.extend_from_slice(b",\"Pressure\":");
        push_fixed2(out, reading.pressure);
        out.extend_from_slice(b",\"BatteryLevel\":");
        push_fixed2(out, reading.battery);
        out.extend_from_slice(b",\"SignalStrength\":");
        push_fixed2(out, reading.signal);
        out.extend_from_slice(b",\"Timestamp\":\"");
        push_timestamp(out, reading.time);
        out.extend_from_slice(b"\",\"EventId\":\"");
        push_event_id(out, self.seed, reading.number);
        out.extend_from_slice(b"\"}");
    }
}

/// Appends `value` with exactly two decimals (`23.40`, `-67.00`).
fn push_fixed2(out: &mut Vec<u8>, value: f64) {
    let hundredths = (value * 100.0).round();
    // Readings stay far inside i64; a non-finite value would be a model bug, written as 0.
    let hundredths = if hundredths.is_finite() {
        hundredths as i64
    } else {
        0
    };
    if hundredths < 0 {
        out.push(b'-');
    }
    let magnitude = hundredths.unsigned_abs();
    push_u64(out, magnitude / 100);
    out.push(b'.');
    push_digits(out, magnitude % 100, 2);
}

fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `value` zero-padded to `width` digits.
fn push_digits(out: &mut Vec<u8>, value: u64, width: u32) {
    for place in (0..width).rev() {
        out.push(b'0' + ((value / 10u64.pow(place)) % 10) as u8);
    }
}

/// Appends `millis` since the epoch as `2026-11-22T10:00:00.000Z`.
pub(crate) fn push_timestamp(out: &mut Vec<u8>, millis: i64) {
    let days = millis.div_euclid(86_400_000);
    let in_day = millis.rem_euclid(86_400_000) as u64;
    let (year, month, day) = civil_from_days(days);
    if year < 0 {
        out.push(b'-');
    }
    push_digits(out, year.unsigned_abs(), 4);
    out.push(b'-');
    push_digits(out, u64::from(month), 2);
    out.push(b'-');
    push_digits(out, u64::from(day), 2);
    out.push(b'T');
    push_digits(out, in_day / 3_600_000, 2);
    out.push(b':');
    push_digits(out, in_day / 60_000 % 60, 2);
    out.push(b':');
    push_digits(out, in_day / 1000 % 60, 2);
    out.push(b'.');
    push_digits(out, in_day % 1000, 3);
    out.push(b'Z');
}

/// Year, month and day of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends the reading's EventId: UUID-shaped (version 4 layout) hex that holds all 64 bits of a
/// bijective hash of the reading number, so two readings of one seed never share an id.
fn push_event_id(out: &mut Vec<u8>, seed: u64, r: u64) {
    let high = hash(seed, r, tag::EVENT_ID_HIGH);
    let low = hash(seed, r, tag::EVENT_ID_LOW);
    let clock_seq = 0x8000 | ((high & 0xf) << 10) | ((low >> 48) & 0x3ff);
    push_hex(out, high >> 32, 8);
    out.push(b'-');
    push_hex(out, (high >> 16) & 0xffff, 4);
    out.push(b'-');
    push_hex(out, 0x4000 | ((high >> 4) & 0xfff), 4);
    out.push(b'-');
    push_hex(out, clock_seq, 4);
    out.push(b'-');
    push_hex(out, low & 0xffff_ffff_ffff, 12);
}

fn push_hex(out: &mut Vec<u8>, value: u64, width: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for nibble in (0..width).rev() {
        out.push(HEX[((value >> (4 * nibble)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chrono() {
        for millis in [
            0i64,
            1_795_340_800_000,
            951_782_400_123,
            4_102_444_799_999,
            1_709_164_800_000,
        ] {
            let mut out = Vec::new();
            push_timestamp(&mut out, millis);
            let expected = chrono::DateTime::from_timestamp_millis(millis)
                .expect("in range")
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(String::from_utf8(out).expect("ascii"), expected);
        }
    }

    #[test]
    fn fixed_two_decimals() {
        let cases = [
            (23.4, "23.40"),
            (-67.0, "-67.00"),
            (0.004, "0.00"),
            (-0.004, "0.00"),
            (1012.346, "1012.35"),
        ];
        for (value, text) in cases {
            let mut out = Vec::new();
            push_fixed2(&mut out, value);
            assert_eq!(std::str::from_utf8(&out).expect("ascii"), text, "{value}");
        }
    }

    #[test]
    fn event_ids_are_uuid_shaped_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in 0..10_000 {
            let mut out = Vec::new();
            push_event_id(&mut out, 7, r);
            let text = String::from_utf8(out).expect("ascii");
            let groups: Vec<usize> = text.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{text}");
            assert!(text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            assert!(seen.insert(text));
        }
    }
}
