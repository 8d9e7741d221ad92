//! Event Hubs ingest into Delta through the `weir` binary and the real `azure_messaging_eventhubs`
//! client, against the Event Hubs-compatible test endpoint in this process on loopback: one
//! process drains a 4-partition hub of telemetry through the anomaly plugin into a local Delta
//! table (alerts to a second hub) and ends at the hub's end; the figure is events over the
//! process's wall time, start-up included.
//!
//! To tell the components apart (issue 15), it also drains the same hub with the real client
//! alone (in this process, one connection and receiver per partition, as Weir opens them, no
//! Weir), and runs Weir with a larger `prefetch` (the AMQP link credit per partition).
//!
//! Run: `cargo bench -p weir-tests --bench eventhubs_ingest` (release build);
//! `WEIR_BENCH_EVENTS=1000000` drains a million events instead of 100,000.

use std::time::{Duration, Instant};

use azure_messaging_eventhubs::{
    ConsumerClient, OpenReceiverOptions, StartLocation, StartPosition,
};
use futures::StreamExt;

use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records};
use weir_tests::telemetry::generated_readings;
use weir_tests::{WeirProcess, children_cpu_seconds, read_delta, thread_cpu_seconds};

const DEVICES: usize = 100;
/// Readings per device: 1,000 (100,000 events) unless `WEIR_BENCH_EVENTS` asks for more, so that
/// start-up weighs less in a profile.
fn per_device() -> usize {
    std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(1_000, |events| (events / DEVICES).max(1))
}
const PARTITIONS: u32 = 4;

fn main() {
    println!("machine: {}", machine());
    let endpoint = TestEndpoint::start(&[("bench", PARTITIONS), ("alerts", 2)]);
    let readings = generated_readings(DEVICES, per_device(), 5);
    let records = keyed_records(&readings);
    let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
    endpoint.publish_keyed("bench", &records);
    println!(
        "event hubs ingest: {} telemetry events ({:.0} bytes each on average) on {PARTITIONS} partitions",
        records.len(),
        bytes as f64 / records.len() as f64
    );

    println!("load average: {}", load_average());
    for prefetch in [300, 3000] {
        client_alone(&endpoint, records.len(), prefetch);
    }
    for prefetch in [300, 3000] {
        println!("load average: {}", load_average());
        weir_run(&endpoint, records.len(), bytes, prefetch);
    }
    println!("load average at end: {}", load_average());
}

/// Weir drains the hub into Delta, alerts to the second hub.
fn weir_run(endpoint: &TestEndpoint, events: usize, bytes: usize, prefetch: u32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = EventHubsPipeline::new(endpoint, "bench", "alerts");
    pipeline.stop_at_end = true;
    pipeline.batch_max_events = 1024;
    pipeline.checkpoint_interval = "2s".to_owned();
    let config = pipeline.write(dir.path());
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace("prefetch = 300", &format!("prefetch = {prefetch}"));
    std::fs::write(&config, text).expect("config");
    let (weir_before, endpoint_before) =
        (children_cpu_seconds(), thread_cpu_seconds("eh-endpoint"));
    let started = Instant::now();
    let status = WeirProcess::run(&config).wait(Duration::from_secs(900));
    let elapsed = started.elapsed();
    let weir_cpu = children_cpu_seconds() - weir_before;
    let endpoint_cpu = thread_cpu_seconds("eh-endpoint") - endpoint_before;
    assert!(status.success(), "weir failed");
    let rows = read_delta(&dir.path().join("delta/raw_telemetry"))
        .rows
        .len();
    assert_eq!(rows, events, "every event in the table");
    println!(
        "throughput: {} events into Delta in {:.2} s: {:.0} events/s ({:.1} MB/s of JSON), 1 process, wall time including start-up, checkpoint every 2 s, prefetch {prefetch}",
        rows,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "  CPU: {}, {} (it also takes the alerts)",
        cpu_share("weir", weir_cpu, events, elapsed),
        cpu_share("the test endpoint", endpoint_cpu, events, elapsed)
    );
}

/// The real client alone drains every partition of the hub (one connection and receiver each,
/// on a 2-thread runtime in this process); prints events/s from opening to the last event.
fn client_alone(endpoint: &TestEndpoint, events: usize, prefetch: u32) {
    // Weir uses ring; in this build rustls has both backends, so one must be chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("eh-client")
        .enable_all()
        .build()
        .expect("runtime");
    let connection = endpoint.endpoint.connection_string("bench");
    let custom = endpoint.endpoint.custom_endpoint();
    let counts: Vec<usize> = (0..PARTITIONS as usize)
        .map(|p| {
            let state = endpoint
                .endpoint
                .partition_state("bench", p)
                .expect("partition");
            (state.last_sequence_number + 1) as usize
        })
        .collect();
    let (client_before, endpoint_before) = (
        thread_cpu_seconds("eh-client"),
        thread_cpu_seconds("eh-endpoint"),
    );
    let started = Instant::now();
    let received: usize = runtime.block_on(async {
        let readers = counts.iter().enumerate().map(|(partition, &count)| {
            let (connection, custom) = (connection.clone(), custom.clone());
            async move {
                let client = ConsumerClient::builder()
                    .with_custom_endpoint(custom)
                    .open_with_connection_string(&connection, None)
                    .await
                    .expect("client");
                let receiver = client
                    .open_receiver_on_partition(
                        partition.to_string(),
                        Some(OpenReceiverOptions {
                            prefetch: Some(prefetch),
                            start_position: Some(StartPosition {
                                location: StartLocation::Earliest,
                                inclusive: true,
                            }),
                            ..OpenReceiverOptions::default()
                        }),
                    )
                    .await
                    .expect("receiver");
                let mut stream = receiver.stream_events();
                let mut seen = 0;
                while seen < count {
                    match stream.next().await {
                        Some(Ok(_)) => seen += 1,
                        _ => break,
                    }
                }
                seen
            }
        });
        tokio::spawn(futures::future::join_all(readers))
            .await
            .expect("readers")
            .into_iter()
            .sum()
    });
    let elapsed = started.elapsed();
    let client_cpu = thread_cpu_seconds("eh-client") - client_before;
    let endpoint_cpu = thread_cpu_seconds("eh-endpoint") - endpoint_before;
    assert_eq!(received, events, "the client read every event");
    println!(
        "client alone (azure_messaging_eventhubs, no Weir): {received} events in {:.2} s: {:.0} events/s, prefetch {prefetch}, {PARTITIONS} receivers",
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  CPU: {}, {}",
        cpu_share("the client", client_cpu, received, elapsed),
        cpu_share("the test endpoint", endpoint_cpu, received, elapsed)
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// A part's CPU as printed: `cpu` seconds for `events` events in `elapsed`.
fn cpu_share(part: &str, cpu: f64, events: usize, elapsed: Duration) -> String {
    format!(
        "{part} {cpu:.2} s ({:.1} us per event, {:.2} cores)",
        cpu * 1e6 / events as f64,
        cpu / elapsed.as_secs_f64()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

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
