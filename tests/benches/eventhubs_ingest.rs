//! Event Hubs ingest into Delta through the `weir` binary and the real `azure_messaging_eventhubs`
//! client, against the Event Hubs-compatible test endpoint in this process on loopback: one
//! process drains a 4-partition hub of telemetry through the anomaly plugin into a local Delta
//! table (alerts to a second hub) and ends at the hub's end; the figure is events over the
//! process's wall time, start-up included.
//!
//! Run: `cargo bench -p weir-tests --bench eventhubs_ingest` (release build).

use std::time::{Duration, Instant};

use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records};
use weir_tests::telemetry::generated_readings;
use weir_tests::{WeirProcess, read_delta};

const DEVICES: usize = 100;
const PER_DEVICE: usize = 1_000;
const PARTITIONS: u32 = 4;

fn main() {
    println!("machine: {}", machine());
    let endpoint = TestEndpoint::start(&[("bench", PARTITIONS), ("alerts", 2)]);
    let readings = generated_readings(DEVICES, PER_DEVICE, 5);
    let records = keyed_records(&readings);
    let bytes: usize = records.iter().map(|(_, v)| v.len()).sum();
    endpoint.publish_keyed("bench", &records);
    println!(
        "event hubs ingest: {} telemetry events ({:.0} bytes each on average) on {PARTITIONS} partitions",
        records.len(),
        bytes as f64 / records.len() as f64
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = EventHubsPipeline::new(&endpoint, "bench", "alerts");
    pipeline.stop_at_end = true;
    pipeline.batch_max_events = 1024;
    pipeline.checkpoint_interval = "2s".to_owned();
    let config = pipeline.write(dir.path());
    let started = Instant::now();
    let status = WeirProcess::run(&config).wait(Duration::from_secs(900));
    let elapsed = started.elapsed();
    assert!(status.success(), "weir failed");
    let rows = read_delta(&dir.path().join("delta/raw_telemetry"))
        .rows
        .len();
    assert_eq!(rows, records.len(), "every event in the table");
    println!(
        "throughput: {} events into Delta in {:.2} s: {:.0} events/s ({:.1} MB/s of JSON), 1 process, wall time including start-up, checkpoint every 2 s",
        rows,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );
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
