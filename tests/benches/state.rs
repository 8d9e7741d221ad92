//! Keyed state at scale, through the host's own keyed state and local checkpoint store: for 1M and
//! 10M device keys (the anomaly rule's state: one JSON reading per device),
//!
//! - **checkpoint bytes per interval**: what a checkpoint wrote before incremental checkpoints
//!   (the whole state, every interval) against a delta of the keys an interval changed (100,000
//!   readings per interval, on random devices), and the base a compaction writes;
//! - **resident memory** of the state: the process's resident set grown while building it from
//!   puts (every key in the in-memory map of changes since the last base), and grown while
//!   restoring it from its checkpoint (the base, looked up in place, and the deltas after it);
//! - **restart to the first event**: from a stopped process to the first event's state read and
//!   written, that is loading the checkpoint record and its state files (base and deltas),
//!   restoring the state, then reading a device's last reading, putting the new one and
//!   committing, as the anomaly rule does for an event;
//! - **lookups after the restart**: a device's reading read from the base, in place;
//! - **a compaction beside the partition**: how long the partition stops for one (the state
//!   frozen at the cut, the new base taken once written) and how long writing the base takes;
//! - **spilling**: the restored state compacted into a spill file (`[state]` of the
//!   configuration), and the process's own memory (`RssAnon`) against the mapped base's pages
//!   (`RssFile`, which the kernel drops when memory is short) after it.
//!
//! Run: `cargo bench -p weir-tests --bench state` (release). `--keys=N` measures one size.
//! Each size runs in a process of its own, so that one's freed memory does not hide the other's.

use std::time::{Duration, Instant};

use weir::checkpoint::{
    Checkpoint, CheckpointStore, IncrementalState, LocalCheckpointStore, StateWrite,
};
use weir::plugin::{KeyedState, StateSpill};

/// Readings per checkpoint interval (100,000 events/s with a 1 s interval, or 20,000 events/s
/// with the 5 s default).
const CHANGED_PER_INTERVAL: usize = 100_000;
/// Deltas written after the base before the restart is measured.
const INTERVALS: usize = 4;
/// 2026-11-01T00:00:00Z.
const BASE_TIME: i64 = 1_793_491_200_000;
/// The anomaly rule's look-back, as its keys' time-to-live.
const TTL_MS: i64 = 300_000;

fn main() {
    let keys = std::env::args().find_map(|a| a.strip_prefix("--keys=").map(str::to_owned));
    let spill_from =
        std::env::args().find_map(|a| a.strip_prefix("--spill-from=").map(str::to_owned));
    match keys.and_then(|k| k.parse::<usize>().ok()) {
        Some(keys) => match spill_from {
            Some(dir) => measure_spill(keys, std::path::Path::new(&dir)),
            None => measure(keys),
        },
        None => {
            println!("# keyed state at scale ({})", machine());
            let exe = std::env::current_exe().expect("bench executable");
            for keys in [1_000_000, 10_000_000] {
                let status = std::process::Command::new(&exe)
                    .arg(format!("--keys={keys}"))
                    .arg("--bench")
                    .status()
                    .expect("run one size");
                assert!(status.success(), "{keys} keys: {status}");
            }
        }
    }
}

/// The machine, its load and the commit measured.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{} cores of {cpu}, load average {load}, commit {commit}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// The process's resident set, in bytes.
fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// The process's own memory in its resident set (`RssAnon`): what the kernel cannot drop
/// without swap, unlike the pages of mapped files (`RssFile`), which it drops and reads again.
fn anon() -> u64 {
    status_bytes("RssAnon:")
}

/// Pages of mapped files in the resident set (`RssFile`).
fn file_backed() -> u64 {
    status_bytes("RssFile:")
}

fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A reading as the anomaly plugin stores it.
fn reading(temperature: f64, time: i64) -> Vec<u8> {
    format!(r#"{{"temperature":{temperature:.2},"time":{time}}}"#).into_bytes()
}

fn key(device: usize) -> Vec<u8> {
    format!("device-{device:08}").into_bytes()
}

/// A deterministic pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 17
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn measure(keys: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let temp = tempfile::tempdir().expect("temp dir");
    // `--keep=DIR`: the checkpoint stays in DIR, to run the spill measurement again by hand
    // (`--keys=N --spill-from=DIR`, for example in a memory-limited cgroup).
    let kept =
        std::env::args().find_map(|a| a.strip_prefix("--keep=").map(std::path::PathBuf::from));
    let dir = kept.unwrap_or_else(|| temp.path().to_path_buf());
    let store = LocalCheckpointStore::new(&dir);

    // The state of `keys` devices, written in batches as a stage would.
    let before = rss();
    let mut state = KeyedState::default();
    state.set_stage_ttl(Some(TTL_MS));
    let mut time = BASE_TIME;
    for device in 0..keys {
        if device.is_multiple_of(1024) {
            state.commit();
            time += 1;
            state.advance_write_time(time);
        }
        state.put(key(device), reading(20.0 + (device % 7) as f64, time));
    }
    state.commit();
    let resident = rss().saturating_sub(before);

    // Before incremental checkpoints: the whole state in the record, every interval.
    let whole = state.snapshot().len() as u64;

    // A base, then deltas of the readings of one interval each.
    let mut incremental = IncrementalState::new(&Checkpoint::default());
    let (base_bytes, base_time) = save(&runtime, &store, &mut incremental, &mut state, 1);
    let mut rng = Rng(7);
    let mut delta_bytes = Vec::new();
    let mut delta_times = Vec::new();
    for interval in 0..INTERVALS {
        for _ in 0..CHANGED_PER_INTERVAL {
            let device = rng.next() as usize % keys;
            time += 10;
            state.advance_write_time(time);
            state.put(key(device), reading(21.5, time));
            if device.is_multiple_of(512) {
                state.commit();
            }
        }
        state.commit();
        let (bytes, took) = save(&runtime, &store, &mut incremental, &mut state, 2 + interval);
        delta_bytes.push(bytes);
        delta_times.push(took);
    }

    // Restart: the record, its base and deltas read, the state restored, the first event's
    // state read and written.
    let before_restart = rss();
    let anon_before_restart = anon();
    let started = Instant::now();
    let loaded = runtime
        .block_on(store.load("state", 0))
        .expect("load")
        .expect("a checkpoint");
    let read = started.elapsed();
    let parts = loaded.state_parts.get("anomaly").expect("state files");
    let mut restored = KeyedState::from_changes(parts.iter().cloned()).expect("state restores");
    restored.set_stage_ttl(Some(TTL_MS));
    let ready = started.elapsed();
    let first = key(rng.next() as usize % keys);
    let last_reading = restored.get(&first).map(<[u8]>::len);
    restored.advance_write_time(time + 10);
    restored.put(first.clone(), reading(22.0, time + 10));
    restored.commit();
    let restart = started.elapsed();
    let restored_resident = rss().saturating_sub(before_restart);
    let restored_anon = anon().saturating_sub(anon_before_restart);
    assert!(last_reading.is_some(), "the device has a reading");
    assert_eq!(restored.len(), state.len());
    let (base_size, overlay_keys) = restored.base_and_overlay();

    // Lookups after the restart, on random devices (from the base, in place).
    let lookup = random_lookups(&restored, keys, &mut rng);

    // As before bases were read in place: the same state rebuilt into a map of every key, with
    // an allocation per key and value (the whole state in the changes format, restored).
    let whole_changes = restored.snapshot();
    let started = Instant::now();
    let rebuilt = KeyedState::restore(&whole_changes).expect("rebuilds");
    let rebuild = started.elapsed();
    assert_eq!(rebuilt.len(), restored.len());
    drop(rebuilt);

    // A compaction as a partition makes one: the state frozen at the cut (the partition's
    // pause), the base written from it on another thread, then taken by the state.
    let started = Instant::now();
    let base_write = state.begin_base();
    let frozen = started.elapsed();
    let started = Instant::now();
    let written = std::thread::scope(|scope| {
        scope
            .spawn(|| base_write.write())
            .join()
            .expect("the base is written")
    });
    let beside = started.elapsed();
    let started = Instant::now();
    let replaced = state.adopt_base(&base_write, written);
    let adopted = started.elapsed();
    assert!(replaced.is_some(), "the state takes its new base");
    drop((replaced, base_write));

    let delta = delta_bytes.iter().sum::<u64>() / delta_bytes.len() as u64;
    let delta_time = delta_times.iter().sum::<Duration>() / delta_times.len() as u32;
    println!(
        "keys {keys}: checkpoint bytes per interval ({CHANGED_PER_INTERVAL} readings): whole state {} \
         -> delta {} ({:.1}x less; {:.0} ms to write); compaction base {} ({:.0} ms); \
         resident memory built from puts {} ({} bytes per key), restored {} ({} bytes per key; \
         base {}, {overlay_keys} keys since it); restart to the first event {:.0} ms (read {:.0} \
         ms, state ready {:.0} ms, first event {:.2} ms; base and {INTERVALS} deltas); \
         lookups after the restart {:.0} ns each; rebuilding a map of every key as before {:.0} ms; \
         of the restored memory the process's own {}, the rest pages of the mapped base; \
         a compaction after the deltas stops the partition {:.2} ms (the state frozen) and \
         {:.2} ms (the new base taken), the base written beside it in {:.0} ms",
        mb(whole),
        mb(delta),
        whole as f64 / delta.max(1) as f64,
        delta_time.as_secs_f64() * 1e3,
        mb(base_bytes),
        base_time.as_secs_f64() * 1e3,
        mb(resident),
        resident / keys as u64,
        mb(restored_resident),
        restored_resident / keys as u64,
        mb(base_size as u64),
        restart.as_secs_f64() * 1e3,
        read.as_secs_f64() * 1e3,
        ready.as_secs_f64() * 1e3,
        (restart - ready).as_secs_f64() * 1e3,
        lookup.as_secs_f64() * 1e9,
        rebuild.as_secs_f64() * 1e3,
        mb(restored_anon),
        frozen.as_secs_f64() * 1e3,
        adopted.as_secs_f64() * 1e3,
        beside.as_secs_f64() * 1e3,
    );
    // Spilling, in a process of its own so that memory this one freed but kept does not count.
    let status = std::process::Command::new(std::env::current_exe().expect("bench executable"))
        .arg(format!("--keys={keys}"))
        .arg(format!("--spill-from={}", dir.display()))
        .arg("--bench")
        .status()
        .expect("run the spill measurement");
    assert!(status.success(), "spill measurement: {status}");
}

/// Spilling: the state restored from the checkpoint in `dir`, then compacted into a spill file
/// (`[state]` of the configuration) and looked up there; the process's own memory (`RssAnon`)
/// against the mapped base's pages (`RssFile`, which the kernel drops when memory is short).
fn measure_spill(keys: usize, dir: &std::path::Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = LocalCheckpointStore::new(dir);
    let loaded = runtime
        .block_on(store.load("state", 0))
        .expect("load")
        .expect("a checkpoint");
    let parts = loaded.state_parts.get("anomaly").expect("state files");
    let mut state = KeyedState::from_changes(parts.iter().cloned()).expect("state restores");
    // `--in-memory`: the same compaction without spilling, for comparison.
    let in_memory = std::env::args().any(|a| a == "--in-memory");
    state.set_spill((!in_memory).then(|| {
        std::sync::Arc::new(StateSpill {
            dir: dir.join("spill"),
            above_bytes: 0,
        })
    }));
    let started = Instant::now();
    let base = state.take_changes(true);
    let spill_time = started.elapsed();
    drop(base);
    drop(loaded);
    let lookup = random_lookups(&state, keys, &mut Rng(11));
    println!(
        "keys {keys}, {}: compaction {:.0} ms; then the process's own memory {} in all ({} \
         bytes per key) and the mapped base's pages {}; lookups {:.0} ns each",
        if in_memory { "in memory" } else { "spilled" },
        spill_time.as_secs_f64() * 1e3,
        mb(anon()),
        anon() / keys as u64,
        mb(file_backed()),
        lookup.as_secs_f64() * 1e9,
    );
}

/// The time one lookup of a random device's reading takes in `state` (of `keys` devices), on
/// average over 1M lookups.
fn random_lookups(state: &KeyedState, keys: usize, rng: &mut Rng) -> Duration {
    let lookups = 1_000_000;
    let devices: Vec<Vec<u8>> = (0..lookups)
        .map(|_| key(rng.next() as usize % keys))
        .collect();
    let started = Instant::now();
    let found = devices
        .iter()
        .filter(|device| state.get(device).is_some())
        .count();
    let took = started.elapsed();
    assert_eq!(found, lookups);
    took / lookups as u32
}

/// Saves a checkpoint of stage `anomaly` as `incremental` plans it; its state file's bytes and the
/// time taken (changes taken, file and record written and synced).
fn save(
    runtime: &tokio::runtime::Runtime,
    store: &LocalCheckpointStore,
    incremental: &mut IncrementalState,
    state: &mut KeyedState,
    position: usize,
) -> (u64, Duration) {
    let started = Instant::now();
    incremental.begin();
    let mut checkpoint = Checkpoint {
        position: Some(position as u64),
        ..Checkpoint::default()
    };
    let write = incremental.next_write("anomaly");
    let bytes = state.take_changes(write == StateWrite::Base);
    let size = bytes.len() as u64;
    incremental.add(&mut checkpoint, "anomaly", write, bytes);
    runtime
        .block_on(store.save("state", 0, &checkpoint))
        .expect("save");
    incremental.saved();
    (size, started.elapsed())
}
