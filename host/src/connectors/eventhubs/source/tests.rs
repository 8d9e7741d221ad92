//! The Event Hubs source against the test endpoint, through the real client.

#![allow(clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::time::Duration;

use weir_eventhubs_endpoint::{Endpoint, EndpointConfig, PublishTo};

use super::EventHubsSource;
use crate::config::{EventHubsSourceConfig, StartPosition};
use crate::event::{Event, Position};
use crate::source::{PartitionReader, PartitionStart, ReadOutcome, Source, SourceError};

const WAIT: Duration = Duration::from_secs(60);

async fn endpoint(hubs: &[(&str, u32)]) -> Endpoint {
    // `RUST_LOG=debug` shows what the reader, the client and the endpoint did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Endpoint::start(EndpointConfig::with_hubs(hubs))
        .await
        .expect("endpoint")
}

fn config(endpoint: &Endpoint, hub: &str) -> EventHubsSourceConfig {
    let text = format!(
        r#"
connection_string = "{}"
custom_endpoint = "{}"
lag_interval = "100ms"
"#,
        endpoint.connection_string(hub),
        endpoint.custom_endpoint()
    );
    toml::from_str(&text).expect("config")
}

fn start(partition: u32, after: Option<Position>) -> PartitionStart {
    PartitionStart { partition, after }
}

async fn open_one(source: &EventHubsSource, start: PartitionStart) -> Box<dyn PartitionReader> {
    source
        .open(vec![start])
        .await
        .expect("open")
        .pop()
        .expect("one reader")
}

/// Reads until `count` events arrived, failing after a generous wait.
async fn read(reader: &mut dyn PartitionReader, count: usize) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut events = Vec::new();
    while events.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} events: {:?}",
            events.len(),
            events
                .iter()
                .map(|e: &Event| e.position)
                .collect::<Vec<_>>()
        );
        match reader
            .next_batch(100, Duration::from_millis(200))
            .await
            .expect("read")
        {
            ReadOutcome::Events(batch) => events.extend(batch),
            ReadOutcome::Idle => {}
            ReadOutcome::End => panic!("an Event Hubs partition never ends"),
            ReadOutcome::Undecodable { .. } => panic!("this source never has undecodable data"),
        }
    }
    events
}

/// Reads for `quiet`, expecting nothing.
async fn read_nothing(reader: &mut dyn PartitionReader, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while tokio::time::Instant::now() < deadline {
        if let ReadOutcome::Events(events) = reader
            .next_batch(100, Duration::from_millis(100))
            .await
            .expect("read")
        {
            panic!("unexpected events {events:?}");
        }
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_partition_sequence_offset_time_key_and_properties() {
    let endpoint = endpoint(&[("telemetry", 3)]).await;
    let mut published = Vec::new();
    for i in 0..30 {
        let key = format!("device-{}", i % 5);
        let body = format!(r#"{{"n":{i}}}"#);
        let (partition, sequence) = endpoint
            .publish(
                "telemetry",
                PublishTo::Key(&key),
                body.clone(),
                &[("unit", "celsius"), ("n", &i.to_string())],
            )
            .expect("publish");
        published.push((partition, sequence, key, body));
    }
    let source = EventHubsSource::start("hub", &config(&endpoint, "telemetry"))
        .await
        .expect("source");
    assert_eq!(source.partition_count(), 3);
    let mut readers = source
        .open((0..3).map(|p| start(p, None)).collect())
        .await
        .expect("open");
    for reader in &mut readers {
        let partition = reader.partition() as usize;
        let expected: Vec<_> = published.iter().filter(|p| p.0 == partition).collect();
        let stored = endpoint.events("telemetry", partition).expect("stored");
        let events = read(reader.as_mut(), expected.len()).await;
        for ((event, (_, sequence, key, body)), stored) in events.iter().zip(&expected).zip(&stored)
        {
            assert_eq!(event.partition as usize, partition);
            assert_eq!(event.position, *sequence as u64);
            assert_eq!(event.body, body.as_bytes());
            assert_eq!(event.key.as_deref(), Some(key.as_bytes()));
            assert_eq!(event.enqueued_time, stored.enqueued_time);
            let properties: BTreeMap<&str, &str> = event
                .properties
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(properties.get("unit"), Some(&"celsius"));
            assert_eq!(
                properties.get(super::OFFSET_PROPERTY),
                Some(&stored.offset.to_string().as_str())
            );
        }
        // The offset of the last delivered event is what a checkpoint at its position records.
        let last = events.last().expect("events");
        let last_stored = stored.last().expect("stored");
        assert_eq!(
            reader.source_offset(last.position),
            Some(last_stored.offset.to_string())
        );
        assert_eq!(reader.source_offset(last.position + 1), None);
        // Everything is read: the lag, from the partition properties, drops to 0.
        wait_for("lag 0", || reader.lag() == Some(0)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_resumes_after_its_sequence_number_and_lag_counts_the_rest() {
    let endpoint = endpoint(&[("telemetry", 1)]).await;
    for i in 0..10 {
        endpoint
            .publish("telemetry", PublishTo::Partition(0), format!("e{i}"), &[])
            .expect("publish");
    }
    let source = EventHubsSource::start("hub", &config(&endpoint, "telemetry"))
        .await
        .expect("source");
    let mut reader = open_one(&source, start(0, Some(6))).await;
    // Sequence numbers 0..=9: after 6, three are left.
    wait_for("lag 3", || reader.lag() == Some(3)).await;
    let events = read(reader.as_mut(), 3).await;
    assert_eq!(
        events
            .iter()
            .map(|e: &Event| e.position)
            .collect::<Vec<_>>(),
        [7, 8, 9]
    );
    read_nothing(reader.as_mut(), Duration::from_millis(300)).await;
    endpoint
        .publish("telemetry", PublishTo::Partition(0), "e10", &[])
        .expect("publish");
    let more = read(reader.as_mut(), 1).await;
    assert_eq!(more[0].position, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_before_the_first_event_counts_from_a_configured_sequence_number() {
    let endpoint = endpoint(&[("telemetry", 1)]).await;
    for i in 0..10 {
        endpoint
            .publish("telemetry", PublishTo::Partition(0), format!("e{i}"), &[])
            .expect("publish");
    }
    let lag_before_reading = |start_at: i64, inclusive: bool| {
        let endpoint = &endpoint;
        async move {
            let mut config = config(endpoint, "telemetry");
            config.start_position = StartPosition::SequenceNumber(start_at);
            config.start_inclusive = inclusive;
            let source = EventHubsSource::start("hub", &config)
                .await
                .expect("source");
            let reader = open_one(&source, start(0, None)).await;
            wait_for("a lag figure", || reader.lag().is_some()).await;
            reader.lag()
        }
    };
    // Sequence numbers 0..=9: from 4 inclusive, 4..=9 are left; exclusive, 5..=9; past the
    // end, nothing.
    assert_eq!(lag_before_reading(4, true).await, Some(6));
    assert_eq!(lag_before_reading(4, false).await, Some(5));
    assert_eq!(lag_before_reading(9, false).await, Some(0));
    assert_eq!(lag_before_reading(20, true).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_configured_start_position_is_honoured() {
    let endpoint = endpoint(&[("telemetry", 1)]).await;
    for i in 0..5 {
        endpoint
            .publish("telemetry", PublishTo::Partition(0), format!("e{i}"), &[])
            .expect("publish");
    }
    let stored = endpoint.events("telemetry", 0).expect("stored");
    let first_of = |position: StartPosition, inclusive: bool| {
        let endpoint = &endpoint;
        async move {
            let mut config = config(endpoint, "telemetry");
            config.start_position = position;
            config.start_inclusive = inclusive;
            let source = EventHubsSource::start("hub", &config)
                .await
                .expect("source");
            let mut reader = open_one(&source, start(0, None)).await;
            read(reader.as_mut(), 1).await[0].position
        }
    };
    assert_eq!(first_of(StartPosition::Earliest, true).await, 0);
    assert_eq!(first_of(StartPosition::SequenceNumber(2), true).await, 2);
    assert_eq!(first_of(StartPosition::SequenceNumber(2), false).await, 3);
    let offset = stored[3].offset.to_string();
    assert_eq!(
        first_of(StartPosition::Offset(offset.clone()), true).await,
        3
    );
    assert_eq!(first_of(StartPosition::Offset(offset), false).await, 4);

    // Enqueued time: a second batch, enqueued at least 2 ms after the first, and a start time
    // between the two, so that a reader ignoring the time filter would read the first batch.
    let first_batch_time = stored.last().expect("stored").enqueued_time;
    wait_for("the clock to pass the first batch", || {
        chrono::Utc::now().timestamp_millis() > first_batch_time + 2
    })
    .await;
    for i in 5..8 {
        endpoint
            .publish("telemetry", PublishTo::Partition(0), format!("e{i}"), &[])
            .expect("publish");
    }
    let stored = endpoint.events("telemetry", 0).expect("stored");
    let second_batch_time = stored[5].enqueued_time;
    assert!(
        second_batch_time >= first_batch_time + 2,
        "{first_batch_time} {second_batch_time}"
    );
    let between = |millis: i64| {
        chrono::DateTime::from_timestamp_millis(millis)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    // Inclusive and exclusive alike, a time between the batches starts at the second one.
    let time = between(first_batch_time + 1);
    assert_eq!(
        first_of(StartPosition::EnqueuedTime(time.clone()), true).await,
        5
    );
    assert_eq!(first_of(StartPosition::EnqueuedTime(time), false).await, 5);
    // Exactly the second batch's first time: inclusive starts at that event.
    let time = between(second_batch_time);
    assert_eq!(
        first_of(StartPosition::EnqueuedTime(time.clone()), true).await,
        5
    );

    // Latest: only what arrives after the reader attached.
    let mut config = config(&endpoint, "telemetry");
    config.start_position = StartPosition::Latest;
    let source = EventHubsSource::start("hub", &config)
        .await
        .expect("source");
    let mut reader = open_one(&source, start(0, None)).await;
    wait_for("the latest reader attached", || {
        endpoint.consumers("telemetry") == 1
    })
    .await;
    read_nothing(reader.as_mut(), Duration::from_millis(300)).await;
    endpoint
        .publish("telemetry", PublishTo::Partition(0), "new", &[])
        .expect("publish");
    let events = read(reader.as_mut(), 1).await;
    assert_eq!(events[0].position, 8);
    assert_eq!(events[0].body, "new".as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detaches_and_dropped_connections_lose_and_repeat_nothing() {
    let endpoint = endpoint(&[("telemetry", 2)]).await;
    let mut config = config(&endpoint, "telemetry");
    config.prefetch = 10;
    let source = EventHubsSource::start("hub", &config)
        .await
        .expect("source");
    let mut readers = source
        .open(vec![start(0, None), start(1, None)])
        .await
        .expect("open");
    let mut seen: Vec<Vec<Position>> = vec![Vec::new(), Vec::new()];
    let mut published = [0usize; 2];
    for round in 0..6 {
        for i in 0..40 {
            let partition = i % 2;
            endpoint
                .publish(
                    "telemetry",
                    PublishTo::Partition(partition),
                    format!("r{round}-{i}"),
                    &[],
                )
                .expect("publish");
            published[partition] += 1;
        }
        // Read part of what is there, then break things under the readers.
        for (partition, reader) in readers.iter_mut().enumerate() {
            let want = published[partition] - 10 - seen[partition].len();
            let events = read(reader.as_mut(), want).await;
            seen[partition].extend(events.iter().map(|e| e.position));
        }
        if round % 2 == 0 {
            endpoint.detach_consumers("telemetry");
        } else {
            endpoint.drop_connections();
        }
    }
    for (partition, reader) in readers.iter_mut().enumerate() {
        let want = published[partition] - seen[partition].len();
        let events = read(reader.as_mut(), want).await;
        seen[partition].extend(events.iter().map(|e| e.position));
        read_nothing(reader.as_mut(), Duration::from_millis(300)).await;
        let expected: Vec<Position> = (0..published[partition] as u64).collect();
        assert_eq!(
            seen[partition], expected,
            "partition {partition}: in order, once each"
        );
    }
    let stats = endpoint.stats();
    assert!(stats.forced_detaches >= 6, "{stats:?}");
    assert!(stats.dropped_connections >= 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_a_higher_owner_level_takes_the_partition() {
    let endpoint = endpoint(&[("telemetry", 1)]).await;
    for i in 0..3 {
        endpoint
            .publish("telemetry", PublishTo::Partition(0), format!("e{i}"), &[])
            .expect("publish");
    }
    let mut low = config(&endpoint, "telemetry");
    low.owner_level = Some(1);
    let mut high = low.clone();
    high.owner_level = Some(2);
    let first = EventHubsSource::start("hub", &low).await.expect("source");
    let mut first_reader = open_one(&first, start(0, None)).await;
    assert_eq!(read(first_reader.as_mut(), 3).await.len(), 3);

    let second = EventHubsSource::start("hub", &high).await.expect("source");
    let mut second_reader = open_one(&second, start(0, None)).await;
    assert_eq!(read(second_reader.as_mut(), 3).await.len(), 3);

    // The displaced reader reports it, naming the owner level, instead of reading on.
    let deadline = tokio::time::Instant::now() + WAIT;
    let error: SourceError = loop {
        assert!(tokio::time::Instant::now() < deadline, "no error");
        match first_reader
            .next_batch(10, Duration::from_millis(200))
            .await
        {
            Err(error) => break error,
            Ok(ReadOutcome::Events(events)) => panic!("read after being displaced: {events:?}"),
            Ok(_) => {}
        }
    };
    assert!(
        matches!(error, SourceError::Lost { partition: 0, .. }),
        "displaced, not failed: {error:?}"
    );
    assert!(error.to_string().contains("higher owner level"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hub_or_partition_count_is_refused_at_start() {
    let endpoint = endpoint(&[("telemetry", 2)]).await;
    let Err(error) = EventHubsSource::start("hub", &config(&endpoint, "nowhere")).await else {
        panic!("an unknown hub must be refused");
    };
    assert!(error.to_string().contains("nowhere"), "{error}");
    let mut config = config(&endpoint, "telemetry");
    config.partitions = Some(4);
    let Err(error) = EventHubsSource::start("hub", &config).await else {
        panic!("a wrong partition count must be refused");
    };
    assert!(error.to_string().contains("has 2 partitions"), "{error}");
}
