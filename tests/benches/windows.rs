//! The window stage and the interval join, through the host's stages and real components:
//! 1. 10,000 devices in 5-minute tumbling windows (`telemetry-aggregates`), events in event-time
//!    order through the partition's event clock: events per second, and the resident memory and
//!    checkpoint size of 10,000 open windows;
//! 2. the bookings join (`booking-join`) with 100,000 open bookings: events per second to buffer
//!    them, resident memory and checkpoint size with all of them open, then events per second to
//!    pair 100,000 payments with them.
//!
//! Run: `cargo bench -p weir-tests --bench windows` (release build). One thread does all the work,
//! so the figures are per core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::config::{LatePolicy, UnmatchedPolicy};
use weir::event::Event;
use weir::metrics::Metrics;
use weir::plugin::{InstanceSettings, InstanceSlot, PluginEngine, PluginKind, PluginScope};
use weir::reference::ReferenceTables;
use weir::stage::{
    JoinSettings, JoinStage, Stage, StageOutput, WindowSettings, WindowSpec, WindowStage,
};
use weir::time::{Admitted, ClockSettings, END_OF_INPUT, EventClock, Mark, Tolerance};

const DEVICES: usize = 10_000;
/// Readings per device: 10 s apart, 15 minutes of event time, three 5-minute windows each.
const READINGS: usize = 90;
const BOOKINGS: usize = 100_000;
const BATCH: usize = 1024;
const ROUNDS: usize = 3;
/// 2026-11-01T00:00:00Z.
const BASE: i64 = 1_793_491_200_000;

fn main() {
    // Each measurement runs in a process of its own, so that one's freed memory does not hide the
    // other's growth in the resident set.
    let only = std::env::args().find_map(|a| a.strip_prefix("--only=").map(str::to_owned));
    match only.as_deref() {
        Some("windows") => windows(&PluginEngine::new().expect("engine")),
        Some("join") => join(&PluginEngine::new().expect("engine")),
        _ => {
            println!("machine: {}", machine());
            let exe = std::env::current_exe().expect("this benchmark's executable");
            for which in ["windows", "join"] {
                let status = std::process::Command::new(&exe)
                    .arg(format!("--only={which}"))
                    .status()
                    .expect("run the measurement");
                assert!(status.success(), "the {which} measurement failed");
                println!();
            }
        }
    }
}

fn settings(plugin: &Arc<weir::plugin::Plugin>, stage: &str) -> Arc<InstanceSettings> {
    Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "bench".into(),
            stage: stage.into(),
            partition: 0,
            plugin: plugin.name().clone(),
            version: plugin.version().clone(),
        },
        config_json: "{}".into(),
        max_memory_bytes: 1024 * 1024 * 1024,
        call_timeout: Duration::from_secs(30),
        reference: ReferenceTables::none(),
    })
}

/// The readings of step `step` (every device once), in event-time order: generated as a source
/// would deliver them, so that nothing but the stage keeps them alive.
fn readings(step: usize) -> Vec<Event> {
    let locations = ["Seattle", "London", "Paris", "Berlin", "Tokyo"];
    let types = ["Thermostat", "HVAC", "Refrigerator", "ServerRack"];
    let mut events = Vec::with_capacity(DEVICES);
    {
        for device in 0..DEVICES {
            let time = BASE + step as i64 * 10_000 + device as i64;
            let position = (step * DEVICES + device) as u64;
            let body = format!(
                r#"{{"DeviceId":"device-{device:05}","Location":"{}","DeviceType":"{}","Temperature":{:.2},"Humidity":{:.2},"Pressure":{:.2},"BatteryLevel":{:.2},"SignalStrength":{:.2},"Timestamp":"{}","EventId":"{device}-{step}"}}"#,
                locations[device % locations.len()],
                types[device % types.len()],
                20.0 + (device % 17) as f64 * 0.5 + (step % 7) as f64 * 0.1,
                45.0 + (step % 11) as f64,
                1000.0 + (device % 13) as f64,
                90.0 - step as f64 * 0.1,
                -60.0 - (device % 20) as f64,
                weir::time::format_millis(time),
            );
            let mut event = Event::new(0, position, body);
            event.event_time = Some(time);
            events.push(event);
        }
    }
    events
}

fn windows(engine: &PluginEngine) {
    let plugin = engine
        .load(
            &weir_tests::plugin_path("telemetry_aggregates"),
            PluginKind::WindowAggregate,
        )
        .expect("telemetry-aggregates");
    let sample = readings(0);
    let mean = sample.iter().map(|e| e.body.len()).sum::<usize>() / sample.len();
    let total = DEVICES * READINGS;
    println!(
        "window stage: {DEVICES} devices × {READINGS} readings ({total} events, {mean} bytes each), 5-minute tumbling windows grouped by DeviceId, Location, DeviceType, batches of {BATCH}"
    );
    drop(sample);
    let mut best = Duration::MAX;
    let mut outputs = 0;
    let mut memory = None;
    for round in 0..ROUNDS {
        let window = WindowSettings {
            spec: WindowSpec::Tumbling { size: 300_000 },
            group_by: vec!["DeviceId".into(), "Location".into(), "DeviceType".into()],
            start_field: "WindowStart".into(),
            end_field: "WindowEnd".into(),
        };
        let slot_settings = settings(&plugin, "aggregates");
        let mut stage = WindowStage::new(
            "aggregates".into(),
            window,
            |keyed| InstanceSlot::new(plugin.clone(), slot_settings, keyed),
            None,
            Metrics::new(),
        )
        .expect("stage");
        let mut clock = EventClock::new(ClockSettings {
            out_of_order: Tolerance {
                millis: 0,
                policy: LatePolicy::Adjust,
            },
            late_arrival: None,
        });
        let mut admitted = Admitted::default();
        let mut out = StageOutput::default();
        let baseline = resident_bytes();
        let mut peak_open = 0;
        let mut elapsed = Duration::ZERO;
        let mut emitted = 0;
        for step in 0..READINGS {
            let events = readings(step);
            for batch in events.chunks(BATCH) {
                let started = Instant::now();
                for event in batch {
                    clock.admit(event.clone(), &mut admitted);
                }
                out.clear();
                stage
                    .process(&admitted.released, &mut out)
                    .expect("process");
                stage
                    .watermarks(&admitted.marks, &mut out)
                    .expect("watermarks");
                emitted += out.emitted.len();
                admitted.clear();
                elapsed += started.elapsed();
            }
            drop(events);
            // Measured once, with every device's first window open (5 minutes in).
            if round == 0 && step == 29 {
                peak_open = stage.open_windows();
                memory = Some((
                    resident_bytes().saturating_sub(baseline),
                    stage.snapshot().len(),
                ));
            }
        }
        out.clear();
        let end = [Mark {
            watermark: END_OF_INPUT,
            position: total as u64,
        }];
        let started = Instant::now();
        stage.watermarks(&end, &mut out).expect("end");
        emitted += out.emitted.len();
        elapsed += started.elapsed();
        best = best.min(elapsed);
        outputs = emitted;
        if round == 0 {
            println!("  open windows when measured: {peak_open}");
        }
    }
    assert_eq!(outputs, total / 30, "one row per device and window");
    let (resident, snapshot) = memory.expect("measured");
    println!(
        "  {:.0} events/s ({:.0} ns/event), {outputs} window rows (best of {ROUNDS})",
        total as f64 / best.as_secs_f64(),
        best.as_secs_f64() * 1e9 / total as f64
    );
    println!(
        "  10,000 open windows: +{:.1} MB resident, checkpoint state {:.1} MB",
        resident as f64 / 1e6,
        snapshot as f64 / 1e6
    );
}

fn join(engine: &PluginEngine) {
    let plugin = engine
        .load(
            &weir_tests::plugin_path("booking_join"),
            PluginKind::JoinEnrichment,
        )
        .expect("booking-join");
    // One seat row per order, 1 ms apart (100 s: all within the 2-minute bound, so all open),
    // then each order's payment 1 s after its booking; generated batch by batch, as a source
    // would deliver them, so that nothing but the stage keeps them alive.
    let seats = |range: std::ops::Range<usize>| -> Vec<Event> {
        range.map(|n| {
            let body = format!(
                r#"{{"OrderId":"order-{n:07}","CustomerId":"cust-{:05}","EventName":"Hamlet","EventType":"Play","Category":"Theater","VenueId":"V01","Venue":"Globe Theatre","VenueCity":"London","SeatId":"A{}","SeatPrice":45.5,"SeatCount":1,"BookingTime":"{}","BookingDayOfWeek":"Sunday","BookingHour":18}}"#,
                n % 20_000,
                n % 30,
                weir::time::format_millis(BASE + n as i64)
            );
            let mut event = Event::new(0, n as u64 * 2, body);
            event.event_time = Some(BASE + n as i64);
            event
        })
        .collect()
    };
    let payments = |range: std::ops::Range<usize>| -> Vec<Event> {
        range.map(|n| {
            let body = format!(
                r#"{{"PaymentId":"pay-{n:07}","OrderId":"order-{n:07}","Method":"Card","Amount":45.5,"Status":"Succeeded","Timestamp":"{}"}}"#,
                weir::time::format_millis(BASE + n as i64 + 1000)
            );
            let mut event = Event::new(0, (BOOKINGS + n) as u64 * 2 + 1, body);
            event.event_time = Some(BASE + n as i64 + 1000);
            event
        })
        .collect()
    };
    println!(
        "join: {BOOKINGS} bookings (seat rows) all open within the 2-minute bound, then {BOOKINGS} payments each pairing one, batches of {BATCH}"
    );
    let mut best_buffer = Duration::MAX;
    let mut best_pair = Duration::MAX;
    let mut memory = None;
    for round in 0..ROUNDS {
        let join_settings = JoinSettings {
            left_key: "OrderId".into(),
            right_key: "OrderId".into(),
            within: 120_000,
            before: 0,
            unmatched_left: UnmatchedPolicy::Emit,
            unmatched_right: UnmatchedPolicy::Drop,
        };
        let slot_settings = settings(&plugin, "join");
        let mut stage = JoinStage::new(
            "join".into(),
            join_settings,
            |keyed| InstanceSlot::new(plugin.clone(), slot_settings, keyed),
            None,
            Metrics::new(),
        )
        .expect("stage");
        let mut out = StageOutput::default();
        let baseline = resident_bytes();
        let mut elapsed = Duration::ZERO;
        for start in (0..BOOKINGS).step_by(BATCH) {
            let batch = seats(start..(start + BATCH).min(BOOKINGS));
            let started = Instant::now();
            out.clear();
            stage.process(&batch, &mut out).expect("seats");
            elapsed += started.elapsed();
        }
        best_buffer = best_buffer.min(elapsed);
        assert_eq!(stage.waiting(), BOOKINGS);
        if round == 0 {
            memory = Some((
                resident_bytes().saturating_sub(baseline),
                stage.snapshot().len(),
            ));
        }
        let mut elapsed = Duration::ZERO;
        let mut rows = 0;
        for start in (0..BOOKINGS).step_by(BATCH) {
            let batch = payments(start..(start + BATCH).min(BOOKINGS));
            let started = Instant::now();
            out.clear();
            stage.process_right(&batch, &mut out).expect("payments");
            rows += out.emitted.len();
            elapsed += started.elapsed();
        }
        best_pair = best_pair.min(elapsed);
        assert_eq!(rows, BOOKINGS, "one fact row per seat");
    }
    let (resident, snapshot) = memory.expect("measured");
    println!(
        "  buffering bookings: {:.0} events/s; pairing payments (plugin enrich): {:.0} events/s (best of {ROUNDS})",
        BOOKINGS as f64 / best_buffer.as_secs_f64(),
        BOOKINGS as f64 / best_pair.as_secs_f64()
    );
    println!(
        "  100,000 open bookings: +{:.1} MB resident, checkpoint state {:.1} MB",
        resident as f64 / 1e6,
        snapshot as f64 / 1e6
    );
}

/// Resident set size of this process, from `/proc/self/status` (0 where there is none).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU model and core count, for the README's figures.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}
