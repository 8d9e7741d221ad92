//! The test endpoint against the real `azure_messaging_eventhubs` client: properties, producers
//! (to the hub, by key, to a partition, batches), consumers at every start position with the
//! event annotations, owner-level exclusivity, and the injected faults.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use azure_messaging_eventhubs::models::{EventData, ReceivedEventData};
use azure_messaging_eventhubs::{
    ConsumerClient, EventDataBatchOptions, EventReceiver, OpenReceiverOptions, ProducerClient,
    SendEventOptions, StartLocation, StartPosition,
};
use futures::StreamExt;
use weir_eventhubs_endpoint::{Endpoint, EndpointConfig, PublishTo};

const WAIT: Duration = Duration::from_secs(60);

/// Runs a test on the one runtime all tests of this file share, one test at a time (a runtime per
/// test made later tests fail more often; a Weir process has one runtime, as here).
fn on_shared_runtime(test: impl std::future::Future<Output = ()>) {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test runtime")
        })
        .block_on(test);
}

async fn endpoint(hubs: &[(&str, u32)]) -> Endpoint {
    // `RUST_LOG=debug` shows what the client and the endpoint did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // In a workspace build rustls gets both crypto backends (other crates enable aws-lc-rs), so
    // the client cannot pick one by itself; Weir uses ring. An error means one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Endpoint::start(EndpointConfig::with_hubs(hubs))
        .await
        .expect("endpoint starts")
}

async fn producer(endpoint: &Endpoint, hub: &str) -> ProducerClient {
    ProducerClient::builder()
        .with_custom_endpoint(endpoint.custom_endpoint())
        .open_with_connection_string(&endpoint.connection_string(hub), None)
        .await
        .expect("producer opens")
}

async fn consumer(endpoint: &Endpoint, hub: &str, group: &str) -> ConsumerClient {
    ConsumerClient::builder()
        .with_custom_endpoint(endpoint.custom_endpoint())
        .with_consumer_group(group.to_owned())
        .open_with_connection_string(&endpoint.connection_string(hub), None)
        .await
        .expect("consumer opens")
}

fn start(location: StartLocation, inclusive: bool) -> Option<OpenReceiverOptions> {
    Some(OpenReceiverOptions {
        start_position: Some(StartPosition {
            location,
            inclusive,
        }),
        ..OpenReceiverOptions::default()
    })
}

/// Reads `count` events from a receiver, failing after a generous wait.
async fn take(receiver: &EventReceiver, count: usize) -> Vec<ReceivedEventData> {
    let mut stream = receiver.stream_events();
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            Ok(Some(Err(e))) => panic!("receive failed after {} events: {e}", events.len()),
            Ok(None) => panic!("stream ended after {} events", events.len()),
            Err(_) => panic!("only {} of {count} events within {WAIT:?}", events.len()),
        }
    }
    events
}

fn body(event: &ReceivedEventData) -> String {
    String::from_utf8_lossy(event.event_data().body().unwrap_or_default()).into_owned()
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn hub_and_partition_properties_come_from_management() {
    on_shared_runtime(async {
        let endpoint = endpoint(&[("telemetry", 4)]).await;
        endpoint
            .publish("telemetry", PublishTo::Partition(2), "one", &[])
            .expect("publish");
        endpoint
            .publish("telemetry", PublishTo::Partition(2), "two", &[])
            .expect("publish");
        let client = consumer(&endpoint, "telemetry", "$Default").await;
        let hub = client
            .get_eventhub_properties()
            .await
            .expect("hub properties");
        assert_eq!(hub.name, "telemetry");
        assert_eq!(hub.partition_ids, ["0", "1", "2", "3"]);
        assert!(hub.created_on.is_some());

        let busy = client
            .get_partition_properties("2")
            .await
            .expect("partition 2");
        let state = endpoint.partition_state("telemetry", 2).expect("state");
        assert_eq!(busy.id, "2");
        assert_eq!(busy.eventhub, "telemetry");
        assert_eq!(busy.beginning_sequence_number, 0);
        assert_eq!(busy.last_enqueued_sequence_number, 1);
        assert_eq!(busy.last_enqueued_offset, state.last_offset.to_string());
        assert!(!busy.is_empty);
        let empty = client
            .get_partition_properties("0")
            .await
            .expect("partition 0");
        assert!(empty.is_empty);
        assert_eq!(empty.last_enqueued_sequence_number, -1);

        assert!(
            client.get_partition_properties("9").await.is_err(),
            "an unknown partition is an error"
        );
        client.close().await.expect("close");
    });
}

#[test]
fn producers_send_to_partitions_by_id_by_key_and_round_robin() {
    on_shared_runtime(async {
        let endpoint = endpoint(&[("orders", 3)]).await;
        let producer = producer(&endpoint, "orders").await;

        // One event to a partition by id.
        producer
            .send_event(
                EventData::builder()
                    .with_body("to-partition-1")
                    .add_property("kind".to_owned(), "direct")
                    .build(),
                Some(SendEventOptions {
                    partition_id: Some("1".to_owned()),
                }),
            )
            .await
            .expect("send to a partition");
        let stored = endpoint.events("orders", 1).expect("events");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].body(), b"to-partition-1");
        assert!(
            stored[0]
                .properties()
                .contains(&("kind".to_owned(), "direct".to_owned()))
        );

        // Two batches by partition key: each key's events all land in one partition, in order.
        for key in ["device-a", "device-b"] {
            let batch = producer
                .create_batch(Some(EventDataBatchOptions {
                    partition_key: Some(key.to_owned()),
                    ..EventDataBatchOptions::default()
                }))
                .await
                .expect("batch");
            for i in 0..5 {
                assert!(
                    batch
                        .try_add_event_data(format!("{key}-{i}"), None)
                        .expect("add")
                );
            }
            producer.send_batch(batch, None).await.expect("send batch");
        }
        for key in ["device-a", "device-b"] {
            let holders: Vec<(usize, Vec<String>)> = (0..3)
                .map(|p| {
                    let bodies = endpoint
                        .events("orders", p)
                        .expect("events")
                        .iter()
                        .filter(|e| e.partition_key.as_deref() == Some(key))
                        .map(weir_eventhubs_endpoint::body_text)
                        .collect::<Vec<_>>();
                    (p, bodies)
                })
                .filter(|(_, bodies)| !bodies.is_empty())
                .collect();
            assert_eq!(holders.len(), 1, "{key} is in one partition: {holders:?}");
            let expected: Vec<String> = (0..5).map(|i| format!("{key}-{i}")).collect();
            assert_eq!(holders[0].1, expected);
        }

        // Without a key or partition, the hub spreads transfers over the partitions.
        let before: Vec<usize> = (0..3)
            .map(|p| endpoint.events("orders", p).expect("events").len())
            .collect();
        for i in 0..6 {
            producer
                .send_event(format!("spread-{i}"), None)
                .await
                .expect("send");
        }
        let grew: BTreeSet<usize> = (0..3)
            .filter(|&p| endpoint.events("orders", p).expect("events").len() > before[p])
            .collect();
        assert_eq!(grew.len(), 3, "round robin reaches every partition");
        producer.close().await.expect("close");
    });
}

#[test]
fn consumers_start_where_their_position_says_with_every_annotation() {
    on_shared_runtime(async {
        let endpoint = endpoint(&[("telemetry", 2)]).await;
        let producer = producer(&endpoint, "telemetry").await;
        let batch = producer
            .create_batch(Some(EventDataBatchOptions {
                partition_id: Some("0".to_owned()),
                ..EventDataBatchOptions::default()
            }))
            .await
            .expect("batch");
        for i in 0..6 {
            let event = EventData::builder()
                .with_body(format!("event-{i}"))
                .add_property("index".to_owned(), i.to_string())
                .build();
            assert!(batch.try_add_event_data(event, None).expect("add"));
        }
        producer.send_batch(batch, None).await.expect("send");
        // A later event, enqueued after a pause, to start from by time.
        tokio::time::sleep(Duration::from_millis(30)).await;
        producer
            .send_event(
                "late",
                Some(SendEventOptions {
                    partition_id: Some("0".to_owned()),
                }),
            )
            .await
            .expect("send late");
        let stored = endpoint.events("telemetry", 0).expect("events");
        assert_eq!(stored.len(), 7);

        let client = consumer(&endpoint, "telemetry", "readers").await;

        // Earliest: everything, with the annotations the service stamps.
        let receiver = client
            .open_receiver_on_partition("0".to_owned(), start(StartLocation::Earliest, false))
            .await
            .expect("open");
        let events = take(&receiver, 7).await;
        for (event, stored) in events.iter().zip(&stored) {
            assert_eq!(event.sequence_number(), Some(stored.sequence_number));
            assert_eq!(
                event.offset().as_deref(),
                Some(stored.offset.to_string().as_str())
            );
            let enqueued = event
                .enqueued_time()
                .expect("enqueued time")
                .duration_since(UNIX_EPOCH)
                .expect("after the epoch")
                .as_millis() as i64;
            assert_eq!(enqueued, stored.enqueued_time);
        }
        assert_eq!(body(&events[3]), "event-3");
        let index = events[3]
            .event_data()
            .properties()
            .and_then(|p| p.get("index"))
            .expect("application property kept");
        assert!(format!("{index:?}").contains("\"3\""), "{index:?}");
        receiver.close().await.expect("close");

        // Sequence number, exclusive and inclusive.
        let receiver = client
            .open_receiver_on_partition(
                "0".to_owned(),
                start(StartLocation::SequenceNumber(2), false),
            )
            .await
            .expect("open");
        assert_eq!(take(&receiver, 1).await[0].sequence_number(), Some(3));
        receiver.close().await.expect("close");
        let receiver = client
            .open_receiver_on_partition(
                "0".to_owned(),
                start(StartLocation::SequenceNumber(2), true),
            )
            .await
            .expect("open");
        assert_eq!(take(&receiver, 1).await[0].sequence_number(), Some(2));
        receiver.close().await.expect("close");

        // Offset: inclusive starts at that event, exclusive after it.
        let offset = stored[4].offset.to_string();
        let receiver = client
            .open_receiver_on_partition(
                "0".to_owned(),
                start(StartLocation::Offset(offset.clone()), true),
            )
            .await
            .expect("open");
        assert_eq!(take(&receiver, 1).await[0].sequence_number(), Some(4));
        receiver.close().await.expect("close");
        let receiver = client
            .open_receiver_on_partition("0".to_owned(), start(StartLocation::Offset(offset), false))
            .await
            .expect("open");
        assert_eq!(take(&receiver, 1).await[0].sequence_number(), Some(5));
        receiver.close().await.expect("close");

        // Enqueued time: after the batch's time, only the late event.
        let after_batch = UNIX_EPOCH + Duration::from_millis(stored[0].enqueued_time as u64);
        let receiver = client
            .open_receiver_on_partition(
                "0".to_owned(),
                start(StartLocation::EnqueuedTime(after_batch), false),
            )
            .await
            .expect("open");
        let late = take(&receiver, 1).await;
        assert_eq!(body(&late[0]), "late");
        receiver.close().await.expect("close");

        // Latest: only what is enqueued after the link attached.
        let latest = client
            .open_receiver_on_partition("0".to_owned(), start(StartLocation::Latest, false))
            .await
            .expect("open");
        let reading = tokio::spawn(async move {
            let events = take(&latest, 1).await;
            latest.close().await.expect("close");
            events
        });
        wait_until("the latest receiver attached", || {
            endpoint.consumers("telemetry") == 1
        })
        .await;
        endpoint
            .publish("telemetry", PublishTo::Partition(1), "elsewhere", &[])
            .expect("publish");
        let (partition, _) = endpoint
            .publish("telemetry", PublishTo::Partition(0), "newest", &[])
            .expect("publish");
        assert_eq!(partition, 0);
        let got = reading.await.expect("reader");
        assert_eq!(body(&got[0]), "newest");
        assert_eq!(got[0].sequence_number(), Some(7));

        // Partition keys come back on the events.
        let keyed = endpoint
            .publish("telemetry", PublishTo::Key("device-9"), "keyed", &[])
            .expect("publish");
        let receiver = client
            .open_receiver_on_partition(
                keyed.0.to_string(),
                start(StartLocation::SequenceNumber(keyed.1), true),
            )
            .await
            .expect("open");
        let keyed_event = take(&receiver, 1).await;
        assert_eq!(keyed_event[0].partition_key().as_deref(), Some("device-9"));
        receiver.close().await.expect("close");
        client.close().await.expect("close");
        producer.close().await.expect("close");
    });
}

#[test]
fn a_higher_owner_level_takes_the_partition_and_a_lower_one_is_refused() {
    on_shared_runtime(async {
        let endpoint = endpoint(&[("telemetry", 1)]).await;
        for i in 0..3 {
            endpoint
                .publish("telemetry", PublishTo::Partition(0), format!("e{i}"), &[])
                .expect("publish");
        }
        let options = |level: i64| {
            Some(OpenReceiverOptions {
                owner_level: Some(level),
                start_position: Some(StartPosition {
                    location: StartLocation::Earliest,
                    inclusive: false,
                }),
                ..OpenReceiverOptions::default()
            })
        };
        let first_client = consumer(&endpoint, "telemetry", "$Default").await;
        let first = first_client
            .open_receiver_on_partition("0".to_owned(), options(1))
            .await
            .expect("open");
        let first_task = tokio::spawn(async move {
            let mut stream = first.stream_events();
            let mut received = 0;
            loop {
                match tokio::time::timeout(WAIT, stream.next()).await {
                    Ok(Some(Ok(_))) => received += 1,
                    Ok(Some(Err(e))) => return (received, Some(e.to_string())),
                    Ok(None) | Err(_) => return (received, None),
                }
            }
        });
        wait_until("the first owner attached", || {
            endpoint.consumers("telemetry") == 1
        })
        .await;

        let second_client = consumer(&endpoint, "telemetry", "$Default").await;
        let second = second_client
            .open_receiver_on_partition("0".to_owned(), options(2))
            .await
            .expect("open");
        let got = take(&second, 3).await;
        assert_eq!(got.len(), 3, "the new owner reads the partition");
        let (_, error) = first_task.await.expect("first task");
        let error = error.expect("the displaced receiver sees an error, not silence");
        assert!(
            error.to_lowercase().contains("disconnected") || error.contains("stolen"),
            "displaced with: {error}"
        );

        // A lower owner level is refused while the higher one holds the partition.
        let third_client = consumer(&endpoint, "telemetry", "$Default").await;
        let third = third_client
            .open_receiver_on_partition("0".to_owned(), options(0))
            .await
            .expect("open");
        let mut stream = third.stream_events();
        let refused = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an answer");
        assert!(
            matches!(refused, Some(Err(_))),
            "a lower owner level must be refused"
        );
        drop(stream);
        // Other consumer groups are independent.
        let other_group = consumer(&endpoint, "telemetry", "audit").await;
        let audit = other_group
            .open_receiver_on_partition("0".to_owned(), options(0))
            .await
            .expect("open");
        assert_eq!(take(&audit, 3).await.len(), 3);
        assert!(endpoint.stats().stolen >= 2);
        second.close().await.expect("close");
    });
}

#[test]
fn the_client_rides_through_detaches_dropped_connections_and_busy_rejections() {
    on_shared_runtime(async {
        let endpoint = endpoint(&[("telemetry", 1)]).await;
        let mut producer = producer(&endpoint, "telemetry").await;
        let client = consumer(&endpoint, "telemetry", "$Default").await;
        let receiver = client
            .open_receiver_on_partition("0".to_owned(), start(StartLocation::Earliest, false))
            .await
            .expect("open");
        let reader = tokio::spawn(async move {
            let mut stream = receiver.stream_events();
            let mut seen = Vec::new();
            // Until the last event sent (sequence number 7) arrives.
            while !seen.contains(&7) {
                match tokio::time::timeout(WAIT, stream.next()).await {
                    Ok(Some(Ok(event))) => seen.push(event.sequence_number().expect("number")),
                    Ok(Some(Err(e))) => panic!("receive failed after {seen:?}: {e}"),
                    Ok(None) | Err(_) => panic!("the stream stalled after {seen:?}"),
                }
            }
            seen
        });
        let to_partition = || {
            Some(SendEventOptions {
                partition_id: Some("0".to_owned()),
            })
        };
        for i in 0..5 {
            producer
                .send_event(format!("event-{i}"), to_partition())
                .await
                .expect("send");
        }
        wait_until("a consumer attached", || {
            endpoint.consumers("telemetry") == 1
        })
        .await;
        assert_eq!(endpoint.detach_consumers("telemetry"), 1);
        producer
            .send_event("event-5", to_partition())
            .await
            .expect("send after a detach");

        // Busy: the next two transfers are rejected; the client retries them.
        endpoint.server_busy(2);
        producer
            .send_event("event-6", to_partition())
            .await
            .expect("send through busy rejections");
        assert_eq!(endpoint.stats().busy_rejections, 2);

        let attaches = endpoint.stats().consumer_attaches;
        assert!(
            endpoint.drop_connections() >= 2,
            "producer and consumer connections"
        );
        // The consumer reconnects by itself.
        wait_until("the consumer re-attached", || {
            endpoint.stats().consumer_attaches > attaches
        })
        .await;
        // A send that starts before the client has seen its connection drop can wait forever for
        // its settlement (the client keeps the dead link's pending delivery): bound it and reopen
        // the client, as Weir's sink does.
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            producer.send_event("event-7", to_partition()),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            producer = self::producer(&endpoint, "telemetry").await;
            producer
                .send_event("event-7", to_partition())
                .await
                .expect("send on a reopened client");
        }
        let seen = reader.await.expect("reader");
        // The client re-attached with its original start position: it sees events again, but
        // every event, up to the last one sent, reached it.
        let distinct: BTreeSet<i64> = seen.iter().copied().collect();
        assert_eq!(distinct, (0..8).collect::<BTreeSet<i64>>(), "{seen:?}");
        let stats = endpoint.stats();
        assert_eq!(stats.forced_detaches, 1);
        assert!(stats.dropped_connections >= 2);
        let bodies: Vec<String> = endpoint
            .events("telemetry", 0)
            .expect("events")
            .iter()
            .map(weir_eventhubs_endpoint::body_text)
            .collect();
        let expected: Vec<String> = (0..8).map(|i| format!("event-{i}")).collect();
        assert_eq!(bodies, expected, "each send stored once, in order");
        producer.close().await.expect("close");
    });
}
