//! Hot swap of window and join stages (issue 4: "window and keyed state carry over"): a stage that
//! follows its version slot switches to a version offered while windows are open (or join sides
//! wait for their match), at a batch boundary, and produces exactly the rows of a stage that never
//! swapped; a component of another world is refused for the window stage and changes nothing.
//!
//! Probation: a window or join version that traps on everything is offered; every fold, window
//! fire and pair it traps on is made again by the version it replaced (the outputs, labelled with
//! the version that made them, are exactly the reference's), and with the default policy it is
//! rolled back by itself. What both versions trap on goes to the dead letters with both reasons.

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
    JoinSettings, JoinStage, PLUGIN_VERSION_PROPERTY, Stage, StageOutput, WindowSettings,
    WindowSpec, WindowStage,
};
use weir::time::{Admitted, ClockSettings, END_OF_INPUT, EventClock, Mark, Tolerance};
use weir_tests::service::another_version;

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

/// Runs every step through `stage` (one batch per step, through an event clock), calling
/// `between` before each batch; returns the rows it emitted, as text, in order.
fn run(stage: &mut WindowStage, between: impl FnMut(usize, &mut WindowStage)) -> Vec<String> {
    run_labelled(stage, between, |_, _| {})
        .into_iter()
        .map(|(row, _)| row)
        .collect()
}

/// The version label of an output record.
fn label(event: &Event) -> Option<String> {
    event
        .properties
        .iter()
        .find(|(name, _)| name == PLUGIN_VERSION_PROPERTY)
        .map(|(_, version)| version.clone())
}

/// [`run`], also calling `mid` inside each batch (after its events, before its watermarks), and
/// returning each row with the version label it carries.
fn run_labelled(
    stage: &mut WindowStage,
    mut between: impl FnMut(usize, &mut WindowStage),
    mut mid: impl FnMut(usize, &mut WindowStage),
) -> Vec<(String, Option<String>)> {
    let text = |(target, e): (Arc<str>, Event)| {
        let version = label(&e);
        (
            format!("{target} {}", String::from_utf8_lossy(&e.body)),
            version,
        )
    };
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
        stage.batch_boundary();
        stage
            .process(&admitted.released, &mut out)
            .expect("process");
        mid(step, stage);
        stage
            .watermarks(&admitted.marks, &mut out)
            .expect("watermarks");
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        rows.extend(out.emitted.drain(..).map(text));
        admitted.clear();
    }
    out.clear();
    let end = [Mark {
        watermark: END_OF_INPUT,
        position: (STEPS * DEVICES) as u64,
    }];
    stage.batch_boundary();
    stage.watermarks(&end, &mut out).expect("end of input");
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    rows.extend(out.emitted.drain(..).map(text));
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
    let v2_bytes = another_version(&bytes, b"2");
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
    version_slot_with(engine, path, plugin, bytes, RollbackPolicy::default())
}

/// [`version_slot`] with another rollback policy.
fn version_slot_with(
    engine: &PluginEngine,
    path: &std::path::Path,
    plugin: &Arc<Plugin>,
    bytes: &[u8],
    policy: RollbackPolicy,
) -> Arc<PluginSlot<Plugin>> {
    PluginSlot::open(
        SlotSetup {
            pipeline: "test".into(),
            stage: "stage".into(),
            file: path.to_path_buf(),
            engine: engine.clone(),
            store: None,
            policy,
            metrics: Metrics::new(),
        },
        plugin.clone(),
        bytes,
    )
}

/// A probation that never ends nor rolls back within a test: every trap goes to the fallback.
const ENDLESS_PROBATION: RollbackPolicy = RollbackPolicy {
    probation_events: 1_000_000,
    max_trap_ratio: 2.0,
    max_error_ratio: 2.0,
};

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
        stage.batch_boundary();
        stage.process(batch, &mut out).expect("seats");
        assert!(out.emitted.is_empty() && out.rejected.is_empty());
    }
    for (index, batch) in payments().chunks(50).enumerate() {
        between(index, stage);
        out.clear();
        stage.batch_boundary();
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
    let v2_bytes = another_version(&bytes, b"2");
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

/// The telemetry-aggregates component (v1) and the window version that traps on everything.
fn aggregates_and_trap(
    engine: &PluginEngine,
) -> (std::path::PathBuf, Vec<u8>, Arc<Plugin>, Vec<u8>) {
    let path = weir_tests::plugin_path("telemetry_aggregates");
    let bytes = std::fs::read(&path).expect("telemetry-aggregates");
    let v1 = engine
        .from_bytes(&path, &bytes, PluginKind::WindowAggregate)
        .expect("v1");
    let trap = std::fs::read(weir_tests::plugin_path("window_trap_always")).expect("trap");
    (path, bytes, v1, trap)
}

#[test]
fn window_swap_offered_inside_a_batch_waits_for_the_next_batch_boundary() {
    let engine = PluginEngine::new().expect("engine");
    let path = weir_tests::plugin_path("telemetry_aggregates");
    let bytes = std::fs::read(&path).expect("telemetry-aggregates");
    let v1 = engine
        .from_bytes(&path, &bytes, PluginKind::WindowAggregate)
        .expect("v1");
    let v2_bytes = another_version(&bytes, b"2");
    let v2 = content_version(&v2_bytes);
    let slot = version_slot(&engine, &path, &v1, &bytes);
    let mut stage = window_stage(|keyed| {
        InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone())
    })
    .with_version_labels(true);
    // The first windows close at step 30 (their end, 5 minutes, is passed by that step's
    // readings); v2 is offered between that batch's events and its watermarks.
    let rows = run_labelled(
        &mut stage,
        |_, _| {},
        |step, _| {
            if step == 30 {
                match slot.offer(v2_bytes.clone(), VersionOrigin::Api) {
                    Ok(Offered::Activated { .. }) => {}
                    other => panic!("v2 offered: {other:?}"),
                }
            }
        },
    );
    assert_eq!(rows.len(), DEVICES * 3);
    let labels: Vec<&str> = rows
        .iter()
        .map(|(_, version)| version.as_deref().expect("every output names its version"))
        .collect();
    // Outputs in close order: the first window of every device closed in the batch of the offer
    // (made by v1, the version that batch started with), the others later (made by v2).
    let v1_version = v1.version().to_string();
    assert_eq!(labels[..DEVICES], vec![v1_version.as_str(); DEVICES][..]);
    assert_eq!(labels[DEVICES..], vec![v2.as_str(); DEVICES * 2][..]);
}

#[test]
fn window_version_that_traps_on_probation_hands_every_fold_and_fire_to_the_previous_one() {
    let engine = PluginEngine::new().expect("engine");
    let (path, bytes, v1, trap) = aggregates_and_trap(&engine);
    let bad = content_version(&trap);
    let mut reference = window_stage(|keyed| InstanceSlot::new(v1.clone(), settings(&v1), keyed));
    let want = run(&mut reference, |_, _| {});

    let slot = version_slot_with(&engine, &path, &v1, &bytes, ENDLESS_PROBATION);
    let mut stage = window_stage(|keyed| {
        InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone())
    })
    .with_version_labels(true);
    let rows = run_labelled(
        &mut stage,
        |step, stage| {
            if step == 45 {
                match slot.offer(trap.clone(), VersionOrigin::Api) {
                    Ok(Offered::Activated { .. }) => {}
                    other => panic!("the trapping version offered: {other:?}"),
                }
            }
            if step > 45 {
                assert_eq!(stage.plugin_version().as_ref(), bad.as_str());
            }
        },
        |_, _| {},
    );
    // `run_labelled` asserts that nothing was rejected: no dead letter.
    let got: Vec<&String> = rows.iter().map(|(row, _)| row).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "the reference's rows");
    for (row, version) in &rows {
        assert_eq!(
            version.as_deref(),
            Some(v1.version().as_ref()),
            "{row}: made by the previous version"
        );
    }
    // Every event of steps 45.. (12 per step) trapped once in its fold, and so did every window
    // that closed after the swap (the second and third of every device).
    let probation = slot
        .report()
        .probation
        .expect("the trapping version is still on probation");
    let expected = ((STEPS - 45) * DEVICES + 2 * DEVICES) as u64;
    assert_eq!(
        (probation.events, probation.trapped, probation.rejected),
        (expected, expected, 0)
    );
}

#[test]
fn window_version_that_traps_on_everything_is_rolled_back_by_itself_without_losing_an_event() {
    let engine = PluginEngine::new().expect("engine");
    let (path, bytes, v1, trap) = aggregates_and_trap(&engine);
    let bad = content_version(&trap);
    let mut reference = window_stage(|keyed| InstanceSlot::new(v1.clone(), settings(&v1), keyed));
    let want = run(&mut reference, |_, _| {});

    let slot = version_slot(&engine, &path, &v1, &bytes);
    let mut stage = window_stage(|keyed| {
        InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone())
    })
    .with_version_labels(true);
    let rows = run_labelled(
        &mut stage,
        |step, _| {
            if step == 40 {
                match slot.offer(trap.clone(), VersionOrigin::Api) {
                    Ok(Offered::Activated { .. }) => {}
                    other => panic!("the trapping version offered: {other:?}"),
                }
            }
        },
        |_, _| {},
    );
    let got: Vec<&String> = rows.iter().map(|(row, _)| row).collect();
    assert_eq!(got, want.iter().collect::<Vec<_>>(), "the reference's rows");
    assert!(
        rows.iter()
            .all(|(_, version)| version.as_deref() == Some(v1.version().as_ref())),
        "the trapping version made no output"
    );
    let report = slot.report();
    assert_eq!(report.active, v1.version().as_ref());
    let rollback = report
        .activations
        .iter()
        .find(|a| a.cause == weir::plugin::slot::ActivationCause::AutomaticRollback)
        .expect("an automatic rollback");
    assert_eq!(rollback.previous.as_deref(), Some(bad.as_str()));
    assert_eq!(stage.plugin_version().as_ref(), v1.version().as_ref());
}

#[test]
fn window_event_both_versions_trap_on_goes_to_the_dead_letters_with_both_reasons() {
    let engine = PluginEngine::new().expect("engine");
    let path = weir_tests::plugin_path("window_collect");
    let bytes = std::fs::read(&path).expect("window-collect");
    let v1 = engine
        .from_bytes(&path, &bytes, PluginKind::WindowAggregate)
        .expect("v1");
    let trap = std::fs::read(weir_tests::plugin_path("window_trap_always")).expect("trap");
    let bad = content_version(&trap);
    let slot = version_slot_with(&engine, &path, &v1, &bytes, ENDLESS_PROBATION);
    let window = WindowSettings {
        spec: WindowSpec::Tumbling { size: 1000 },
        group_by: vec!["Key".into()],
        start_field: "WindowStart".into(),
        end_field: "WindowEnd".into(),
    };
    let mut stage = WindowStage::new(
        "collect".into(),
        window,
        |keyed| InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone()),
        None,
        Metrics::new(),
    )
    .expect("window stage")
    .with_version_labels(true);
    match slot.offer(trap, VersionOrigin::Api) {
        Ok(Offered::Activated { .. }) => {}
        other => panic!("the trapping version offered: {other:?}"),
    }
    // Five events of one window; the third asks window-collect (the previous version) to panic.
    let events: Vec<Event> = (0..5u64)
        .map(|n| {
            let panic = n == 2;
            let body = format!(r#"{{"Id":"e{n}","Key":"k","Value":{n},"Panic":{panic}}}"#);
            let mut event = Event::new(3, 100 + n, body);
            event.event_time = Some(BASE + n as i64);
            event
        })
        .collect();
    let mut out = StageOutput::default();
    stage.batch_boundary();
    stage.process(&events, &mut out).expect("process");
    stage
        .watermarks(
            &[Mark {
                watermark: END_OF_INPUT,
                position: 105,
            }],
            &mut out,
        )
        .expect("close");
    assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected);
    let letter = &out.rejected[0];
    assert_eq!((letter.event.partition, letter.event.position), (3, 102));
    assert_eq!(letter.plugin_version.as_deref(), Some(bad.as_str()));
    assert!(
        letter.reason.starts_with("plugin trapped: ")
            && letter.reason.contains(&format!(
                "the previous version {} trapped too",
                v1.version()
            ))
            && letter.reason.contains("asked to panic by event e2"),
        "{}",
        letter.reason
    );
    // The window, folded and fired by the previous version, holds the four other events once.
    assert_eq!(out.emitted.len(), 1);
    let (_, record) = &out.emitted[0];
    let row: serde_json::Value = serde_json::from_slice(&record.body).expect("row");
    assert_eq!(row["Count"], 4);
    assert_eq!(row["Ids"], serde_json::json!(["e0", "e1", "e3", "e4"]));
    assert_eq!(label(record).as_deref(), Some(v1.version().as_ref()));
}

#[test]
fn join_version_that_traps_on_everything_is_rolled_back_and_its_pairs_enriched_by_the_previous_one()
{
    let engine = PluginEngine::new().expect("engine");
    let path = weir_tests::plugin_path("booking_join");
    let bytes = std::fs::read(&path).expect("booking-join");
    let v1 = engine
        .from_bytes(&path, &bytes, PluginKind::JoinEnrichment)
        .expect("v1");
    let trap = std::fs::read(weir_tests::plugin_path("join_trap_always")).expect("trap");
    let bad = content_version(&trap);
    let mut reference = join_stage(|keyed| InstanceSlot::new(v1.clone(), settings(&v1), keyed));
    let want = run_join(&mut reference, |_, _| {});

    let slot = version_slot(&engine, &path, &v1, &bytes);
    let mut stage = join_stage(|keyed| {
        InstanceSlot::new(v1.clone(), settings(&v1), keyed).following(slot.clone())
    })
    .with_version_labels(true);
    let mut versions_seen = Vec::new();
    let got = run_join(&mut stage, |index, stage| {
        versions_seen.push(stage.plugin_version().to_string());
        if index == 1 {
            match slot.offer(trap.clone(), VersionOrigin::Api) {
                Ok(Offered::Activated { .. }) => {}
                other => panic!("the trapping version offered: {other:?}"),
            }
        }
    });
    // `run_join` asserts that nothing was rejected: no pair lost.
    assert_eq!(got, want, "the reference's rows");
    assert!(
        versions_seen.contains(&bad),
        "the trapping version ran: {versions_seen:?}"
    );
    let report = slot.report();
    assert_eq!(report.active, v1.version().as_ref(), "rolled back");
    assert!(
        report
            .activations
            .iter()
            .any(|a| a.cause == weir::plugin::slot::ActivationCause::AutomaticRollback)
    );
}
