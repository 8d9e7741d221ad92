//! Hot swap of window and join stages (issue 4: "window and keyed state carry over"): a stage that
//! follows its version slot switches to a version offered while windows are open (or join sides
//! wait for their match), at a batch boundary, and produces exactly the rows of a stage that never
//! swapped; a component of another world is refused for the window stage and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use weir::config::{LatePolicy, UnmatchedPolicy};
use weir::event::Event;
use weir::metrics::Metrics;
use weir::plugin::slot::{Offered, SlotSetup};
use weir::plugin::{
    InstanceSettings, InstanceSlot, KeyedState, Plugin, PluginEngine, PluginKind, PluginScope,
    PluginSlot, RollbackPolicy, SlotControl, SwapError, VersionOrigin, content_version,
};
use weir::reference::ReferenceTables;
use weir::stage::{
    JoinSettings, JoinStage, Stage, StageOutput, WindowSettings, WindowSpec, WindowStage,
};
use weir::time::{Admitted, ClockSettings, END_OF_INPUT, EventClock, Mark, Tolerance};

const DEVICES: usize = 12;
/// Readings per device, 10 s apart: 15 minutes of event time, three 5-minute windows each.
const STEPS: usize = 90;
/// 2026-11-01T00:00:00Z.
const BASE: i64 = 1_793_491_200_000;

fn settings(plugin: &Arc<Plugin>) -> Arc<InstanceSettings> {
    Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "test".into(),
            stage: "stage".into(),
            partition: 0,
            plugin: plugin.name().clone(),
            version: plugin.version().clone(),
        },
        config_json: "{}".into(),
        max_memory_bytes: 256 * 1024 * 1024,
        call_timeout: Duration::from_secs(30),
        reference: ReferenceTables::none(),
    })
}

fn window_stage(slot: impl FnOnce(KeyedState) -> InstanceSlot) -> WindowStage {
    let window = WindowSettings {
        spec: WindowSpec::Tumbling { size: 300_000 },
        group_by: vec!["DeviceId".into(), "Location".into(), "DeviceType".into()],
        start_field: "WindowStart".into(),
        end_field: "WindowEnd".into(),
    };
    WindowStage::new("aggregates".into(), window, slot, None, Metrics::new()).expect("window stage")
}

/// Every device's reading of `step`, in event-time order.
fn readings(step: usize) -> Vec<Event> {
    let locations = ["Seattle", "London", "Paris"];
    let types = ["Thermostat", "HVAC", "ServerRack"];
    (0..DEVICES)
        .map(|device| {
            let time = BASE + step as i64 * 10_000 + device as i64;
            let body = format!(
                r#"{{"DeviceId":"device-{device:03}","Location":"{}","DeviceType":"{}","Temperature":{:.2},"Humidity":{:.2},"Pressure":{:.2},"BatteryLevel":{:.2},"SignalStrength":{:.2},"Timestamp":"{}","EventId":"{device}-{step}"}}"#,
                locations[device % locations.len()],
                types[device % types.len()],
                20.0 + (device % 7) as f64 * 0.5 + (step % 7) as f64 * 0.3,
                45.0 + (step % 11) as f64,
                1000.0 + (device % 5) as f64,
                90.0 - step as f64 * 0.1,
                -60.0 - (device % 4) as f64,
                weir::time::format_millis(time),
            );
            let mut event = Event::new(0, (step * DEVICES + device) as u64, body);
            event.event_time = Some(time);
            event
        })
        .collect()
}

/// The component `bytes` with a custom section appended: the same code, another content hash
/// (another version).
fn another_version(bytes: &[u8]) -> Vec<u8> {
    let name = b"weir-test-version";
    let payload = b"2";
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 sizes");
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push(size as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// Runs every step through `stage` (one batch per step, through an event clock), calling
/// `between` before each batch; returns the rows it emitted, as text, in order.
fn run(stage: &mut WindowStage, mut between: impl FnMut(usize, &mut WindowStage)) -> Vec<String> {
    let mut clock = EventClock::new(ClockSettings {
        out_of_order: Tolerance {
            millis: 0,
            policy: LatePolicy::Adjust,
        },
        late_arrival: None,
    });
    let mut admitted = Admitted::default();
    let mut out = StageOutput::default();
    let mut rows = Vec::new();
    for step in 0..STEPS {
        between(step, stage);
        for event in readings(step) {
            clock.admit(event, &mut admitted);
        }
        out.clear();
        stage
            .process(&admitted.released, &mut out)
            .expect("process");
        stage
            .watermarks(&admitted.marks, &mut out)
            .expect("watermarks");
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        rows.extend(
            out.emitted
                .drain(..)
                .map(|(target, e)| format!("{target} {}", String::from_utf8_lossy(&e.body))),
        );
        admitted.clear();
    }
    out.clear();
    let end = [Mark {
        watermark: END_OF_INPUT,
        position: (STEPS * DEVICES) as u64,
    }];
    stage.watermarks(&end, &mut out).expect("end of input");
    rows.extend(
        out.emitted
            .drain(..)
            .map(|(target, e)| format!("{target} {}", String::from_utf8_lossy(&e.body))),
    );
    rows
}

#[test]
fn window_stage_swaps_at_a_batch_boundary_with_its_open_windows_kept() {
    let engine = PluginEngine::new().expect("engine");
    let path = weir_tests::plugin_path("telemetry_aggregates");
    let bytes = std::fs::read(&path).expect("telemetry-aggregates");
    let v1 = engine
        .from_bytes(&path, &bytes, PluginKind::WindowAggregate)
        .expect("v1");
    let v2_bytes = another_version(&bytes);
    let v2 = content_version(&v2_bytes);
    assert_ne!(v1.version().as_ref(), v2, "two versions");

    // The stage that never swaps.
    let mut reference = window_stage(|keyed| InstanceSlot::new(v1.clone(), settings(&v1), keyed));
    let want = run(&mut reference, |_, _| {});
    assert_eq!(want.len(), DEVICES * 3, "three windows per device");

    // The stage that follows a version slot: v2 is offered 2.5 minutes into the second window.
    let slot = PluginSlot::open(
        SlotSetup {
            pipeline: "test".into(),
            stage: "aggregates".into(),
            file: path.clone(),
            engine: engine.clone(),
            store: None,
            policy: RollbackPolicy::default(),
            metrics: Metrics::new(),
        },
        v1.clone(),
        &bytes,
    );
    let control: Arc<dyn SlotControl> = slot.clone();
    assert_eq!(
        control.report().world,
        weir::plugin::bindings::AGGREGATE_WORLD
    );
    let mut swapped = window_stage(|keyed| {
        InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone())
    });
    let mut open_at_swap = 0;
    let got = run(&mut swapped, |step, stage| {
        assert_eq!(
            stage.plugin_version().as_ref(),
            if step <= 45 {
                v1.version().as_ref()
            } else {
                v2.as_str()
            },
            "step {step}: the version switches at the first batch after the offer"
        );
        if step == 45 {
            // A transform component is refused for a window stage: wrong world.
            let transform = std::fs::read(weir_tests::plugin_path("telemetry_anomaly"))
                .expect("telemetry-anomaly");
            match control.offer(transform, VersionOrigin::Api) {
                Err(SwapError::Refused(_)) => {}
                other => panic!("a transform offered to a window stage: {other:?}"),
            }
            assert_eq!(control.active_version(), v1.version().as_ref());
            open_at_swap = stage.open_windows();
            match control.offer(v2_bytes.clone(), VersionOrigin::Api) {
                Ok(Offered::Activated { version }) => assert_eq!(version.version, v2),
                other => panic!("v2 offered: {other:?}"),
            }
        }
    });
    assert_eq!(
        open_at_swap, DEVICES,
        "every device had a window open at the swap"
    );
    assert_eq!(swapped.plugin_version().as_ref(), v2.as_str());
    assert_eq!(got, want, "the same rows as without the swap");
}

/// A version slot for `plugin`, loaded from `bytes` at `path`, with new versions in memory only.
fn version_slot(
    engine: &PluginEngine,
    path: &std::path::Path,
    plugin: &Arc<Plugin>,
    bytes: &[u8],
) -> Arc<PluginSlot<Plugin>> {
    PluginSlot::open(
        SlotSetup {
            pipeline: "test".into(),
            stage: "stage".into(),
            file: path.to_path_buf(),
            engine: engine.clone(),
            store: None,
            policy: RollbackPolicy::default(),
            metrics: Metrics::new(),
        },
        plugin.clone(),
        bytes,
    )
}

const ORDERS: usize = 300;

/// One seat row per order, 1 ms apart.
fn seats() -> Vec<Event> {
    (0..ORDERS)
        .map(|n| {
            let body = format!(
                r#"{{"OrderId":"order-{n:05}","CustomerId":"cust-{:03}","EventName":"Hamlet","EventType":"Play","Category":"Theater","VenueId":"V01","Venue":"Globe Theatre","VenueCity":"London","SeatId":"A{}","SeatPrice":45.5,"SeatCount":1,"BookingTime":"{}","BookingDayOfWeek":"Sunday","BookingHour":18}}"#,
                n % 40,
                n % 30,
                weir::time::format_millis(BASE + n as i64)
            );
            let mut event = Event::new(0, n as u64 * 2, body);
            event.event_time = Some(BASE + n as i64);
            event
        })
        .collect()
}

/// Each order's payment, 1 s after its booking.
fn payments() -> Vec<Event> {
    (0..ORDERS)
        .map(|n| {
            let body = format!(
                r#"{{"PaymentId":"pay-{n:05}","OrderId":"order-{n:05}","Method":"Card","Amount":45.5,"Status":"Succeeded","Timestamp":"{}"}}"#,
                weir::time::format_millis(BASE + n as i64 + 1000)
            );
            let mut event = Event::new(0, (ORDERS + n) as u64 * 2 + 1, body);
            event.event_time = Some(BASE + n as i64 + 1000);
            event
        })
        .collect()
}

fn join_stage(slot: impl FnOnce(KeyedState) -> InstanceSlot) -> JoinStage {
    let settings = JoinSettings {
        left_key: "OrderId".into(),
        right_key: "OrderId".into(),
        within: 120_000,
        before: 0,
        unmatched_left: UnmatchedPolicy::Emit,
        unmatched_right: UnmatchedPolicy::Drop,
    };
    JoinStage::new("stage".into(), settings, slot, None, Metrics::new()).expect("join stage")
}

/// Bookings in batches of 50, then payments in batches of 50, calling `between` before each
/// payment batch; the rows emitted, as text, in order.
fn run_join(stage: &mut JoinStage, mut between: impl FnMut(usize, &mut JoinStage)) -> Vec<String> {
    let mut out = StageOutput::default();
    let mut rows = Vec::new();
    for batch in seats().chunks(50) {
        out.clear();
        stage.process(batch, &mut out).expect("seats");
        assert!(out.emitted.is_empty() && out.rejected.is_empty());
    }
    for (index, batch) in payments().chunks(50).enumerate() {
        between(index, stage);
        out.clear();
        stage.process_right(batch, &mut out).expect("payments");
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        rows.extend(
            out.emitted
                .drain(..)
                .map(|(target, e)| format!("{target} {}", String::from_utf8_lossy(&e.body))),
        );
    }
    rows
}

#[test]
fn join_stage_swaps_at_a_batch_boundary_with_its_waiting_bookings_kept() {
    let engine = PluginEngine::new().expect("engine");
    let path = weir_tests::plugin_path("booking_join");
    let bytes = std::fs::read(&path).expect("booking-join");
    let v1 = engine
        .from_bytes(&path, &bytes, PluginKind::JoinEnrichment)
        .expect("v1");
    let v2_bytes = another_version(&bytes);
    let v2 = content_version(&v2_bytes);

    let mut reference = join_stage(|keyed| InstanceSlot::new(v1.clone(), settings(&v1), keyed));
    let want = run_join(&mut reference, |_, _| {});
    assert_eq!(want.len(), ORDERS, "one fact row per booking");

    let slot = version_slot(&engine, &path, &v1, &bytes);
    let control: Arc<dyn SlotControl> = slot.clone();
    assert_eq!(control.report().world, weir::plugin::bindings::JOIN_WORLD);
    let mut swapped = join_stage(|keyed| {
        InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone())
    });
    let mut waiting_at_swap = 0;
    let got = run_join(&mut swapped, |index, stage| {
        assert_eq!(
            stage.plugin_version().as_ref(),
            if index <= 2 {
                v1.version().as_ref()
            } else {
                v2.as_str()
            },
            "payment batch {index}"
        );
        if index == 2 {
            waiting_at_swap = stage.waiting();
            match control.offer(v2_bytes.clone(), VersionOrigin::Api) {
                Ok(Offered::Activated { version }) => assert_eq!(version.version, v2),
                other => panic!("v2 offered: {other:?}"),
            }
        }
    });
    // Every booking waits (matched or not, until its bound passes), and so do the 100 payments
    // that came before the swap.
    assert_eq!(
        waiting_at_swap,
        ORDERS + 100,
        "every booking was waiting at the swap"
    );
    assert_eq!(swapped.plugin_version().as_ref(), v2.as_str());
    assert_eq!(got, want, "the same rows as without the swap");
}
