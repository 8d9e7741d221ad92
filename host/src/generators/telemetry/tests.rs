use std::time::Duration;

use super::*;
use crate::checkpoint::LocalCheckpointStore;
use crate::config::ConfigDuration;
use crate::event::partition_for_key;
use crate::source::{PartitionReader, PartitionStart, ReadOutcome, Source};

/// 2026-11-22T10:00:00Z.
const START: i64 = 1_795_341_600_000;

fn config(partitions: u32, max_events: Option<u64>) -> SimulatorSourceConfig {
    SimulatorSourceConfig {
        partitions,
        devices: 20,
        rate: 0,
        max_events,
        seed: 42,
        start_time: None,
        reading_interval: ConfigDuration::from_millis(10_000),
        jump_ratio: 0.05,
        duplicate_ratio: 0.001,
    }
}

fn all_partitions(partitions: u32, after: Option<u64>) -> Vec<PartitionStart> {
    (0..partitions)
        .map(|partition| PartitionStart { partition, after })
        .collect()
}

/// Reads every reader to its end; events sorted by position.
async fn read_all(mut readers: Vec<Box<dyn PartitionReader>>) -> Vec<Event> {
    let mut events = Vec::new();
    for reader in &mut readers {
        loop {
            match reader
                .next_batch(1000, Duration::from_secs(10))
                .await
                .expect("read")
            {
                ReadOutcome::Events(batch) => {
                    assert!(batch.iter().all(|e| e.partition == reader.partition()));
                    events.extend(batch);
                }
                ReadOutcome::Idle => panic!("simulator idled before max_events"),
                ReadOutcome::End => break,
                ReadOutcome::Undecodable { .. } => panic!("this source never has undecodable data"),
            }
        }
    }
    events.sort_by_key(|e| e.position);
    events
}

/// What must be identical between two runs (everything but the wall-clock enqueued time).
fn replayable(e: &Event) -> (u32, u64, Option<Bytes>, Option<i64>, Bytes) {
    (
        e.partition,
        e.position,
        e.key.clone(),
        e.event_time,
        e.body.clone(),
    )
}

#[tokio::test]
async fn same_seed_gives_identical_events_and_a_resume_yields_exactly_the_tail() {
    let mut cfg = config(3, Some(3000));
    cfg.duplicate_ratio = 0.01;
    let source = SimulatorSource::new("sim", cfg.clone(), START);
    let first = read_all(source.open(all_partitions(3, None)).await.expect("open")).await;
    let again = read_all(
        SimulatorSource::new("sim", cfg, START)
            .open(all_partitions(3, None))
            .await
            .expect("open"),
    )
    .await;
    assert_eq!(
        first.iter().map(replayable).collect::<Vec<_>>(),
        again.iter().map(replayable).collect::<Vec<_>>()
    );
    let duplicates = first.iter().filter(|e| e.position % 2 == 1).count();
    assert!(duplicates > 5, "{duplicates} duplicates");
    assert_eq!(first.len(), 3000 + duplicates);
    // Each duplicate repeats the reading before it, byte for byte.
    for pair in first.windows(2) {
        if pair[1].position % 2 == 1 {
            assert_eq!(pair[0].position + 1, pair[1].position);
            assert_eq!(pair[0].body, pair[1].body);
        }
    }

    // Resume after a duplicate, after an original that has a duplicate, and after a plain one.
    let dup = first
        .iter()
        .find(|e| e.position % 2 == 1)
        .expect("a duplicate")
        .position;
    for after in [dup, dup - 1, 1001 * 2, 0] {
        let tail = read_all(
            source
                .open(all_partitions(3, Some(after)))
                .await
                .expect("open"),
        )
        .await;
        let expected: Vec<_> = first
            .iter()
            .filter(|e| e.position > after)
            .map(replayable)
            .collect();
        assert_eq!(
            tail.iter().map(replayable).collect::<Vec<_>>(),
            expected,
            "after {after}"
        );
    }

    // Partitions resuming from different checkpoints each get exactly their own tail.
    let starts = vec![
        PartitionStart {
            partition: 0,
            after: Some(100),
        },
        PartitionStart {
            partition: 1,
            after: Some(4000),
        },
        PartitionStart {
            partition: 2,
            after: None,
        },
    ];
    let mixed = read_all(source.open(starts.clone()).await.expect("open")).await;
    let expected: Vec<_> = first
        .iter()
        .filter(|e| {
            starts[e.partition as usize]
                .after
                .is_none_or(|a| e.position > a)
        })
        .map(replayable)
        .collect();
    assert_eq!(mixed.iter().map(replayable).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn events_are_partitioned_and_keyed_by_device_and_times_follow_the_interval() {
    let source = SimulatorSource::new("sim", config(4, Some(400)), START);
    let events = read_all(source.open(all_partitions(4, None)).await.expect("open")).await;
    let mut per_device: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let mut previous_time = i64::MIN;
    for event in &events {
        let body: serde_json::Value = serde_json::from_slice(&event.body).expect("JSON body");
        let device = body["DeviceId"].as_str().expect("DeviceId").to_owned();
        assert_eq!(event.key.as_deref(), Some(device.as_bytes()));
        assert_eq!(event.partition, partition_for_key(device.as_bytes(), 4));
        let time = event.event_time.expect("event time");
        let stamp = body["Timestamp"].as_str().expect("Timestamp");
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(stamp)
                .expect("RFC 3339")
                .timestamp_millis(),
            time
        );
        assert!(time >= previous_time, "times never decrease");
        previous_time = time;
        if event.position % 2 == 0 {
            per_device.entry(device).or_default().push(time);
        }
    }
    assert_eq!(per_device.len(), 20);
    assert_eq!(events.first().map(|e| e.event_time), Some(Some(START)));
    let first_body: serde_json::Value = serde_json::from_slice(&events[0].body).expect("JSON");
    assert_eq!(first_body["Timestamp"], "2026-11-22T10:00:00.000Z");
    for times in per_device.values() {
        assert_eq!(times.len(), 20);
        assert!(
            times.windows(2).all(|w| w[1] - w[0] == 10_000),
            "each device reads every interval"
        );
    }
    let used: std::collections::BTreeSet<u32> = events.iter().map(|e| e.partition).collect();
    assert_eq!(used.len(), 4, "20 devices reach all 4 partitions");
}

#[test]
fn statistics_over_100k_readings() {
    let source = SimulatorSource::new("sim", config(4, None), START);
    let model = &source.model;
    let n = 100_000u64;
    let (mut jumps, mut extremes, mut duplicates, mut body_bytes) = (0u64, 0u64, 0u64, 0usize);
    let (mut min_size, mut max_size) = (usize::MAX, 0usize);
    let mut ids = std::collections::HashSet::new();
    let mut body = Vec::new();
    let mut last_battery: Vec<Option<f64>> = vec![None; 20];
    let mut replacements = 0;
    let mut locations = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeSet::new();
    for r in 0..n {
        let reading = model.reading(r);
        model.write_body(&reading, &mut body);
        body_bytes += body.len();
        min_size = min_size.min(body.len());
        max_size = max_size.max(body.len());
        let json: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(json.as_object().expect("object").len(), 10);
        let text = std::str::from_utf8(&body).expect("UTF-8");
        let order: Vec<usize> = [
            "DeviceId",
            "Location",
            "DeviceType",
            "Temperature",
            "Humidity",
            "Pressure",
            "BatteryLevel",
            "SignalStrength",
            "Timestamp",
            "EventId",
        ]
        .iter()
        .map(|field| text.find(&format!("\"{field}\":")).expect(field))
        .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "fields in order: {text}"
        );
        let number = |field: &str| json[field].as_f64().expect(field);
        let temperature = number("Temperature");
        assert_eq!(temperature, reading.temperature);
        if reading.jump {
            jumps += 1;
            if temperature > 80.0 {
                extremes += 1;
            } else {
                let size = (temperature - reading.smooth_temperature).abs();
                assert!((15.99..=35.01).contains(&size), "jump of {size}");
            }
        } else {
            assert!(
                (12.0..=36.0).contains(&temperature),
                "smooth temperature {temperature}"
            );
            assert!((temperature - reading.smooth_temperature).abs() < 0.01);
        }
        assert!((30.0..=70.0).contains(&number("Humidity")));
        assert!((990.0..=1030.0).contains(&number("Pressure")));
        let battery = number("BatteryLevel");
        assert!((4.99..=100.0).contains(&battery), "battery {battery}");
        if last_battery[reading.device]
            .replace(battery)
            .is_some_and(|last| battery > last)
        {
            replacements += 1;
        }
        assert!((-95.0..=-40.0).contains(&number("SignalStrength")));
        if reading.duplicate {
            duplicates += 1;
        }
        assert!(
            ids.insert(json["EventId"].as_str().expect("EventId").to_owned()),
            "unique EventId"
        );
        locations.insert(json["Location"].as_str().expect("Location").to_owned());
        types.insert(json["DeviceType"].as_str().expect("DeviceType").to_owned());
    }
    let share = |count: u64| count as f64 / n as f64;
    assert!(
        (0.04..=0.06).contains(&share(jumps)),
        "jump share {}",
        share(jumps)
    );
    assert!(
        extremes > 0 && extremes < jumps / 4,
        "{extremes} extreme jumps of {jumps}"
    );
    assert!(
        (0.0005..=0.002).contains(&share(duplicates)),
        "duplicate share {}",
        share(duplicates)
    );
    let mean = body_bytes / n as usize;
    assert!((200..=300).contains(&mean), "mean body {mean} bytes");
    assert!(
        min_size >= 180 && max_size <= 320,
        "body sizes {min_size}..{max_size}"
    );
    assert!(replacements > 0, "batteries drain to ~5 and are replaced");
    assert!(
        locations.len() >= 5 && types.len() >= 3,
        "{locations:?} {types:?}"
    );
}

#[tokio::test]
async fn max_events_ends_the_readers_and_pacing_follows_the_rate() {
    let mut cfg = config(2, Some(300));
    cfg.rate = 1000;
    cfg.duplicate_ratio = 0.0;
    let source = SimulatorSource::new("sim", cfg, START);
    let started = std::time::Instant::now();
    let events = read_all(source.open(all_partitions(2, None)).await.expect("open")).await;
    let elapsed = started.elapsed();
    assert_eq!(events.len(), 300);
    assert!(
        elapsed >= Duration::from_millis(250),
        "300 events at 1000/s took {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test]
async fn the_producer_stops_when_the_readers_are_dropped() {
    let mut cfg = config(2, None);
    cfg.rate = 100_000;
    let source = SimulatorSource::new("sim", cfg, START);
    let mut readers = source.open(all_partitions(2, None)).await.expect("open");
    match readers[0]
        .next_batch(10, Duration::from_secs(5))
        .await
        .expect("read")
    {
        ReadOutcome::Events(events) => assert!(!events.is_empty()),
        other => panic!("expected events, got {other:?}"),
    }
    drop(readers);
    // The producer task holds the model: it lets go once it has noticed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&source.model) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the producer kept running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_start_time_is_configured_or_persisted_and_reused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalCheckpointStore::new(dir.path());
    let cfg = config(1, None);
    let first = resolve_start_time("sim", &cfg, &store)
        .await
        .expect("start time");
    assert_eq!(first % 1000, 0, "whole second");
    assert!((now_millis() - first).abs() < 5_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reopened = LocalCheckpointStore::new(dir.path());
    assert_eq!(
        resolve_start_time("sim", &cfg, &reopened)
            .await
            .expect("start time"),
        first
    );
    // Another simulator gets its own.
    let other = resolve_start_time("other", &cfg, &reopened)
        .await
        .expect("start time");
    assert!(other > first);
    // A configured start time wins.
    let mut fixed = cfg.clone();
    fixed.start_time = Some("2026-11-22T10:00:00Z".into());
    assert_eq!(
        resolve_start_time("sim", &fixed, &store)
            .await
            .expect("start time"),
        START
    );
    fixed.start_time = Some("yesterday".into());
    assert!(resolve_start_time("sim", &fixed, &store).await.is_err());
    let (kind, _) = resolve_start_time("sim", &fixed, &store)
        .await
        .expect_err("not a time");
    assert_eq!(kind, crate::source::SourceErrorKind::Misconfigured);
}

#[tokio::test]
async fn bad_settings_are_refused_at_open() {
    let mut cfg = config(2, None);
    cfg.devices = 0;
    let Err(err) = SimulatorSource::new("sim", cfg, START)
        .open(all_partitions(2, None))
        .await
    else {
        panic!("zero devices must be refused");
    };
    assert!(err.to_string().contains("devices"), "{err}");
}

/// Generation throughput into a dispatcher with no pacing, on one thread.
/// `cargo test -p weir --lib simulator_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "current_thread")]
#[ignore = "measurement"]
async fn simulator_throughput() {
    let n = 500_000;
    let source = SimulatorSource::new("sim", config(4, Some(n)), START);
    let started = std::time::Instant::now();
    let readers = source.open(all_partitions(4, None)).await.expect("open");
    let mut total = 0usize;
    let mut readers = readers;
    let mut open: Vec<bool> = vec![true; readers.len()];
    while open.iter().any(|o| *o) {
        for (i, reader) in readers.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            match reader
                .next_batch(4096, Duration::from_millis(1))
                .await
                .expect("read")
            {
                ReadOutcome::Events(events) => total += events.len(),
                ReadOutcome::Idle => {}
                ReadOutcome::End => open[i] = false,
                ReadOutcome::Undecodable { .. } => panic!("this source never has undecodable data"),
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "simulator: {total} events in {elapsed:?} = {:.0} events/s (one thread)",
        total as f64 / elapsed.as_secs_f64()
    );
}
