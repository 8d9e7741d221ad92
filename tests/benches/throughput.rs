//! Throughput of `weir run` end to end: the release binary, a configuration file, start-up
//! included, on at least a million generated telemetry events of about 250 bytes (a JSON Lines
//! file generated once and kept under `<target>/bench-data/`).
//!
//! Pipelines (2 partitions, batches of 1,024, checkpoint every 5 s):
//! 1. `anomaly-delta`: the anomaly plugin → raw Delta table + alerts as JSON Lines;
//! 2. `passthrough-jsonl`: the pass-through plugin → JSON Lines;
//! 3. `aggregates-delta`: the 5-minute aggregates window stage over 10,000 devices → Delta;
//! 4. `kafka-anomaly-delta`: a 2-partition topic of the tansu broker on loopback → the anomaly
//!    plugin → Delta (the broker's own CPU is not counted).
//!
//! Each prints events/s over the process's wall time and events per CPU-second (user + system
//! time of the `weir` process, from the kernel's accounting of reaped children), best of
//! `WEIR_BENCH_ROUNDS` rounds (default 3) with every round listed, after checking what the sinks
//! hold. Knobs: `WEIR_BENCH_EVENTS` (default 1,000,000), `WEIR_BENCH_ONLY` (a comma-separated
//! list of the names above), `WEIR_BENCH_BINARY` (another `weir` binary, to compare builds on
//! the same machine in the same minutes; several separated by commas are run in turn, round by
//! round; `PATH=PLUGIN_DIR` runs that binary with the plugins of `PLUGIN_DIR`, for a build of
//! another version of the plugin contract), `WEIR_BENCH_PLUGIN_DIR` (where the `.wasm` plugins
//! are, instead of this build's).
//!
//! Run: `scripts/bench` (all of issue 15's benchmarks) or
//! `cargo bench -p weir-tests --bench throughput` (release build).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a failure is the benchmark's failure"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_tests::kafka::{KafkaPipeline, create_topic, produce};
use weir_tests::servers::KafkaBroker;
use weir_tests::telemetry::{RAW_TELEMETRY_COLUMNS, Reading, ordered_readings};
use weir_tests::{children_cpu_seconds, plugin_path, python_command, weir_binary};

/// Devices of the generated input (the aggregates' 10,000 groups).
const DEVICES: usize = 10_000;
/// Partitions of every pipeline's input.
const PARTITIONS: u32 = 2;
/// Events per batch.
const BATCH: usize = 1024;

fn main() {
    let events: usize = env_number("WEIR_BENCH_EVENTS", 1_000_000);
    let rounds: usize = env_number("WEIR_BENCH_ROUNDS", 3).max(1);
    let only = std::env::var("WEIR_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let binaries = binaries();
    let input = input_file(events);
    let bytes = std::fs::metadata(&input).expect("input").len();
    println!(
        "throughput: {events} telemetry events ({:.0} bytes each on average, {DEVICES} devices) from {}; {PARTITIONS} partitions, batches of {BATCH}, checkpoint every 5 s; best of {rounds} rounds, wall time including start-up",
        bytes as f64 / events as f64 - 1.0,
        input.display()
    );
    for binary in &binaries {
        match &binary.plugin_dir {
            Some(plugins) => println!(
                "  binary: {} (plugins from {})",
                binary.path.display(),
                plugins.display()
            ),
            None => println!("  binary: {}", binary.path.display()),
        }
    }
    let file_pipelines: [(&str, Pipeline); 3] = [
        ("anomaly-delta", Pipeline::AnomalyDelta),
        ("passthrough-jsonl", Pipeline::PassthroughJsonl),
        ("aggregates-delta", Pipeline::AggregatesDelta),
    ];
    for (name, pipeline) in file_pipelines {
        if wanted(name) {
            measure(name, &binaries, rounds, events, |dir| {
                pipeline.write(dir, &input)
            });
        }
    }
    if wanted("kafka-anomaly-delta") {
        let broker = KafkaBroker::start();
        create_topic(&broker.address(), "bench", PARTITIONS as i32);
        let started = Instant::now();
        produce(&broker.address(), "bench", &kafka_records(&input));
        println!(
            "  (produced {events} records to the broker in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
        measure("kafka-anomaly-delta", &binaries, rounds, events, |dir| {
            let mut pipeline = KafkaPipeline::new(&broker.address(), "bench");
            pipeline.stop_at_end = true;
            pipeline.batch_max_events = BATCH;
            pipeline.checkpoint_interval = "5s".to_owned();
            let config = pipeline.write(dir, "weir.toml");
            let text = std::fs::read_to_string(&config).expect("read config");
            let built = plugin_path("telemetry_anomaly").display().to_string();
            let chosen = plugin("telemetry_anomaly").display().to_string();
            std::fs::write(&config, text.replace(&built, &chosen)).expect("write config");
            (config, Check::DeltaRows("delta/raw_telemetry"))
        });
    }
}

/// Runs one pipeline `rounds` times with each binary and prints the figures.
fn measure(
    name: &str,
    binaries: &[Binary],
    rounds: usize,
    events: usize,
    write: impl Fn(&Path) -> (PathBuf, Check),
) {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); binaries.len()];
    for _ in 0..rounds {
        for (index, binary) in binaries.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let (config, check) = write(dir.path());
            if let Some(plugins) = &binary.plugin_dir {
                repoint_plugins(&config, plugins);
            }
            let run = run_weir(&binary.path, &config, events);
            check.verify(dir.path(), events);
            runs[index].push(run);
        }
    }
    for (index, runs) in runs.iter().enumerate() {
        let best = runs
            .iter()
            .max_by(|a, b| a.per_second().total_cmp(&b.per_second()))
            .expect("a run");
        let all: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.per_second()))
            .collect();
        let label = match binaries.len() {
            1 => name.to_owned(),
            _ => format!("{name} [binary {}]", index + 1),
        };
        println!(
            "{label}: {:.0} events/s, {:.0} events per CPU-second ({:.2} s wall, {:.2} s CPU; all rounds, events/s: {}; load average {})",
            best.per_second(),
            best.per_cpu_second(),
            best.wall.as_secs_f64(),
            best.cpu,
            all.join(", "),
            best.load
        );
    }
}

/// One run: wall time, CPU seconds and the load average when it ended.
#[derive(Debug, Clone)]
struct Run {
    events: usize,
    wall: Duration,
    cpu: f64,
    load: String,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }

    fn per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu.max(1e-3)
    }
}

/// Runs `weir run --config <config>` to its end; its CPU time comes from the kernel's account of
/// this process's reaped children, read before and after.
fn run_weir(binary: &Path, config: &Path, events: usize) -> Run {
    let log = config.with_extension("log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let status = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::from(log_file.try_clone().expect("log file")))
        .stderr(Stdio::from(log_file))
        .status()
        .expect("start weir");
    let wall = started.elapsed();
    let cpu = children_cpu_seconds() - cpu_before;
    assert!(
        status.success(),
        "weir failed ({status}); log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Run {
        events,
        wall,
        cpu,
        load: load_average(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What a run must have written.
enum Check {
    /// The Delta table at this path (relative to the run's directory) holds every event.
    DeltaRows(&'static str),
    /// The JSON Lines files under this directory hold every event.
    JsonLines(&'static str),
    /// The aggregates table counts every event once at most, and some.
    Aggregates(&'static str),
}

impl Check {
    fn verify(&self, dir: &Path, events: usize) {
        match self {
            Check::DeltaRows(table) => {
                let rows = delta_scalar(&dir.join(table), "t.num_rows");
                assert_eq!(rows, events as u64, "every event in {table}");
            }
            Check::JsonLines(folder) => {
                let mut lines = 0;
                for entry in std::fs::read_dir(dir.join(folder)).expect("output dir") {
                    let text = std::fs::read(entry.expect("entry").path()).expect("read output");
                    lines += text.iter().filter(|b| **b == b'\n').count();
                }
                assert_eq!(lines, events, "every event in {folder}");
            }
            Check::Aggregates(table) => {
                let counted = delta_scalar(
                    &dir.join(table),
                    "pc.sum(t.column('EventCount')).as_py() or 0",
                );
                assert!(
                    counted > 0 && counted <= events as u64,
                    "the aggregates count {counted} of {events} events"
                );
            }
        }
    }
}

/// `expression` over the Delta table at `path` read as a pyarrow table `t` (an integer).
fn delta_scalar(path: &Path, expression: &str) -> u64 {
    let script = format!(
        "import sys\nimport pyarrow.compute as pc\nfrom deltalake import DeltaTable\nt = DeltaTable(sys.argv[1]).to_pyarrow_table()\nprint(int({expression}))"
    );
    let output = python_command(&script)
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a number")
}

/// The file pipelines.
#[derive(Debug, Clone, Copy)]
enum Pipeline {
    AnomalyDelta,
    PassthroughJsonl,
    AggregatesDelta,
}

impl Pipeline {
    /// Writes the configuration under `dir` and says what to check.
    fn write(self, dir: &Path, input: &Path) -> (PathBuf, Check) {
        let mut config = format!(
            r#"
[checkpoint]
dir = "checkpoints"
interval = "5s"

[sources.telemetry]
kind = "file"
path = "{input}"
partitions = {PARTITIONS}
key_field = "DeviceId"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.telemetry]
source = "telemetry"
event_time = {{ field = "Timestamp" }}
dead_letter = "dead_letters"
batch = {{ max_events = {BATCH}, max_wait = "20ms" }}
"#,
            input = input.display()
        );
        let check = match self {
            Pipeline::AnomalyDelta => {
                write!(
                    config,
                    r#"
[[pipelines.telemetry.stages]]
name = "anomaly"
plugin = "{plugin}"
outputs = {{ alerts = "alerts", rows = "raw_telemetry" }}

[sinks.alerts]
kind = "file"
path = "alerts"

[sinks.raw_telemetry]
kind = "delta"
path = "delta/raw_telemetry"
partition_by = ["EventDate"]
{RAW_TELEMETRY_COLUMNS}
"#,
                    plugin = plugin("telemetry_anomaly").display()
                )
                .expect("format");
                Check::DeltaRows("delta/raw_telemetry")
            }
            Pipeline::PassthroughJsonl => {
                write!(
                    config,
                    r#"
[[pipelines.telemetry.stages]]
name = "passthrough"
plugin = "{plugin}"
outputs = {{ out = "copy" }}

[sinks.copy]
kind = "file"
path = "copy"
"#,
                    plugin = plugin("passthrough").display()
                )
                .expect("format");
                Check::JsonLines("copy")
            }
            Pipeline::AggregatesDelta => {
                write!(
                    config,
                    r#"
[[pipelines.telemetry.stages]]
name = "aggregates"
plugin = "{plugin}"
window = {{ type = "tumbling", size = "5m", group_by = ["DeviceId", "Location", "DeviceType"], semantics = "stream_analytics" }}
outputs = {{ rows = "aggregated_metrics" }}

[sinks.aggregated_metrics]
kind = "delta"
path = "delta/aggregated_metrics"
partition_by = ["WindowEndDate"]
columns = [
  {{ name = "DeviceId", type = "string", nullable = false }},
  {{ name = "Location", type = "string" }},
  {{ name = "DeviceType", type = "string" }},
  {{ name = "EventCount", type = "long" }},
  {{ name = "AvgTemperature", type = "double" }},
  {{ name = "MinTemperature", type = "double" }},
  {{ name = "MaxTemperature", type = "double" }},
  {{ name = "AvgHumidity", type = "double" }},
  {{ name = "AvgPressure", type = "double" }},
  {{ name = "WindowStart", type = "timestamp", nullable = false }},
  {{ name = "WindowEnd", type = "timestamp", nullable = false }},
  {{ name = "WindowEndDate", type = "date", from = "WindowEnd" }},
]
"#,
                    plugin = plugin("telemetry_aggregates").display()
                )
                .expect("format");
                Check::Aggregates("delta/aggregated_metrics")
            }
        };
        let path = dir.join("weir.toml");
        std::fs::write(&path, config).expect("write config");
        (path, check)
    }
}

/// The input of `events` readings of [`DEVICES`] devices in event-time order, generated once
/// into `<target>/bench-data/` and reused.
fn input_file(events: usize) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Benchmarks live in <target>/<profile>/deps.
    let target = exe.ancestors().nth(3).expect("target layout");
    let dir = target.join("bench-data");
    // `ordered-` since the readings of a step stopped overlapping the next step's (before, with
    // 10,000 devices, 97% of the events were behind the watermark): a file of the old generator
    // is not reused.
    let path = dir.join(format!("telemetry-ordered-{events}.jsonl"));
    if path.is_file() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("bench-data dir");
    let started = Instant::now();
    // About 85% of the devices read at each step (some fall silent for 6 minutes).
    let steps = events.div_ceil(DEVICES) * 100 / 80 + 1;
    let readings: Vec<Reading> = ordered_readings(DEVICES, steps, 7);
    assert!(readings.len() >= events, "not enough readings generated");
    let mut text = String::with_capacity(events * 260);
    for reading in &readings[..events] {
        text.push_str(&reading.to_json());
        text.push('\n');
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).expect("write input");
    std::fs::rename(&partial, &path).expect("rename input");
    println!(
        "  (generated {} in {:.1} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    path
}

/// The input's lines as Kafka records `(partition, DeviceId, JSON)`, a device always on the same
/// partition.
fn kafka_records(input: &Path) -> Vec<(i32, String, String)> {
    let text = std::fs::read_to_string(input).expect("read input");
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("input JSON");
            let device = value["DeviceId"].as_str().expect("DeviceId").to_owned();
            let sum: u32 = device.bytes().map(u32::from).sum();
            let partition = i32::try_from(sum % PARTITIONS).expect("partition");
            (partition, device, line.to_owned())
        })
        .collect()
}

/// A `weir` binary to measure, and where its plugins are when they are not the run's (builds of
/// two versions of the plugin contract each need plugins built against their own).
struct Binary {
    path: PathBuf,
    plugin_dir: Option<PathBuf>,
}

/// The binaries to run: `WEIR_BENCH_BINARY` (comma-separated, each `PATH` or `PATH=PLUGIN_DIR`),
/// else the one this package built.
fn binaries() -> Vec<Binary> {
    match std::env::var("WEIR_BENCH_BINARY") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|entry| {
                let (path, plugin_dir) = match entry.trim().split_once('=') {
                    Some((path, plugins)) => (path, Some(PathBuf::from(plugins))),
                    None => (entry.trim(), None),
                };
                let path = PathBuf::from(path);
                assert!(path.is_file(), "no binary at {}", path.display());
                if let Some(plugins) = &plugin_dir {
                    assert!(
                        plugins.is_dir(),
                        "no plugin directory {}",
                        plugins.display()
                    );
                }
                Binary { path, plugin_dir }
            })
            .collect(),
        _ => vec![Binary {
            path: weir_binary(),
            plugin_dir: None,
        }],
    }
}

/// Points the plugin paths of `config` (the run's plugin directory) at `plugins`.
fn repoint_plugins(config: &Path, plugins: &Path) {
    let default = plugin("passthrough");
    let default_dir = default.parent().expect("a plugin directory");
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text.replace(
        &default_dir.display().to_string(),
        &plugins.display().to_string(),
    );
    std::fs::write(config, text).expect("write config");
}

/// The compiled plugin `name`: from `WEIR_BENCH_PLUGIN_DIR` when set, else this build's.
fn plugin(name: &str) -> PathBuf {
    match std::env::var_os("WEIR_BENCH_PLUGIN_DIR") {
        Some(dir) => {
            let path = PathBuf::from(dir).join(format!("{name}.wasm"));
            assert!(path.is_file(), "no plugin at {}", path.display());
            path
        }
        None => plugin_path(name),
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.replace(['_', ','], "").parse().expect(name))
        .unwrap_or(default)
}
