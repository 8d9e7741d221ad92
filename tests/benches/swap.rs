//! What a hot swap costs: batch latency of the anomaly stage around swaps against steady state,
//! and the time from a new plugin file appearing in the watched directory to the first batch
//! processed by the new version.
//!
//! One thread runs the stage over batches of simulated telemetry, as a partition worker does; the
//! production file watcher (50 ms poll, 200 ms settle) runs on a tokio runtime beside it, and the
//! new version compiles there, off the hot path, on the machine's other core.
//!
//! Run: `cargo bench -p weir-tests --bench swap` (release build).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir::config::SimulatorSourceConfig;
use weir::event::Event;
use weir::generators::telemetry::SimulatorSource;
use weir::metrics::Metrics;
use weir::plugin::loading::spawn_load;
use weir::plugin::slot::SlotSetup;
use weir::plugin::standby::{Prepare as _, Standby};
use weir::plugin::store::VersionStore;
use weir::plugin::{
    InstanceSettings, KeyedState, PluginEngine, PluginRegistry, PluginScope, PluginSlot,
    RollbackPolicy, SlotControl as _, VersionOrigin,
};
use weir::source::{PartitionStart, ReadOutcome, Source};
use weir::stage::{Stage, StageOutput, WasmTransformStage};

const BATCH: usize = 1024;
const STEADY_BATCHES: usize = 3000;
/// Batches measured on each side of the first batch of a new version.
const AROUND: usize = 20;
/// Swaps by file to a new version (compiled), before three to versions loaded before.
const COMPILED_FILE_SWAPS: usize = 9;
/// Activations of compiled versions measured in pairs.
const PAIRED_SWAPS: usize = 200;

fn main() {
    let events = simulated_events(65_536);
    let batches: Vec<Vec<Event>> = events.chunks(BATCH).map(<[Event]>::to_vec).collect();
    println!(
        "swap benchmark: batches of {BATCH} simulated telemetry events through the anomaly rule"
    );
    println!("machine: {}", machine());

    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let file = plugins.join("anomaly.wasm");
    let versions = [
        weir_tests::plugin_path("telemetry_anomaly"),
        weir_tests::plugin_path("anomaly_v2"),
        weir_tests::plugin_path("anomaly_v3"),
    ];
    std::fs::copy(&versions[0], &file).expect("copy plugin");
    let store = VersionStore::new(dir.path().join("store"));
    let engine = PluginEngine::new()
        .expect("engine")
        .with_cache(&store.compiled_dir());
    let bytes = std::fs::read(&file).expect("plugin");
    let first = engine.transform_from_bytes(&file, &bytes).expect("plugin");
    let slot = PluginSlot::open(
        SlotSetup {
            pipeline: "bench".into(),
            stage: "anomaly".into(),
            file: file.clone(),
            engine: engine.clone(),
            store: Some(store),
            policy: RollbackPolicy::default(),
            metrics: Metrics::new(),
        },
        first.clone(),
        &bytes,
    );
    let registry = PluginRegistry::new();
    registry.register(slot.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.spawn(weir::plugin::watch::watch(
        registry,
        Duration::from_millis(50),
        Duration::from_millis(200),
    ));

    let settings = Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "bench".into(),
            stage: "anomaly".into(),
            partition: 0,
            plugin: first.name().clone(),
            version: first.version().clone(),
        },
        config_json: "{}".into(),
        max_memory_bytes: 256 * 1024 * 1024,
        call_timeout: Duration::from_secs(5),
        reference: weir::reference::ReferenceTables::none(),
    });
    let control = slot.clone();
    let mut stage = WasmTransformStage::with_slot(
        "anomaly".into(),
        slot,
        settings.clone(),
        KeyedState::default(),
        None,
    );
    let mut out = StageOutput::default();
    let mut next = 0usize;
    let mut run_batch = |stage: &mut WasmTransformStage| -> (Duration, Arc<str>) {
        let batch = &batches[next % batches.len()];
        next += 1;
        out.clear();
        let started = Instant::now();
        stage.process(batch, &mut out).expect("stage");
        (started.elapsed(), stage.plugin().version().clone())
    };

    // Warm up, then steady state.
    for _ in 0..300 {
        run_batch(&mut stage);
    }
    let steady: Vec<Duration> = (0..STEADY_BATCHES)
        .map(|_| run_batch(&mut stage).0)
        .collect();
    println!();
    println!(
        "steady state ({STEADY_BATCHES} batches): {}",
        summary(&steady)
    );
    // The machine's own noise, for the paired figures below: each steady batch minus the one
    // before it.
    let mut steady_steps: Vec<f64> = steady
        .windows(2)
        .map(|pair| pair[1].as_secs_f64() - pair[0].as_secs_f64())
        .collect();
    steady_steps.sort_by(f64::total_cmp);
    let step_at =
        |q: f64| steady_steps[((steady_steps.len() - 1) as f64 * q).round() as usize] * 1e6;
    println!(
        "  each steady batch minus the one before it (no swap, the machine's noise): p50 {:+.0} µs, p90 {:+.0} µs, p99 {:+.0} µs",
        step_at(0.5),
        step_at(0.9),
        step_at(0.99)
    );
    println!();
    println!(
        "{:<34} {:>11} {:>13} {:>13} {:>13} {:>13}",
        "swap", "file->batch", "first new", "p50 after", "max after", "max around"
    );

    // Swaps by file: new versions (each compiled: v2, v3, then copies of the three that differ
    // only in a custom section, so that their content and so their version differ), then
    // versions loaded before (from memory).
    let originals: Vec<Vec<u8>> = versions
        .iter()
        .map(|p| std::fs::read(p).expect("version"))
        .collect();
    let mut plan: Vec<(Vec<u8>, String)> = vec![
        (originals[1].clone(), "v2 (file, compiled)".to_owned()),
        (originals[2].clone(), "v3 (file, compiled)".to_owned()),
    ];
    for copy in 1..=COMPILED_FILE_SWAPS - 2 {
        let of = copy % originals.len();
        plan.push((
            with_custom_section(&originals[of], copy),
            format!("v{} copy {copy} (file, compiled)", of + 1),
        ));
    }
    for (index, bytes) in originals.iter().enumerate() {
        plan.push((
            bytes.clone(),
            format!("v{} (file, known version)", index + 1),
        ));
    }
    let steady_p50 = percentile(&steady, 0.50);
    let steady_p99 = percentile(&steady, 0.99);
    let mut file_swaps: Vec<FileSwap> = Vec::new();
    for (bytes, label) in plan {
        let expected = weir::plugin::content_version(&bytes);
        let mut before: Vec<Duration> = (0..AROUND).map(|_| run_batch(&mut stage).0).collect();
        install(&bytes, &file);
        let appeared = Instant::now();
        let mut during: Vec<Duration> = Vec::new();
        let (first_new, to_first) = loop {
            let (time, version) = run_batch(&mut stage);
            if *version == *expected {
                break (time, appeared.elapsed());
            }
            during.push(time);
            assert!(
                appeared.elapsed() < Duration::from_secs(60),
                "the new version never arrived"
            );
        };
        let after: Vec<Duration> = (0..AROUND).map(|_| run_batch(&mut stage).0).collect();
        // Around the swap: the batches just before the file appeared, those while it was read and
        // compiled, the first one on the new version, and those just after.
        let mut around = Vec::new();
        around.append(&mut before);
        around.extend(during.iter().rev().take(AROUND));
        around.push(first_new);
        around.extend(&after);
        let max = around.iter().max().copied().unwrap_or_default();
        println!(
            "{label:<34} {:>9.1}ms {:>13} {:>13} {:>13} {:>13}{}",
            to_first.as_secs_f64() * 1e3,
            micros(first_new),
            micros(percentile(&after, 0.50)),
            micros(after.iter().max().copied().unwrap_or_default()),
            micros(max),
            if stage.started_prepared() {
                ""
            } else {
                "  (not on a ready instance)"
            },
        );
        file_swaps.push(FileSwap {
            compiled: label.contains("compiled"),
            to_first,
            first_new,
            largest_around: max,
            during,
        });
    }
    let compiled_swaps = file_swaps.iter().filter(|s| s.compiled).count();
    for (compiled, what) in [
        (true, "a new component"),
        (false, "a version loaded before"),
    ] {
        let times: Vec<Duration> = file_swaps
            .iter()
            .filter(|s| s.compiled == compiled)
            .map(|s| s.to_first)
            .collect();
        println!(
            "file renamed into place -> first batch on the new version, {what}: p50 {:.0} ms, max {:.0} ms",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            times
                .iter()
                .max()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3
        );
    }
    let during: Vec<Duration> = file_swaps
        .iter()
        .flat_map(|s| s.during.iter().copied())
        .collect();
    println!(
        "batches while new files settled and compiled ({} in all): {}",
        during.len(),
        summary(&during)
    );
    let firsts: Vec<Duration> = file_swaps.iter().map(|s| s.first_new).collect();
    println!(
        "first batches on the new versions ({} file swaps, {compiled_swaps} compiled): {}",
        file_swaps.len(),
        summary(&firsts)
    );
    let over_p99: Vec<Duration> = file_swaps
        .iter()
        .map(|s| s.largest_around.saturating_sub(steady_p99))
        .collect();
    let over_p50: Vec<Duration> = firsts
        .iter()
        .map(|first| first.saturating_sub(steady_p50))
        .collect();
    // The switch's own cost. Versions already compiled (as an upload, a file of a known version
    // or a rollback brings) are offered on a loading thread (`plugin::loading`), as the admin API
    // does, while the worker goes on with its batches: the slot makes the new instance ready on
    // that thread, and the worker switches at its next batch boundary. Control rounds,
    // interleaved with them, do the same preparation on a loading thread (instantiate, rehearse)
    // but switch nothing: the batches around them are steady state under the same load, so the
    // difference between the two is what the switch itself adds.
    let known: Vec<(Vec<u8>, String)> = versions[1..]
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("version");
            let version = weir::plugin::content_version(&bytes);
            (bytes, version)
        })
        .collect();
    let rehearsed: Vec<_> = versions[1..]
        .iter()
        .map(|p| {
            engine
                .transform_from_bytes(p, &std::fs::read(p).expect("version"))
                .expect("plugin")
        })
        .collect();
    let sham = Standby::new(settings.clone());
    let mut sample = weir::stage::batch::empty_batch(0);
    weir::stage::batch::fill_batch(&mut sample, &batches[0]);
    sham.keep_sample(&sample, stage.keyed_state());
    let mut swaps = Pairs::default();
    let mut controls = Pairs::default();
    let mut prepared = 0usize;
    for round in 0..PAIRED_SWAPS {
        for _ in 0..3 {
            run_batch(&mut stage);
        }
        // A swap: the last batch on the old version and the first on the new one.
        let (bytes, expected) = &known[round % 2];
        let mut before = run_batch(&mut stage).0;
        // On a loading thread, as the admin API and the file watcher do.
        let offering = {
            let (control, bytes) = (control.clone(), bytes.clone());
            spawn_load(move || control.offer(bytes, VersionOrigin::Api)).expect("loading thread")
        };
        let first = loop {
            let (time, version) = run_batch(&mut stage);
            if *version == **expected {
                offering.join().expect("offering thread").expect("offer");
                break time;
            }
            before = time;
        };
        prepared += usize::from(stage.started_prepared());
        swaps.push(before, first);
        for _ in 0..3 {
            run_batch(&mut stage);
        }
        // A control: the last batch that started before the preparation ended, and the next.
        let mut before = run_batch(&mut stage).0;
        let preparing = {
            let (sham, plugin) = (sham.clone(), rehearsed[round % 2].clone());
            spawn_load(move || sham.prepare(&plugin)).expect("loading thread")
        };
        let first = loop {
            let done = preparing.is_finished();
            let (time, _) = run_batch(&mut stage);
            if done {
                break time;
            }
            before = time;
        };
        assert!(
            preparing.join().expect("preparing thread"),
            "rehearsal failed"
        );
        controls.push(before, first);
    }
    println!();
    println!(
        "{PAIRED_SWAPS} swaps between compiled versions, offered while the worker runs, and {PAIRED_SWAPS} control rounds between them (the same preparation on another thread, no switch):"
    );
    println!(
        "  first batch after minus the batch before:   swaps {}; controls {}",
        swaps.steps(),
        controls.steps()
    );
    println!(
        "  first batches after:   swaps {}; controls {}",
        summary(&swaps.firsts),
        summary(&controls.firsts)
    );
    println!(
        "  what the switch adds, swaps minus controls percentile by percentile: p50 {:+.0} µs, p90 {:+.0} µs, p99 {:+.0} µs (target: under +1,000 µs)",
        swaps.excess_over(&controls, 0.5),
        swaps.excess_over(&controls, 0.9),
        swaps.excess_over(&controls, 0.99)
    );
    println!(
        "  first batches on an instance made ready before the switch (plugin::standby): {prepared} of {PAIRED_SWAPS}"
    );
    println!();
    println!("against the target (no batch around a swap more than 1 ms above steady state):");
    println!(
        "  file swaps: the largest batch around each swap is above the steady p99 by p50 {}, max {} ({} of {} swaps more than 1 ms); the first batch on the new version above the steady p50 by p50 {}, max {}",
        micros(percentile(&over_p99, 0.5)),
        micros(over_p99.iter().max().copied().unwrap_or_default()),
        over_p99
            .iter()
            .filter(|d| **d > Duration::from_millis(1))
            .count(),
        over_p99.len(),
        micros(percentile(&over_p50, 0.5)),
        micros(over_p50.iter().max().copied().unwrap_or_default()),
    );
    println!(
        "  switches: the first batches after are {:+.0} µs (p50) and {:+.0} µs (p99) from the control rounds' at the same percentile",
        swaps.excess_over(&controls, 0.5),
        swaps.excess_over(&controls, 0.99)
    );
    println!(
        "load average while measuring: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "file->batch includes the watcher's 200 ms settle time (plugins.watch_settle) and its 50 ms poll"
    );
}

/// Batches on each side of an event: the last one before it and the first one after.
#[derive(Default)]
struct Pairs {
    befores: Vec<Duration>,
    firsts: Vec<Duration>,
}

impl Pairs {
    fn push(&mut self, before: Duration, first: Duration) {
        self.befores.push(before);
        self.firsts.push(first);
    }

    /// Percentiles of first minus before, pair by pair.
    fn steps(&self) -> String {
        let mut steps: Vec<f64> = self
            .befores
            .iter()
            .zip(&self.firsts)
            .map(|(before, first)| first.as_secs_f64() - before.as_secs_f64())
            .collect();
        steps.sort_by(f64::total_cmp);
        let at = |q: f64| steps[((steps.len() - 1) as f64 * q).round() as usize] * 1e6;
        format!(
            "p50 {:+.0} µs, p90 {:+.0} µs, p99 {:+.0} µs",
            at(0.5),
            at(0.9),
            at(0.99)
        )
    }

    /// This group's first batches minus `other`'s, at percentile `q`, in µs.
    fn excess_over(&self, other: &Pairs, q: f64) -> f64 {
        (percentile(&self.firsts, q).as_secs_f64() - percentile(&other.firsts, q).as_secs_f64())
            * 1e6
    }
}

/// One swap by file, as measured.
struct FileSwap {
    /// Whether the version was new (compiled) rather than loaded before.
    compiled: bool,
    /// From the file renamed into place to the first batch on the new version.
    to_first: Duration,
    /// The first batch on the new version.
    first_new: Duration,
    /// The largest batch around the swap (before, while compiling, first, after).
    largest_around: Duration,
    /// The batches while the file settled and compiled.
    during: Vec<Duration>,
}

/// Writes `bytes` to `to` the way a deployment should: a temporary name, then a rename.
fn install(bytes: &[u8], to: &Path) {
    let temporary = to.with_extension("wasm.partial");
    std::fs::write(&temporary, bytes).expect("write");
    std::fs::rename(&temporary, to).expect("rename");
}

/// `component` with a custom section appended: the same plugin, another content hash.
fn with_custom_section(component: &[u8], copy: usize) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"weir-bench-copy";
    let payload = copy.to_le_bytes();
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(&payload);
    let mut out = component.to_vec();
    out.push(0); // custom section
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn summary(samples: &[Duration]) -> String {
    format!(
        "p50 {}, p99 {}, max {}",
        micros(percentile(samples, 0.50)),
        micros(percentile(samples, 0.99)),
        micros(samples.iter().max().copied().unwrap_or_default())
    )
}

/// Events from Weir's own telemetry simulator (1,000 devices), in one partition's order.
fn simulated_events(count: u64) -> Vec<Event> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let text = format!(
            "partitions = 1\ndevices = 1000\nrate = 0\nmax_events = {count}\nseed = 7\nduplicate_ratio = 0.0\n"
        );
        let config: SimulatorSourceConfig = toml::from_str(&text).expect("simulator config");
        let source = SimulatorSource::new("bench", config, 1_795_305_600_000);
        let mut readers = source
            .open(vec![PartitionStart {
                partition: 0,
                after: None,
            }])
            .await
            .expect("open simulator");
        let mut events = Vec::new();
        loop {
            match readers[0]
                .next_batch(4096, Duration::from_millis(50))
                .await
                .expect("read")
            {
                ReadOutcome::Events(batch) => events.extend(batch),
                ReadOutcome::Idle => {}
                ReadOutcome::End => break,
                ReadOutcome::Undecodable { .. } => panic!("the simulator's data always decodes"),
            }
        }
        events
    })
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
