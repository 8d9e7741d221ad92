//! Kafka ingest into Delta, and failover time, through the `weir` binary against a tansu broker
//! on loopback:
//! 1. throughput: one process drains a 4-partition topic of telemetry through the anomaly
//!    plugin into a local Delta table (alerts to JSON Lines) and ends at the topic's end; the
//!    figure is events over the process's wall time, start-up included;
//! 2. failover: two processes share the topic through ownership claims in the local checkpoint
//!    store (expiry 3 s, renewal every 500 ms) while events arrive; one is killed with SIGKILL;
//!    the figure is the time until the other owns every partition.
//!
//! Run: `cargo bench -p weir-tests --bench kafka_ingest` (release build).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use weir_tests::kafka::{KafkaPipeline, create_topic, produce, telemetry_records};
use weir_tests::servers::{KafkaBroker, wait_for};
use weir_tests::telemetry::generated_readings;
use weir_tests::{WeirProcess, read_delta};

const DEVICES: usize = 100;
const PER_DEVICE: usize = 2_000;
const PARTITIONS: i32 = 4;
const FAILOVER_ROUNDS: usize = 3;

fn main() {
    println!("machine: {}", machine());
    let broker = KafkaBroker::start();
    create_topic(&broker.address(), "bench", PARTITIONS);
    let readings = generated_readings(DEVICES, PER_DEVICE, 5);
    let records = telemetry_records(&readings, PARTITIONS);
    let bytes: usize = records.iter().map(|(_, _, v)| v.len()).sum();
    produce(&broker.address(), "bench", &records);
    println!(
        "kafka ingest: {} telemetry events ({:.0} bytes each on average) on {PARTITIONS} partitions",
        records.len(),
        bytes as f64 / records.len() as f64
    );

    // 1. Throughput.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&broker.address(), "bench");
    pipeline.stop_at_end = true;
    pipeline.batch_max_events = 1024;
    pipeline.checkpoint_interval = "2s".to_owned();
    let config = pipeline.write(dir.path(), "weir.toml");
    let started = Instant::now();
    let status = WeirProcess::run(&config).wait(Duration::from_secs(900));
    let elapsed = started.elapsed();
    assert!(status.success(), "weir failed");
    let rows = read_delta(&dir.path().join("delta/raw_telemetry"))
        .rows
        .len();
    assert_eq!(rows, records.len(), "every event in the table");
    println!(
        "throughput: {} events into Delta in {:.2} s: {:.0} events/s ({:.1} MB/s of JSON), 1 process, wall time including start-up",
        rows,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    );

    // 2. Failover.
    let mut times = Vec::new();
    for round in 0..FAILOVER_ROUNDS {
        times.push(failover(&broker, round));
    }
    times.sort();
    println!(
        "failover: the survivor owned every partition {:.2} s (median of {FAILOVER_ROUNDS}; all: {}) after the other process was killed; ownership expiry 3 s, renewal every 500 ms",
        times[times.len() / 2].as_secs_f64(),
        times
            .iter()
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Owner per partition, from the local store's ownership files (only live claims).
fn owners(checkpoints: &Path) -> BTreeMap<String, String> {
    let dir = checkpoints.join("telemetry/ownership");
    let now = chrono::Utc::now().timestamp_millis();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let partition = name.strip_suffix(".json")?.to_owned();
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let record: serde_json::Value = serde_json::from_str(&text).ok()?;
            let owner = record["owner"].as_str()?.to_owned();
            let fresh = now - record["last_modified"].as_i64()? < 3_000;
            (fresh && !owner.is_empty()).then_some((partition, owner))
        })
        .collect()
}

fn failover(broker: &KafkaBroker, round: usize) -> Duration {
    let topic = format!("failover{round}");
    create_topic(&broker.address(), &topic, PARTITIONS);
    let readings = generated_readings(40, 200, round as u64);
    produce(
        &broker.address(),
        &topic,
        &telemetry_records(&readings, PARTITIONS),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&broker.address(), &topic);
    pipeline.checkpoint = "ownership = { expiry = \"3s\", renew_interval = \"500ms\" }".to_owned();
    let a = WeirProcess::run(&pipeline.write(dir.path(), "a.toml"));
    let b = WeirProcess::run(&pipeline.write(dir.path(), "b.toml"));
    let checkpoints = dir.path().join("checkpoints");
    let mut split = BTreeMap::new();
    wait_for("two owners", Duration::from_secs(120), || {
        split = owners(&checkpoints);
        let distinct: std::collections::BTreeSet<&String> = split.values().collect();
        split.len() == PARTITIONS as usize && distinct.len() == 2
    });
    let victim_partitions: Vec<String> = {
        let first = split.values().next().expect("an owner").clone();
        split
            .iter()
            .filter(|(_, o)| **o == first)
            .map(|(p, _)| p.clone())
            .collect()
    };
    let victim_owner = split[&victim_partitions[0]].clone();
    // Whichever process holds `victim_owner` is killed: `a` if that is the id it claims under
    // (its log also names the other's id, as the previous owner of a partition it took).
    let a_owner = weir_tests::logged_owner_id(&a.log_text());
    let (victim, survivor) = if a_owner.as_deref() == Some(victim_owner.as_str()) {
        (a, b)
    } else {
        (b, a)
    };
    victim.kill9();
    let killed = Instant::now();
    wait_for(
        "the survivor to own everything",
        Duration::from_secs(60),
        || {
            let now = owners(&checkpoints);
            now.len() == PARTITIONS as usize && now.values().all(|o| *o != victim_owner)
        },
    );
    let took = killed.elapsed();
    survivor.terminate();
    survivor.wait(Duration::from_secs(60));
    took
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
