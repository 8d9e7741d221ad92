//! The telemetry pipeline reading a Kafka topic on a real Kafka-protocol broker (tansu, on
//! loopback), killed with SIGKILL while events arrive and restarted: the Delta table (read by
//! Python's deltalake) holds every event exactly once, and the alerts produced to a Kafka topic
//! are the rule's, each at least once with repeats recognisable by their id header.

use std::time::Duration;

use serde_json::Value;
use weir_tests::kafka::{
    KafkaPipeline, create_topic, produce, read_all, telemetry_records, unique_json,
};
use weir_tests::servers::KafkaBroker;
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
};
use weir_tests::{WeirProcess, read_delta, read_jsonl_dir, run_to_completion};

#[test]
fn killed_mid_stream_and_restarted_on_kafka_loses_and_duplicates_nothing_in_delta() {
    let broker = KafkaBroker::start();
    create_topic(&broker.address(), "telemetry", 4);
    create_topic(&broker.address(), "alerts", 2);
    let readings = generated_readings(40, 400, 11);
    let records = telemetry_records(&readings, 4);
    let (first, second) = records.split_at(records.len() / 2);
    produce(&broker.address(), "telemetry", first);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&broker.address(), "telemetry");
    pipeline.alerts_topic = Some("alerts".to_owned());
    let config = pipeline.write(dir.path(), "weir.toml");
    let process = WeirProcess::run(&config);
    weir_tests::wait_for_first_checkpoint(
        &dir.path().join("checkpoints/telemetry"),
        Duration::from_secs(120),
    );
    // The second half arrives while the process runs; it is killed in the middle of it.
    let address = broker.address();
    let second = second.to_vec();
    let producer = std::thread::spawn(move || {
        for chunk in second.chunks(1000) {
            produce(&address, "telemetry", chunk);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    let log_before_kill = process.log_text();
    process.kill9();
    producer.join().expect("producer");
    assert!(
        log_before_kill.contains("partition acquired"),
        "the first run owned partitions:\n{log_before_kill}"
    );

    // Restart on the same configuration, this time ending at the end of the topic. The killed
    // process's claims must expire first (2 s).
    pipeline.stop_at_end = true;
    let config = pipeline.write(dir.path(), "weir.toml");
    let log = run_to_completion(&config, Duration::from_secs(300));
    assert!(log.contains("resuming from checkpoint"), "{log}");

    // Delta: every event exactly once.
    assert_each_reading_once(
        &read_delta(&dir.path().join("delta/raw_telemetry")).rows,
        &readings,
    );

    // Alerts on Kafka: at least once; repeats carry the same id and the same payload, keyed by
    // the device.
    for record in read_all(&broker.address(), "alerts") {
        let alert: Value = serde_json::from_str(&record.value).expect("JSON alert");
        assert_eq!(
            record.key.as_deref(),
            alert["DeviceId"].as_str(),
            "the key is the DeviceId"
        );
    }
    assert_alerts_match(
        &unique_json(&broker.address(), "alerts"),
        &expected_alerts(&readings),
    );
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}
