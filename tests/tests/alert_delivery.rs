//! Issue 15: at-least-once sinks send alerts as they are produced, not when a checkpoint flushes
//! them. Each test runs the telemetry pipeline through `weir run` on a followed file with
//! `checkpoint.interval = "60s"`, appends an anomalous reading, and checks that its alert reached
//! the destination (a Kafka topic, the Event Hubs test endpoint, a webhook receiver) while no
//! checkpoint had been saved yet; after a graceful stop (which saves the checkpoint) the alert is
//! there once.

#![allow(clippy::expect_used, reason = "tests")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_tests::WeirProcess;
use weir_tests::eventhubs::TestEndpoint;
use weir_tests::kafka::{create_topic, read_all};
use weir_tests::servers::{KafkaBroker, wait_for};
use weir_tests::telemetry::{
    BASE_TIME_MS, PipelineOptions, PipelinePaths, Reading, anomaly_pipeline, write_input,
};

/// The telemetry pipeline following `telemetry.jsonl` under `dir` (one normal reading in it),
/// its alerts going to the sink described by `alerts_sink`.
fn pipeline(dir: &Path, alerts_sink: &str) -> PipelinePaths {
    let input = dir.join("telemetry.jsonl");
    let normal = Reading::new("device-1", BASE_TIME_MS, 20.0, "normal-1");
    write_input(&input, &[normal], &[]);
    let options = PipelineOptions {
        partitions: 1,
        checkpoint_interval: "60s",
        source_extra: "follow = true".to_owned(),
        ..PipelineOptions::default()
    };
    let paths = anomaly_pipeline(dir, &input, &options);
    let text = std::fs::read_to_string(&paths.config).expect("config");
    let text = text.replace("kind = \"file\"\npath = \"alerts\"", alerts_sink);
    assert!(text.contains(alerts_sink), "{text}");
    std::fs::write(&paths.config, text).expect("config");
    paths
}

/// Whether the pipeline's checkpoint directory holds a checkpoint.
fn checkpoint_saved(paths: &PipelinePaths) -> bool {
    std::fs::read_dir(paths.checkpoints.join("telemetry")).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
    })
}

/// Starts weir, waits until it read the first reading (its row's checkpoint is not due), appends
/// a reading of 95 °C, and waits until `alerts` (the alerts at the destination) holds its alert.
/// Asserts that no checkpoint was saved before the alert arrived; returns the process and how
/// long the alert took from the append.
fn alert_arrives_before_the_checkpoint(
    paths: &PipelinePaths,
    mut alerts: impl FnMut() -> Vec<String>,
) -> (WeirProcess, Duration) {
    let mut process = WeirProcess::run(&paths.config);
    process.wait_for_start(1, Duration::from_secs(120));
    // Let the first reading through, so the hot one is read from a followed, growing file.
    std::thread::sleep(Duration::from_secs(1));
    assert!(alerts().is_empty(), "a normal reading raised an alert");
    let hot = Reading::new("device-1", BASE_TIME_MS + 1_000, 95.0, "hot-1");
    let appended = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(paths.config.with_file_name("telemetry.jsonl"))
        .and_then(|mut file| writeln!(file, "{}", hot.to_json()))
        .expect("append the hot reading");
    let mut arrived = None;
    wait_for(
        "the alert at its destination",
        Duration::from_secs(50),
        || {
            let found = alerts().iter().any(|alert| alert.contains("hot-1"));
            if found {
                arrived = Some((appended.elapsed(), checkpoint_saved(paths)));
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
            found
        },
    );
    let (took, checkpointed) = arrived.expect("arrived");
    assert!(
        !checkpointed,
        "the alert arrived only after a checkpoint was saved ({took:?} after the append); log:\n{}",
        process.log_text()
    );
    println!("alert arrived {took:?} after the append, before any checkpoint");
    (process, took)
}

/// Stops weir gracefully (its final checkpoint is saved) and checks the alert is there once.
fn stop_and_count(
    process: WeirProcess,
    paths: &PipelinePaths,
    alerts: impl FnOnce() -> Vec<String>,
) {
    process.terminate();
    let status = process.wait(Duration::from_secs(60));
    assert!(status.success(), "weir exited with {status}");
    assert!(checkpoint_saved(paths), "the stop saved a checkpoint");
    let hot: Vec<String> = alerts()
        .into_iter()
        .filter(|alert| alert.contains("hot-1"))
        .collect();
    assert_eq!(hot.len(), 1, "the alert once: {hot:?}");
}

#[test]
fn a_kafka_alert_arrives_before_the_first_checkpoint() {
    let broker = KafkaBroker::start();
    let address = broker.address();
    create_topic(&address, "alerts", 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = format!(
        "kind = \"kafka\"\nbrokers = [\"{address}\"]\ntopic = \"alerts\"\nkey_field = \"DeviceId\""
    );
    let paths = pipeline(dir.path(), &sink);
    let alerts = || {
        read_all(&address, "alerts")
            .into_iter()
            .map(|record| record.value)
            .collect::<Vec<_>>()
    };
    let (process, _) = alert_arrives_before_the_checkpoint(&paths, alerts);
    stop_and_count(process, &paths, alerts);
}

#[test]
fn an_event_hubs_alert_arrives_before_the_first_checkpoint() {
    let endpoint = TestEndpoint::start(&[("alerts", 2)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = format!(
        "kind = \"eventhubs\"\nconnection_string = \"{}\"\ncustom_endpoint = \"{}\"\npartition_by = \"key\"\nkey_field = \"DeviceId\"",
        endpoint.endpoint.connection_string("alerts"),
        endpoint.endpoint.custom_endpoint()
    );
    let paths = pipeline(dir.path(), &sink);
    let alerts = || {
        endpoint
            .events("alerts")
            .iter()
            .map(|event| String::from_utf8_lossy(&event.body()).into_owned())
            .collect::<Vec<_>>()
    };
    let (process, _) = alert_arrives_before_the_checkpoint(&paths, alerts);
    stop_and_count(process, &paths, alerts);
}

/// A webhook receiver on 127.0.0.1 that answers 200 to every request and keeps the bodies.
fn webhook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/alerts", listener.local_addr().expect("address"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let received = Arc::clone(&received);
            std::thread::spawn(move || serve(stream, &received));
        }
    });
    (url, bodies)
}

/// Answers the requests of one connection.
fn serve(stream: std::net::TcpStream, received: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        received
            .lock()
            .expect("lock")
            .push(String::from_utf8_lossy(&body).into_owned());
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}

#[test]
fn a_webhook_alert_arrives_before_the_first_checkpoint() {
    let (url, bodies) = webhook_receiver();
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = format!("kind = \"webhook\"\nurl = \"{url}\"");
    let paths = pipeline(dir.path(), &sink);
    let alerts = || bodies.lock().expect("lock").clone();
    let (process, _) = alert_arrives_before_the_checkpoint(&paths, alerts);
    stop_and_count(process, &paths, alerts);
}
