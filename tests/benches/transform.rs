//! The anomaly rule over the same simulated telemetry, three ways in one run:
//! 1. as the Wasm component through the host's stage (`WasmTransformStage`: batch layout, call,
//!    output decoding, keyed state through host imports, epoch deadline on);
//! 2. as the same Rust function called natively (`weir_sdk::testing::NativeRunner`: the same
//!    runner code and batch layout, state in memory);
//! 3. as the pass-through component through the host's stage (the cost of the boundary alone);
//! 4. as the Python and the JavaScript components of the same rule (`plugins/python/`,
//!    `plugins/js/`, built with `scripts/build-plugin`) through the host's stage, with their
//!    compile and instantiate times and the linear memory an instance holds;
//! 5. the Rust, Python and JavaScript anomaly plugins through `weir run` (the release binary, a
//!    configuration file, the built-in simulator on one partition, a file sink for alerts and
//!    rows): events per CPU-second of the whole process, from the difference between a short and
//!    a long run, so that start-up (compiling the plugin included) cancels out. This is the
//!    figure of issue 17's goal (50,000 events/s per core). `WEIR_BENCH_RUN_EVENTS` sets the
//!    long run's events (default 220,000; the short run has 20,000).
//!
//! Run: `cargo bench -p weir-tests --bench transform` (release build); `WEIR_BENCH_ONLY=rust`
//! stops after the first three (a minute instead of several). One thread does all the work, so
//! the figures are per core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::config::SimulatorSourceConfig;
use weir::event::Event;
use weir::generators::telemetry::SimulatorSource;
use weir::plugin::{
    InstanceSettings, KeyedState, PluginEngine, PluginInstance, PluginKind, PluginScope,
};
use weir::source::{PartitionStart, ReadOutcome, Source};
use weir::stage::{Stage, StageOutput, WasmTransformStage};
use weir_sdk::testing::{NativeRunner, TestEvent, batch_of};

const EVENTS: u64 = 262_144;
const BATCH: usize = 1024;
const ROUNDS: usize = 7;

fn main() {
    let events = simulated_events();
    let batches: Vec<Vec<Event>> = events.chunks(BATCH).map(<[Event]>::to_vec).collect();
    let mean_bytes =
        events.iter().map(|e| e.body.len()).sum::<usize>() as f64 / events.len() as f64;
    println!(
        "transform benchmark: {} simulated telemetry events, {mean_bytes:.0} bytes each on average, batches of {BATCH}",
        events.len()
    );
    println!("machine: {}", machine());

    let engine = PluginEngine::new().expect("engine");
    let anomaly = engine
        .load_transform(&weir_tests::plugin_path("telemetry_anomaly"))
        .expect("anomaly plugin");
    let passthrough = engine
        .load_transform(&weir_tests::plugin_path("passthrough"))
        .expect("passthrough plugin");

    let wasm = best_of(|| {
        let mut stage = stage(&anomaly);
        let mut out = StageOutput::default();
        let started = Instant::now();
        let mut records = 0;
        for batch in &batches {
            out.clear();
            stage.process(batch, &mut out).expect("stage");
            records += out.emitted.len();
        }
        (started.elapsed(), records)
    });

    let native_batches: Vec<_> = batches
        .iter()
        .map(|batch| {
            let test_events: Vec<TestEvent> = batch
                .iter()
                .map(|e| {
                    let mut t = TestEvent::new(e.body.to_vec())
                        .at(e.time())
                        .enqueued_at(e.enqueued_time)
                        .position(e.position);
                    if let Some(key) = &e.key {
                        t = t.key(String::from_utf8_lossy(key).into_owned());
                    }
                    t
                })
                .collect();
            batch_of(0, &test_events)
        })
        .collect();
    let native = best_of(|| {
        let mut runner = NativeRunner::new(telemetry_anomaly::process);
        let started = Instant::now();
        let mut records = 0;
        for batch in &native_batches {
            records += weir_sdk::columns::emitted_count(&runner.process(batch).emitted);
        }
        (started.elapsed(), records)
    });

    let pass = best_of(|| {
        let mut stage = stage(&passthrough);
        let mut out = StageOutput::default();
        let started = Instant::now();
        let mut records = 0;
        for batch in &batches {
            out.clear();
            stage.process(batch, &mut out).expect("stage");
            records += out.emitted.len();
        }
        (started.elapsed(), records)
    });

    assert_eq!(
        wasm.1, native.1,
        "the Wasm and native paths must produce the same records"
    );
    let n = events.len() as f64;
    println!();
    print_header();
    for (name, figure) in [
        ("anomaly rule, Wasm component via host stage", wasm),
        ("anomaly rule, same Rust function natively", native),
        ("pass-through component via host stage", pass),
    ] {
        print_row(name, figure, n);
    }
    println!();
    println!(
        "Wasm/native time ratio: {:.2}x (target: within 1.2x); Wasm path: {:.0} events/s on one core (target: 500,000)",
        wasm.0.as_secs_f64() / native.0.as_secs_f64(),
        n / wasm.0.as_secs_f64()
    );
    println!("(best of {ROUNDS} rounds each; state starts empty every round)");
    if std::env::var("WEIR_BENCH_ONLY").as_deref() == Ok("rust") {
        return;
    }
    let scripts: Vec<(&str, ScriptFigures)> = [
        ("Python", "plugins/python/telemetry-anomaly"),
        ("JavaScript", "plugins/js/telemetry-anomaly"),
    ]
    .into_iter()
    .map(|(language, dir)| (language, script_figures(dir, &batches)))
    .collect();
    for (language, figures) in &scripts {
        assert_eq!(
            figures.run.1, wasm.1,
            "the {language} plugin must produce the Rust plugin's records"
        );
    }
    println!();
    print_header();
    for (name, figure) in [
        ("anomaly rule, Python component via stage", scripts[0].1.run),
        (
            "anomaly rule, JavaScript component via stage",
            scripts[1].1.run,
        ),
    ] {
        print_row(name, figure, n);
    }
    println!();
    for (language, figures) in &scripts {
        println!(
            "{language} component: {} bytes, compile {:.2} s, instantiate {:.1} ms, linear memory {} KiB after instantiation, {} KiB after a run; {:.0} events/s (goal: 50,000 per core)",
            figures.bytes,
            figures.compile.as_secs_f64(),
            figures.instantiate.as_secs_f64() * 1e3,
            figures.memory_start / 1024,
            figures.memory_after / 1024,
            n / figures.run.0.as_secs_f64(),
        );
    }

    let long: u64 = std::env::var("WEIR_BENCH_RUN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(220_000);
    let short = 20_000.min(long / 2);
    println!();
    println!(
        "through `weir run` (simulator, 1 partition, batches of {BATCH}; CPU of the whole process, {long} less {short} readings, best of 2):"
    );
    let plugins = [
        ("Rust", weir_tests::plugin_path("telemetry_anomaly")),
        ("Python", scripts[0].1.path.clone()),
        ("JavaScript", scripts[1].1.path.clone()),
    ];
    let mut rust_alerts = None;
    for (language, path) in &plugins {
        let figures = weir_run_figures(path, short, long);
        match rust_alerts {
            None => rust_alerts = Some(figures.alerts),
            Some(alerts) => assert_eq!(
                figures.alerts, alerts,
                "the {language} plugin must raise the Rust plugin's alerts under `weir run`"
            ),
        }
        println!(
            "{language:<11} {:>8.2} µs of CPU per reading, {:>9.0} events per CPU-second (goal for Python and JavaScript: 50,000); {} alerts",
            figures.cpu_per_event * 1e6,
            1.0 / figures.cpu_per_event,
            figures.alerts
        );
    }
}

/// The header of a table of paths.
fn print_header() {
    println!(
        "{:<44} {:>14} {:>10} {:>10}",
        "path", "events/s", "ns/event", "records"
    );
}

/// One row of a table of paths: `events` events in `time` gave `records` records.
fn print_row(name: &str, (time, records): (Duration, usize), events: f64) {
    let secs = time.as_secs_f64();
    println!(
        "{name:<44} {:>14.0} {:>10.0} {records:>10}",
        events / secs,
        secs * 1e9 / events
    );
}

/// What `weir run` costs per reading with one plugin.
struct WeirRunFigures {
    /// CPU seconds per reading, start-up excluded.
    cpu_per_event: f64,
    /// Alerts of the long run.
    alerts: usize,
}

/// Runs the anomaly stage with `plugin` under `weir run` on `short` and on `long` simulated
/// readings, twice each, and takes the difference of the least CPU time of each.
fn weir_run_figures(plugin: &std::path::Path, short: u64, long: u64) -> WeirRunFigures {
    let store = tempfile::tempdir().expect("plugin store");
    let best = |events: u64| {
        (0..2)
            .map(|_| weir_run(plugin, store.path(), events))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("a run")
    };
    let (short_cpu, _) = best(short);
    let (long_cpu, alerts) = best(long);
    WeirRunFigures {
        cpu_per_event: (long_cpu - short_cpu).max(0.01) / (long - short) as f64,
        alerts,
    }
}

/// One `weir run` of the anomaly stage over `events` simulated readings: its CPU seconds and the
/// alerts it wrote. `store` is the plugin store, shared by the runs of one plugin so that only
/// the first compiles it.
fn weir_run(plugin: &std::path::Path, store: &std::path::Path, events: u64) -> (f64, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"[checkpoint]
dir = "checkpoints"
interval = "5s"

[plugins]
store_dir = "{store}"

[sources.telemetry]
kind = "simulator"
partitions = 1
devices = 1000
rate = 0
max_events = {events}
seed = 42
start_time = "2026-11-22T00:00:00Z"
reading_interval = "10s"

[sinks.alerts]
kind = "file"
path = "alerts"

[sinks.rows]
kind = "file"
path = "rows"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.telemetry]
source = "telemetry"
dead_letter = "dead_letters"
batch = {{ max_events = {BATCH}, max_wait = "20ms" }}

[[pipelines.telemetry.stages]]
name = "anomaly"
plugin = "{plugin}"
outputs = {{ alerts = "alerts", rows = "rows" }}
"#,
            store = store.display(),
            plugin = plugin.display(),
        ),
    )
    .expect("config");
    let before = weir_tests::children_cpu_seconds();
    weir_tests::run_to_completion(&config, Duration::from_secs(600));
    let cpu = weir_tests::children_cpu_seconds() - before;
    let alerts = weir_tests::read_jsonl_dir(&dir.path().join("alerts")).len();
    let rows = weir_tests::read_jsonl_dir(&dir.path().join("rows")).len();
    // The simulator sends a small share of readings twice (`duplicate_ratio`), as a broker may.
    assert!(
        rows as u64 >= events,
        "every reading reaches the rows sink: {rows} rows of {events} readings"
    );
    (cpu, alerts)
}

/// What the benchmark measures of a Python or JavaScript plugin.
struct ScriptFigures {
    path: std::path::PathBuf,
    bytes: u64,
    compile: Duration,
    instantiate: Duration,
    memory_start: usize,
    memory_after: usize,
    run: (Duration, usize),
}

/// Builds the plugin in `dir` (cached by content hash), compiles it without the compile cache,
/// instantiates it, and runs the batches through the host's stage (fewer rounds: it is slow).
fn script_figures(dir: &str, batches: &[Vec<Event>]) -> ScriptFigures {
    let path = weir_tests::script_plugins::script_plugin(dir, PluginKind::Transform);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let plugin = PluginEngine::new()
        .expect("engine")
        .load_transform(&path)
        .expect("the plugin loads");
    let compile = started.elapsed();
    let settings = settings(&plugin);
    let started = Instant::now();
    let instance = PluginInstance::new(plugin.clone(), settings.clone(), KeyedState::default())
        .expect("instantiates");
    let instantiate = started.elapsed();
    let memory_start = instance.memory_in_use();
    let rounds = 2;
    let run = (0..rounds)
        .map(|_| {
            let mut stage = stage(&plugin);
            let mut out = StageOutput::default();
            let started = Instant::now();
            let mut records = 0;
            for batch in batches {
                out.clear();
                stage.process(batch, &mut out).expect("stage");
                records += out.emitted.len();
            }
            (started.elapsed(), records)
        })
        .min_by_key(|(time, _)| *time)
        .expect("a round");
    let mut after = PluginInstance::new(plugin, settings, KeyedState::default()).expect("instance");
    let mut layout = weir::stage::batch::empty_batch(0);
    weir::stage::batch::fill_batch(&mut layout, &batches[0]);
    after.process(&mut layout).expect("a batch");
    ScriptFigures {
        path,
        bytes,
        compile,
        instantiate,
        memory_start,
        memory_after: after.memory_in_use(),
        run,
    }
}

/// Runs `round` ROUNDS times and keeps the fastest.
fn best_of(mut round: impl FnMut() -> (Duration, usize)) -> (Duration, usize) {
    (0..ROUNDS)
        .map(|_| round())
        .min_by_key(|(time, _)| *time)
        .expect("at least one round")
}

fn stage(plugin: &Arc<weir::plugin::Plugin>) -> WasmTransformStage {
    WasmTransformStage::new(
        "anomaly".into(),
        plugin.clone(),
        settings(plugin),
        KeyedState::default(),
    )
}

/// The sandbox settings of the benchmark's stages (the defaults of `[plugins]`).
fn settings(plugin: &Arc<weir::plugin::Plugin>) -> Arc<InstanceSettings> {
    Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "bench".into(),
            stage: "anomaly".into(),
            partition: 0,
            plugin: plugin.name().clone(),
            version: plugin.version().clone(),
        },
        config_json: "{}".into(),
        max_memory_bytes: 256 * 1024 * 1024,
        call_timeout: Duration::from_secs(5),
        reference: weir::reference::ReferenceTables::none(),
    })
}

/// Events from Weir's own telemetry simulator (1,000 devices, about 5% temperature jumps).
fn simulated_events() -> Vec<Event> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config: SimulatorSourceConfig = toml_config();
        let partitions = config.partitions;
        let source = SimulatorSource::new("bench", config, 1_795_305_600_000);
        let starts = (0..partitions)
            .map(|partition| PartitionStart {
                partition,
                after: None,
            })
            .collect();
        let mut readers = source.open(starts).await.expect("open simulator");
        let mut events = Vec::new();
        let mut open: Vec<bool> = readers.iter().map(|_| true).collect();
        while open.iter().any(|o| *o) {
            for (index, reader) in readers.iter_mut().enumerate() {
                if !open[index] {
                    continue;
                }
                match reader
                    .next_batch(4096, Duration::from_millis(50))
                    .await
                    .expect("read")
                {
                    ReadOutcome::Events(batch) => events.extend(batch),
                    ReadOutcome::Idle => {}
                    ReadOutcome::End => open[index] = false,
                    ReadOutcome::Undecodable { .. } => {
                        panic!("the simulator's data always decodes")
                    }
                }
            }
        }
        // One partition's worth of ordering: by position, as a single partition would deliver.
        events.sort_by_key(|e| e.position);
        for event in &mut events {
            event.partition = 0;
        }
        events
    })
}

fn toml_config() -> SimulatorSourceConfig {
    let text = format!(
        "partitions = 1\ndevices = 1000\nrate = 0\nmax_events = {EVENTS}\nseed = 7\nduplicate_ratio = 0.0\n"
    );
    toml::from_str(&text).expect("simulator config")
}

/// CPU model and core count, for the README's figures.
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
