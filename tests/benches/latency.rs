//! Event → alert latency through the `weir` binary (issue 15): telemetry offered at a steady
//! 100,000 events/s to an input (a 2-partition Kafka topic on a tansu broker on loopback, then a
//! 2-partition hub of the Event Hubs test endpoint in this process), the anomaly plugin, the raw
//! Delta table committing every 5 s (the checkpoint interval), and the alerts produced to a Kafka
//! topic (to a second hub). About one reading in 500 is hot and raises an alert, as does the
//! device's next reading; each reading's `EventId` carries the producer's timestamp (µs since
//! the epoch, taken just before its batch is handed to the client), and a consumer polling the
//! alerts notes when each alert arrives. The figures are p50/p99/p999/max of receipt − producer
//! timestamp over the alerts of the measured window (after a warm-up).
//!
//! For Kafka, a probe topic measures the floor: one small record per tick produced and consumed
//! by the same clients, not through Weir.
//!
//! Run: `cargo bench -p weir-tests --bench latency` (release build).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use weir_tests::WeirProcess;
use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint};
use weir_tests::kafka::{KafkaPipeline, create_topic};
use weir_tests::servers::KafkaBroker;
use weir_tests::telemetry::Reading;

/// Offered events per second (`LATENCY_RATE` overrides it, to try the benchmark out on a debug
/// build).
fn rate() -> f64 {
    env_number("LATENCY_RATE").unwrap_or(100_000.0)
}
/// Not measured: start-up of the flow, first Delta commits.
const WARMUP: Duration = Duration::from_secs(5);
/// Measured (`LATENCY_SECONDS` overrides it).
fn measured_for() -> Duration {
    Duration::from_secs_f64(env_number("LATENCY_SECONDS").unwrap_or(30.0))
}

fn env_number(name: &str) -> Option<f64> {
    std::env::var(name).ok()?.parse().ok()
}
const PARTITIONS: usize = 2;
const DEVICES: u64 = 1_000;
/// One reading in this many is hot (95 °C).
const HOT_EVERY: u64 = 500;

fn main() {
    println!("machine: {}", machine());
    println!("load average at start: {}", load_average());
    kafka();
    println!("load average: {}", load_average());
    eventhubs("partition");
    println!("load average: {}", load_average());
    eventhubs("key");
    println!("load average at end: {}", load_average());
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Readings with the producer's timestamp in their `EventId` (`<seq>@<µs>`).
struct Generator {
    seq: u64,
}

impl Generator {
    /// `count` readings, as `(input partition, JSON)`.
    fn batch(&mut self, count: usize, stamp: u64) -> Vec<(usize, String)> {
        let time_ms = (stamp / 1000) as i64;
        (0..count)
            .map(|_| {
                self.seq += 1;
                let device = self.seq % DEVICES;
                let temperature = if self.seq.is_multiple_of(HOT_EVERY) {
                    95.0
                } else {
                    20.0 + (self.seq % 7) as f64 * 0.1
                };
                let id = format!("{}@{stamp}", self.seq);
                let reading = Reading::new(&format!("device-{device}"), time_ms, temperature, &id);
                (device as usize % PARTITIONS, reading.to_json())
            })
            .collect()
    }
}

/// Where the readings go.
trait Offer {
    fn offer(&mut self, batch: Vec<(usize, String)>, stamp: u64);
}

/// Where the alerts are read back: the JSON bodies that arrived since the last poll.
trait Poll {
    fn poll(&mut self) -> Vec<String>;
}

/// Latencies in µs, and how many events were offered.
struct Measured {
    alerts: Vec<u64>,
    probes: Vec<u64>,
    offered: u64,
    offered_for: Duration,
    duplicates: usize,
}

/// Offers readings at [`rate`] for [`WARMUP`] + [`measured_for`] and collects the alerts' latencies
/// (those of readings offered after the warm-up).
fn measure(
    offer: impl FnOnce() -> Box<dyn Offer> + Send + 'static,
    poll: impl FnOnce() -> Box<dyn Poll> + Send + 'static,
) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let measured_from = micros_now() + WARMUP.as_micros() as u64;
    let producer = std::thread::spawn(move || {
        let mut offer = offer();
        let mut generator = Generator { seq: 0 };
        let mut sent = 0u64;
        let begin = Instant::now();
        let (rate, measure) = (rate(), measured_for());
        while begin.elapsed() < WARMUP + measure {
            let due = (begin.elapsed().as_secs_f64() * rate) as u64;
            if due <= sent {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // At most 20 ms of events at once, so that a slow offer does not turn into bursts.
            let count = (due - sent).min((rate / 50.0).max(1.0) as u64) as usize;
            let stamp = micros_now();
            offer.offer(generator.batch(count, stamp), stamp);
            sent += count as u64;
        }
        (sent, begin.elapsed())
    });
    let consumer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut poll = poll();
            let mut seen = std::collections::HashSet::new();
            let (mut alerts, mut probes, mut duplicates) = (Vec::new(), Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                let arrived = poll.poll();
                let now = micros_now();
                if arrived.is_empty() {
                    std::thread::sleep(Duration::from_micros(500));
                }
                for body in arrived {
                    if let Some(stamp) = body.strip_prefix("probe@") {
                        if let Ok(stamp) = stamp.parse::<u64>()
                            && stamp >= measured_from
                        {
                            probes.push(now.saturating_sub(stamp));
                        }
                        continue;
                    }
                    let Some((seq, stamp)) = event_id(&body) else {
                        continue;
                    };
                    if !seen.insert(seq) {
                        duplicates += 1;
                    } else if stamp >= measured_from {
                        alerts.push(now.saturating_sub(stamp));
                    }
                }
            }
            (alerts, probes, duplicates)
        })
    };
    let (offered, offered_for) = producer.join().expect("producer");
    // The last alerts' tail.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (alerts, probes, duplicates) = consumer.join().expect("consumer");
    let _ = started;
    Measured {
        alerts,
        probes,
        offered,
        offered_for,
        duplicates,
    }
}

/// The `(seq, producer µs)` of an alert's `EventId`.
fn event_id(body: &str) -> Option<(u64, u64)> {
    let alert: serde_json::Value = serde_json::from_str(body).ok()?;
    let (seq, stamp) = alert["EventId"].as_str()?.split_once('@')?;
    Some((seq.parse().ok()?, stamp.parse().ok()?))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

fn summary(latencies: &mut [u64]) -> String {
    latencies.sort_unstable();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms, max {:.1} ms over {} alerts",
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        percentile(latencies, 0.999),
        latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        latencies.len()
    )
}

/// Starts `weir run`, logging each checkpoint's duration (the Delta commit included).
fn start(config: &std::path::Path) -> WeirProcess {
    let log = "info,weir::pipeline::worker=debug,deltalake=warn,deltalake_core=warn,\
        deltalake_core::kernel::transaction=off,buoyant_kernel=warn,azure_messaging_eventhubs=warn,\
        azure_core_amqp=warn,fe2o3_amqp=off";
    WeirProcess::spawn_with_env(&["run", "--config"], config, &[("WEIR_LOG", log)])
}

/// The checkpoints `process` logged, in ms: how long each took from its start to its saved record
/// (the Delta commit and the alerts' acknowledgements included), and how long its partition
/// paused for it (taking the state and starting the flushes; the rest runs beside the partition).
fn checkpoint_durations(process: &WeirProcess) -> String {
    let log = weir_tests::strip_ansi(&process.log_text());
    let field = |line: &str, name: &str| -> Option<u64> {
        let (_, rest) = line.split_once(name)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let saved: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("checkpoint saved"))
        .collect();
    let sorted = |name: &str| {
        let mut values: Vec<u64> = saved.iter().filter_map(|l| field(l, name)).collect();
        values.sort_unstable();
        values
    };
    let (durations, pauses) = (sorted("elapsed_ms="), sorted("paused_ms="));
    let at = |values: &[u64], p: f64| {
        values
            .get(((values.len() as f64 * p) as usize).min(values.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    format!(
        "{} checkpoints (each partition's): start to saved record (the Delta commit and the alerts' acknowledgements included) p50 {} ms, max {} ms; the partition paused p50 {} ms, max {} ms",
        durations.len(),
        at(&durations, 0.5),
        durations.last().copied().unwrap_or(0),
        at(&pauses, 0.5),
        pauses.last().copied().unwrap_or(0)
    )
}

fn report(name: &str, mut measured: Measured, delta_commits: usize) {
    println!(
        "latency, {name}: offered {:.0} events/s ({} events in {:.1} s; goal {:.0}), {} Delta commits of the raw table; event -> alert {}; duplicates {}",
        measured.offered as f64 / measured.offered_for.as_secs_f64(),
        measured.offered,
        measured.offered_for.as_secs_f64(),
        rate(),
        delta_commits,
        summary(&mut measured.alerts),
        measured.duplicates
    );
    if !measured.probes.is_empty() {
        println!(
            "latency, {name}: floor (probe record through the broker, not through Weir): {}",
            summary(&mut measured.probes).replace("alerts", "probes")
        );
    }
}

fn delta_commits(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("delta/raw_telemetry/_delta_log")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn partition_clients(client: &Client, topic: &str, count: usize) -> Vec<PartitionClient> {
    let mut clients = Vec::new();
    for partition in 0..count {
        clients.push(
            client
                .partition_client(topic, partition as i32, UnknownTopicHandling::Retry)
                .await
                .expect("partition client"),
        );
    }
    clients
}

struct KafkaOffer {
    runtime: tokio::runtime::Runtime,
    inputs: Vec<PartitionClient>,
    probe: PartitionClient,
}

fn record(value: String) -> Record {
    Record {
        key: None,
        value: Some(value.into_bytes()),
        headers: Default::default(),
        timestamp: chrono::Utc::now(),
    }
}

impl Offer for KafkaOffer {
    fn offer(&mut self, batch: Vec<(usize, String)>, stamp: u64) {
        let mut by_partition: Vec<Vec<Record>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
        for (partition, json) in batch {
            by_partition[partition].push(record(json));
        }
        self.runtime.block_on(async {
            let produces = self
                .inputs
                .iter()
                .zip(by_partition)
                .filter(|(_, records)| !records.is_empty())
                .map(|(client, records)| client.produce(records, Compression::NoCompression));
            for result in futures::future::join_all(produces).await {
                result.expect("produce");
            }
            self.probe
                .produce(
                    vec![record(format!("probe@{stamp}"))],
                    Compression::NoCompression,
                )
                .await
                .expect("probe");
        });
    }
}

struct KafkaPoll {
    runtime: tokio::runtime::Runtime,
    /// Alerts and probe partitions, with the next offset of each.
    partitions: Vec<(PartitionClient, i64)>,
}

impl Poll for KafkaPoll {
    fn poll(&mut self) -> Vec<String> {
        self.runtime.block_on(async {
            let fetches = self
                .partitions
                .iter()
                .map(|(client, offset)| client.fetch_records(*offset, 1..10_000_000, 5));
            let results = futures::future::join_all(fetches).await;
            let mut out = Vec::new();
            for ((_, next), result) in self.partitions.iter_mut().zip(results) {
                let Ok((records, _)) = result else { continue };
                for record in records {
                    if record.offset < *next {
                        continue;
                    }
                    *next = record.offset + 1;
                    let value = record.record.value.unwrap_or_default();
                    out.push(String::from_utf8_lossy(&value).into_owned());
                }
            }
            out
        })
    }
}

fn kafka() {
    let broker = KafkaBroker::start();
    let address = broker.address();
    create_topic(&address, "telemetry", PARTITIONS as i32);
    create_topic(&address, "alerts", PARTITIONS as i32);
    create_topic(&address, "probe", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&address, "telemetry");
    pipeline.alerts_topic = Some("alerts".to_owned());
    pipeline.batch_max_events = 1024;
    pipeline.checkpoint_interval = "5s".to_owned();
    let config = pipeline.write(dir.path(), "weir.toml");
    let mut process = start(&config);
    process.wait_for_start(1, Duration::from_secs(300));

    let offer_address = address.clone();
    let offer = move || -> Box<dyn Offer> {
        let runtime = runtime();
        let (inputs, probe) = runtime.block_on(async {
            let client = ClientBuilder::new(vec![offer_address])
                .build()
                .await
                .expect("client");
            let inputs = partition_clients(&client, "telemetry", PARTITIONS).await;
            let mut probe = partition_clients(&client, "probe", 1).await;
            (inputs, probe.remove(0))
        });
        Box::new(KafkaOffer {
            runtime,
            inputs,
            probe,
        })
    };
    let poll_address = address.clone();
    let poll = move || -> Box<dyn Poll> {
        let runtime = runtime();
        let partitions = runtime.block_on(async {
            let client = ClientBuilder::new(vec![poll_address])
                .build()
                .await
                .expect("client");
            let mut all = partition_clients(&client, "alerts", PARTITIONS).await;
            all.extend(partition_clients(&client, "probe", 1).await);
            all.into_iter().map(|c| (c, 0)).collect()
        });
        Box::new(KafkaPoll {
            runtime,
            partitions,
        })
    };
    let measured = measure(offer, poll);
    println!("{}", checkpoint_durations(&process));
    process.kill9();
    report(
        "Kafka in -> anomaly -> Kafka out + raw Delta every 5 s",
        measured,
        delta_commits(dir.path()),
    );
}

struct HubOffer(Arc<TestEndpoint>);

impl Offer for HubOffer {
    fn offer(&mut self, batch: Vec<(usize, String)>, _stamp: u64) {
        let mut by_partition: Vec<Vec<String>> = (0..PARTITIONS).map(|_| Vec::new()).collect();
        for (partition, json) in batch {
            by_partition[partition].push(json);
        }
        for (partition, bodies) in by_partition.iter().enumerate() {
            self.0.publish_to_partition("telemetry", partition, bodies);
        }
    }
}

struct HubPoll {
    endpoint: Arc<TestEndpoint>,
    next: Vec<usize>,
}

impl Poll for HubPoll {
    fn poll(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (partition, next) in self.next.iter_mut().enumerate() {
            let events = self
                .endpoint
                .endpoint
                .events_from("alerts", partition, *next, 10_000)
                .expect("alerts");
            *next += events.len();
            out.extend(
                events
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.body()).into_owned()),
            );
        }
        out
    }
}

/// The Event Hubs run, the alerts sent by `routing` (`partition`: one batch per writer and
/// round; `key`: one batch per device key, as the README's architecture does).
fn eventhubs(routing: &str) {
    let endpoint = Arc::new(TestEndpoint::start(&[
        ("telemetry", PARTITIONS as u32),
        ("alerts", PARTITIONS as u32),
    ]));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = EventHubsPipeline::new(&endpoint, "telemetry", "alerts");
    pipeline.batch_max_events = 1024;
    pipeline.checkpoint_interval = "5s".to_owned();
    let config = pipeline.write(dir.path());
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        "partition_by = \"key\"",
        &format!("partition_by = \"{routing}\""),
    );
    std::fs::write(&config, text).expect("config");
    let mut process = start(&config);
    process.wait_for_start(1, Duration::from_secs(300));
    let offer_endpoint = Arc::clone(&endpoint);
    let poll_endpoint = Arc::clone(&endpoint);
    let measured = measure(
        move || Box::new(HubOffer(offer_endpoint)),
        move || {
            Box::new(HubPoll {
                endpoint: poll_endpoint,
                next: vec![0; PARTITIONS],
            })
        },
    );
    // A sink that fell behind would make a graceful stop wait for it: the figures are taken.
    println!("{}", checkpoint_durations(&process));
    process.kill9();
    report(
        &format!(
            "Event Hubs test endpoint in -> anomaly -> hub out (partition_by = \"{routing}\") + raw Delta every 5 s (events published and read in the endpoint's process)"
        ),
        measured,
        delta_commits(dir.path()),
    );
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
