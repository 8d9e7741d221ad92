//! The Event Hubs sink against the test endpoint, through the real client.

#![allow(clippy::expect_used, reason = "tests")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weir_eventhubs_endpoint::{Endpoint, EndpointConfig, StoredEvent};

use super::EventHubsSink;
use crate::config::{EventHubsRouting, EventHubsSinkConfig};
use crate::event::Event;
use crate::sink::{RefusalKind, Sink, WriterScope};

async fn endpoint(hubs: &[(&str, u32)]) -> Endpoint {
    Endpoint::start(EndpointConfig::with_hubs(hubs))
        .await
        .expect("endpoint")
}

fn config(endpoint: &Endpoint, hub: &str, routing: &str) -> EventHubsSinkConfig {
    let text = format!(
        r#"
connection_string = "{}"
custom_endpoint = "{}"
partition_by = "{routing}"
send_timeout = "5s"
"#,
        endpoint.connection_string(hub),
        endpoint.custom_endpoint()
    );
    toml::from_str(&text).expect("config")
}

fn scope(partition: u32) -> WriterScope {
    WriterScope {
        pipeline: Arc::from("alerts"),
        partition,
    }
}

fn record(position: u64, device: &str, n: usize) -> Event {
    let mut event = Event::new(0, position, format!(r#"{{"DeviceId":"{device}","n":{n}}}"#));
    event.key = Some(device.as_bytes().to_vec().into());
    event.properties = vec![
        ("source".to_owned(), "test".to_owned()),
        ("x-opt-offset".to_owned(), "123".to_owned()),
    ];
    event
}

fn by_message_id(events: &[StoredEvent]) -> BTreeMap<String, &StoredEvent> {
    events
        .iter()
        .map(|e| (e.message_id().expect("message id"), e))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_by_key_in_order_with_deterministic_ids_and_properties() {
    let endpoint = endpoint(&[("alerts", 3)]).await;
    let mut config = config(&endpoint, "alerts", "key");
    config.key_field = Some("DeviceId".to_owned());
    let sink = EventHubsSink::open("alerts", &config).await.expect("sink");
    let mut writer = sink.open_writer(&scope(2), None).await.expect("writer");
    let mut records = Vec::new();
    for i in 0..30 {
        let device = format!("device-{}", i % 4);
        records.push(record(100 + i as u64 / 2, &device, i));
    }
    let refused = writer.write(records.clone()).await.expect("write");
    assert!(refused.is_empty());
    // Issue 15: records are sent as they are written, not held until the checkpoint's flush.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while endpoint.all_events("alerts").expect("events").len() < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "records were held back until a flush"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let progress = writer.flush().await.expect("flush");
    assert_eq!(progress["sent"], 30);

    let stored = endpoint.all_events("alerts").expect("events");
    assert_eq!(stored.len(), 30);
    let ids = by_message_id(&stored);
    // Two records per position: ids number them within their input event.
    for (i, record) in records.iter().enumerate() {
        let id = format!("alerts/2/{}/{}", record.position, i % 2);
        let event = ids.get(&id).unwrap_or_else(|| panic!("no event {id}"));
        assert_eq!(event.body(), record.body.to_vec());
        let device = format!("device-{}", i % 4);
        assert_eq!(event.partition_key.as_deref(), Some(device.as_str()));
        let properties = event.properties();
        assert!(properties.contains(&("source".to_owned(), "test".to_owned())));
        assert!(
            !properties.iter().any(|(k, _)| k.starts_with("x-opt-")),
            "service properties are not forwarded: {properties:?}"
        );
    }
    // Each key in one partition, in record order.
    for d in 0..4 {
        let device = format!("device-{d}");
        let holders: BTreeSet<usize> = (0..3)
            .filter(|&p| {
                endpoint
                    .events("alerts", p)
                    .expect("events")
                    .iter()
                    .any(|e| e.partition_key.as_deref() == Some(device.as_str()))
            })
            .collect();
        assert_eq!(holders.len(), 1, "{device}: {holders:?}");
        let partition = *holders.iter().next().expect("one");
        let ns: Vec<usize> = endpoint
            .events("alerts", partition)
            .expect("events")
            .iter()
            .filter(|e| e.partition_key.as_deref() == Some(device.as_str()))
            .map(|e| {
                let body: serde_json::Value = serde_json::from_slice(&e.body()).expect("json body");
                body["n"].as_u64().expect("n") as usize
            })
            .collect();
        let expected: Vec<usize> = (0..30).filter(|i| i % 4 == d).collect();
        assert_eq!(ns, expected, "{device}");
    }
    // A writer reopened from that checkpoint counts on from it.
    let mut reopened = sink
        .open_writer(&scope(2), Some(&progress))
        .await
        .expect("writer");
    reopened
        .write(vec![record(200, "device-9", 99)])
        .await
        .expect("write");
    assert_eq!(reopened.flush().await.expect("flush")["sent"], 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_go_by_partition_id_or_anywhere() {
    let endpoint = endpoint(&[("alerts", 2)]).await;
    let sink = EventHubsSink::open("alerts", &config(&endpoint, "alerts", "partition"))
        .await
        .expect("sink");
    for pipeline_partition in [1, 3] {
        let mut writer = sink
            .open_writer(&scope(pipeline_partition), None)
            .await
            .expect("writer");
        let records: Vec<Event> = (0..5)
            .map(|i| record(i, &format!("d{i}"), i as usize))
            .collect();
        writer.write(records).await.expect("write");
        writer.flush().await.expect("flush");
    }
    // Pipeline partitions 1 and 3 both map to hub partition 1 of 2.
    assert_eq!(endpoint.events("alerts", 1).expect("events").len(), 10);
    assert_eq!(endpoint.events("alerts", 0).expect("events").len(), 0);

    let any = EventHubsSink::open("any", &config(&endpoint, "alerts", "any"))
        .await
        .expect("sink");
    let mut writer = any.open_writer(&scope(0), None).await.expect("writer");
    for flush in 0..4 {
        writer
            .write(vec![record(flush, "d", 0)])
            .await
            .expect("write");
        writer.flush().await.expect("flush");
    }
    assert!(
        !endpoint.events("alerts", 0).expect("events").is_empty(),
        "the service spreads keyless batches"
    );
    assert_eq!(EventHubsRouting::default(), EventHubsRouting::Key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_flushes_split_into_batches_and_oversized_records_are_refused() {
    let endpoint = endpoint(&[("alerts", 1)]).await;
    let sink = EventHubsSink::open("alerts", &config(&endpoint, "alerts", "any"))
        .await
        .expect("sink");
    let mut writer = sink.open_writer(&scope(0), None).await.expect("writer");
    let padding = "x".repeat(100_000);
    let records: Vec<Event> = (0..25)
        .map(|i| Event::new(0, i, format!(r#"{{"i":{i},"pad":"{padding}"}}"#)))
        .collect();
    let mut too_big = Event::new(0, 99, "y".repeat(2 * 1024 * 1024));
    too_big.key = None;
    let mut all = records.clone();
    all.push(too_big);
    let refused = writer.write(all).await.expect("write");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].reason.contains("exceeds"),
        "{}",
        refused[0].reason
    );
    assert_eq!(refused[0].kind, RefusalKind::TooLarge);
    writer.flush().await.expect("flush");
    let stored = endpoint.events("alerts", 0).expect("events");
    assert_eq!(stored.len(), 25, "2.5 MB in batches of at most 1 MiB");
    assert!(endpoint.stats().transfers >= 3, "{:?}", endpoint.stats());
    let order: Vec<u64> = stored
        .iter()
        .map(|e| {
            let body: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
            body["i"].as_u64().expect("i")
        })
        .collect();
    assert_eq!(order, (0..25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_rejections_and_dropped_connections_are_retried_without_loss() {
    let endpoint = endpoint(&[("alerts", 2)]).await;
    let mut config = config(&endpoint, "alerts", "partition");
    config.send_timeout = crate::config::ConfigDuration::from_millis(2_000);
    let sink = EventHubsSink::open("alerts", &config).await.expect("sink");
    let mut writer = sink.open_writer(&scope(0), None).await.expect("writer");
    let mut expected = BTreeSet::new();
    for round in 0..4u64 {
        let records: Vec<Event> = (0..10)
            .map(|i| record(round * 100 + i, "d", i as usize))
            .collect();
        for r in &records {
            expected.insert(format!("alerts/0/{}/0", r.position));
        }
        writer.write(records).await.expect("write");
        match round {
            1 => endpoint.server_busy(3),
            2 => {
                endpoint.drop_connections();
            }
            _ => {}
        }
        writer.flush().await.expect("flush after a fault");
    }
    let stored = endpoint.events("alerts", 0).expect("events");
    let ids: BTreeSet<String> = stored.iter().map(|e| e.message_id().expect("id")).collect();
    assert_eq!(ids, expected, "every record arrived");
    assert_eq!(endpoint.stats().busy_rejections, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hub_is_refused_when_the_sink_opens() {
    let endpoint = endpoint(&[("alerts", 2)]).await;
    let Err(error) = EventHubsSink::open("alerts", &config(&endpoint, "nowhere", "key")).await
    else {
        panic!("an unknown hub must be refused");
    };
    assert!(error.to_string().contains("nowhere"), "{error}");
}
