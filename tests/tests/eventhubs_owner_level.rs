//! A reader outside Weir's claims with a higher owner level (an `EventProcessorClient` with an
//! owner level, another tool; here the real `azure_messaging_eventhubs` client) takes one
//! partition from a running `weir run`: Weir gives that partition up, checkpoints what it
//! processed, and goes on with the others. Against the Event Hubs-compatible test endpoint, which
//! enforces owner-level exclusivity as the service does.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::{
    ConsumerClient, OpenReceiverOptions, StartLocation, StartPosition,
};
use futures::StreamExt;
use serde_json::Value;
use weir::checkpoint::{CheckpointStore, LocalCheckpointStore};
use weir_tests::WeirProcess;
use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records, rows_by_event};
use weir_tests::servers::wait_for;
use weir_tests::telemetry::generated_readings;

/// The partition the other reader takes.
const TAKEN: usize = 1;
/// Its owner level.
const OWNER_LEVEL: i64 = 5;
const WAIT: Duration = Duration::from_secs(240);

fn event_id(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).expect("JSON event");
    value["EventId"].as_str().expect("EventId").to_owned()
}

#[test]
fn a_reader_with_a_higher_owner_level_takes_one_partition_and_weir_goes_on_with_the_others() {
    let readings = generated_readings(40, 60, 37);
    let records = keyed_records(&readings);
    let (first, second) = records.split_at(records.len() / 2);
    let endpoint = TestEndpoint::start(&[("telemetry", 4), ("alerts", 2)]);
    endpoint.publish_keyed("telemetry", first);
    let taken_before = endpoint
        .endpoint
        .events("telemetry", TAKEN)
        .expect("events")
        .len();
    assert!(taken_before > 0, "the first half reaches partition {TAKEN}");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = EventHubsPipeline::new(&endpoint, "telemetry", "alerts").write(dir.path());
    let mut process = WeirProcess::run(&config);
    let table = dir.path().join("delta/raw_telemetry");
    let delta_rows = || {
        if table.join("_delta_log").is_dir() {
            rows_by_event(&weir_tests::read_delta(&table).rows)
        } else {
            std::collections::BTreeMap::new()
        }
    };
    let deadline = Instant::now() + WAIT;
    while delta_rows().len() < first.len() {
        assert!(
            Instant::now() < deadline && process.is_running(),
            "the first half did not arrive; log:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The other reader: owner level 5 on one partition, from its beginning.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Weir uses ring; in this build rustls has both backends, so one must be chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read_by_other: Arc<Mutex<Vec<String>>> = Arc::default();
    let other = {
        let read = read_by_other.clone();
        let connection = endpoint.endpoint.connection_string("telemetry");
        let custom = endpoint.endpoint.custom_endpoint();
        runtime.spawn(async move {
            let client = ConsumerClient::builder()
                .with_custom_endpoint(custom)
                .open_with_connection_string(&connection, None)
                .await
                .expect("the other reader connects");
            let receiver = client
                .open_receiver_on_partition(
                    TAKEN.to_string(),
                    Some(OpenReceiverOptions {
                        owner_level: Some(OWNER_LEVEL),
                        start_position: Some(StartPosition {
                            location: StartLocation::Earliest,
                            inclusive: false,
                        }),
                        ..OpenReceiverOptions::default()
                    }),
                )
                .await
                .expect("the other reader opens");
            let mut stream = receiver.stream_events();
            while let Some(event) = stream.next().await {
                let event = event.expect("the higher owner level keeps its partition");
                let body = event.event_data().body().unwrap_or_default();
                read.lock().expect("lock").push(event_id(body));
            }
        })
    };

    wait_for("Weir to give the partition up", WAIT, || {
        weir_tests::strip_ansi(&process.log_text()).contains(&format!(
            "partition={TAKEN} reason=a reader of consumer group `$Default` with a higher owner level"
        ))
    });
    // Events that arrive now go to every partition; the three Weir still owns must all reach
    // the table.
    endpoint.publish_keyed("telemetry", second);
    let in_partition = |p: usize| -> Vec<String> {
        endpoint
            .endpoint
            .events("telemetry", p)
            .expect("events")
            .iter()
            .map(|e| event_id(&e.body()))
            .collect()
    };
    let others: BTreeSet<String> = (0..4)
        .filter(|&p| p != TAKEN)
        .flat_map(in_partition)
        .collect();
    let taken: Vec<String> = in_partition(TAKEN);
    assert!(
        taken.len() > taken_before,
        "the second half reaches partition {TAKEN} too"
    );
    let deadline = Instant::now() + WAIT;
    let rows = loop {
        let rows = delta_rows();
        if others.iter().all(|id| rows.contains_key(id)) {
            break rows;
        }
        assert!(
            Instant::now() < deadline && process.is_running(),
            "{} of the other partitions' {} events arrived; log:\n{}",
            others.iter().filter(|id| rows.contains_key(*id)).count(),
            others.len(),
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // The other reader reads the whole partition.
    wait_for("the other reader to read its partition", WAIT, || {
        read_by_other.lock().expect("lock").len() >= taken.len()
    });
    assert!(process.is_running(), "Weir keeps running");
    // Several cycles later (the expiry is 2 s), Weir still runs and has not read the partition
    // again: while the higher owner level holds it, a reader without one is refused.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        process.is_running(),
        "Weir keeps running; log:\n{}",
        process.log_text()
    );
    let log = weir_tests::strip_ansi(&process.log_text());
    process.terminate();
    let _ = process.wait(Duration::from_secs(120));
    other.abort();

    // In Weir: the taken partition's events up to where it gave the partition up (at least the
    // first half's), in order, once each, and its checkpoint right there; everything else once.
    let rows = {
        let after = delta_rows();
        assert!(after.len() >= rows.len());
        after
    };
    let weir_taken: Vec<&String> = taken.iter().filter(|id| rows.contains_key(*id)).collect();
    assert!(
        weir_taken.len() >= taken_before,
        "Weir processed the first half of partition {TAKEN} before it was taken"
    );
    let prefix: Vec<&String> = taken.iter().take(weir_taken.len()).collect();
    assert_eq!(weir_taken, prefix, "a prefix of the partition, no gap");
    assert_eq!(
        rows.len(),
        others.len() + weir_taken.len(),
        "nothing else in the table"
    );
    let checkpoints = LocalCheckpointStore::new(dir.path().join("checkpoints"));
    let checkpoint = runtime
        .block_on(checkpoints.load("telemetry", TAKEN as u32))
        .expect("checkpoint")
        .expect("partition checkpointed");
    assert_eq!(
        checkpoint.position,
        Some(weir_taken.len() as u64 - 1),
        "the checkpoint covers what was processed, no more"
    );
    // Nothing lost: the other reader has the partition from its start.
    let read_by_other = read_by_other.lock().expect("lock").clone();
    assert_eq!(read_by_other, taken, "the other reader read the partition");
    // The warning names the partition and the new owner level.
    assert!(
        log.contains(&format!(
            "partition={TAKEN} new_owner_level=Some({OWNER_LEVEL})"
        )),
        "{log}"
    );
    assert!(
        !log.contains("partition worker failed"),
        "no worker failed:\n{log}"
    );
}
