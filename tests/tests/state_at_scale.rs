//! Keyed state at scale: incremental checkpoints (a base and deltas of the keys changed) and keys
//! that expire in event time, through `weir run` killed with SIGKILL several times. The restarted
//! run must restore its state exactly: the same alerts as an uninterrupted run (a lost key would
//! miss an alert; a key restored twice or from a stale delta would raise a spurious one).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::telemetry::{
    PipelineOptions, anomaly_pipeline, assert_alerts_match, expected_alerts, ordered_readings,
    write_input,
};
use weir_tests::{WeirProcess, read_jsonl_dir, run_to_completion};

fn multiset(alerts: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for alert in alerts {
        *counts.entry(alert.to_string()).or_default() += 1;
    }
    counts
}

/// The names of every state file under a checkpoint directory.
fn state_files(checkpoints: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(pipelines) = std::fs::read_dir(checkpoints) else {
        return names;
    };
    for pipeline in pipelines.filter_map(Result::ok) {
        let Ok(entries) = std::fs::read_dir(pipeline.path()) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.path().extension().is_some_and(|e| e == "state")
                && let Ok(files) = std::fs::read_dir(entry.path())
            {
                names.extend(
                    files
                        .filter_map(Result::ok)
                        .map(|f| f.file_name().to_string_lossy().into_owned()),
                );
            }
        }
    }
    names
}

#[test]
fn many_keys_survive_sigkills_with_incremental_checkpoints_and_expiry() {
    // 3,000 devices, each silent now and then for 6 minutes: their keys expire (the rule looks
    // back 5 minutes) and come back.
    let readings = ordered_readings(3_000, 30, 11);
    let options = PipelineOptions {
        partitions: 2,
        checkpoint_interval: "100ms",
        batch_max_events: 512,
        event_time:
            r#"{ field = "Timestamp", out_of_order = { tolerance = "5s", policy = "adjust" } }"#
                .to_owned(),
        ..PipelineOptions::default()
    };

    let uninterrupted = tempfile::tempdir().expect("temp dir");
    let input = uninterrupted.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let reference = anomaly_pipeline(uninterrupted.path(), &input, &options);
    run_to_completion(&reference.config, Duration::from_secs(300));
    let reference_alerts = read_jsonl_dir(&reference.alerts);
    assert_alerts_match(&reference_alerts, &expected_alerts(&readings));

    // The crashed runs spill every base to disk (mapped, not held in memory): the same alerts
    // come out of a state looked up in spill files.
    let crashed = tempfile::tempdir().expect("temp dir");
    let paths = anomaly_pipeline(crashed.path(), &input, &options);
    let spill_dir = crashed.path().join("spill");
    let mut config = std::fs::read_to_string(&paths.config).expect("config");
    config.push_str("\n[state]\nspill_dir = \"spill\"\nspill_above_bytes = 0\n");
    std::fs::write(&paths.config, config).expect("config");
    let mut kills = 0;
    let mut deltas_seen = false;
    let mut spills_seen = 0;
    for (round, jitter) in [0u64, 170, 60, 240, 20].into_iter().enumerate() {
        let before = state_files(&paths.checkpoints);
        let mut process = WeirProcess::run(&paths.config);
        let deadline = Instant::now() + Duration::from_secs(120);
        // Killed once it has written new state files since it started (something to recover).
        // Every other round waits for a new delta, so recovery from a base plus deltas is
        // exercised however slow the machine is (a loaded machine may otherwise be killed after
        // each restart's first, full checkpoint every time).
        let wants_delta = round % 2 == 1;
        let has_new_state = |files: &[String]| {
            files
                .iter()
                .any(|f| !before.contains(f) && (!wants_delta || f.ends_with(".delta")))
        };
        while process.is_running()
            && !has_new_state(&state_files(&paths.checkpoints))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(jitter));
        deltas_seen |= state_files(&paths.checkpoints)
            .iter()
            .any(|f| f.ends_with(".delta"));
        if !process.is_running() {
            break;
        }
        spills_seen += spill_maps(process.id(), &spill_dir);
        process.kill9();
        kills += 1;
    }
    run_to_completion(&paths.config, Duration::from_secs(300));
    assert!(
        kills >= 2,
        "the process finished before it could be killed twice ({kills}); the input is too small"
    );
    assert!(
        deltas_seen,
        "checkpoints wrote deltas: {:?}",
        state_files(&paths.checkpoints)
    );
    assert!(
        spills_seen > 0,
        "the killed processes had spilled bases mapped"
    );
    assert_eq!(
        std::fs::read_dir(&spill_dir).map_or(0, Iterator::count),
        0,
        "spill files are unlinked, so the kills left none behind"
    );
    let alerts = read_jsonl_dir(&paths.alerts);
    assert_eq!(
        multiset(&alerts),
        multiset(&reference_alerts),
        "after {kills} kills"
    );
    assert!(read_jsonl_dir(&paths.dead_letters).is_empty());

    // Devices silent for more than 5 minutes of event time before the end left the state.
    let devices: std::collections::BTreeSet<&str> =
        readings.iter().map(|r| r.device.as_str()).collect();
    let kept = kept_keys(&paths.checkpoints);
    assert!(
        kept > devices.len() / 2 && kept < devices.len(),
        "{kept} keys kept of {} devices",
        devices.len()
    );
}

/// Each restart leaves the files the run before it wrote (a previous owner may still list them
/// during a handoff); once a run has held its partition for three ownership expiries, it deletes
/// them at its next checkpoint, and its own record still restores.
#[test]
fn a_restarted_run_deletes_the_state_files_earlier_runs_left_behind() {
    let readings = ordered_readings(400, 100, 5);
    let mut fed = 0;
    let options = PipelineOptions {
        partitions: 2,
        checkpoint_interval: "100ms",
        source_extra: "follow = true".to_owned(),
        ..PipelineOptions::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &[], &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &options);
    let mut config = std::fs::read_to_string(&paths.config).expect("config");
    config.push_str("\n[checkpoint.ownership]\nexpiry = \"1s\"\n");
    std::fs::write(&paths.config, config).expect("config");
    // Appends the next `count` readings to the followed file: a partition checkpoints only
    // when it has read something new.
    let feed = |fed: &mut usize, count: usize| {
        let end = (*fed + count).min(readings.len());
        let mut text = String::new();
        for reading in &readings[*fed..end] {
            text.push_str(&reading.to_json());
            text.push('\n');
        }
        *fed = end;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .expect("input");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("append");
    };

    // Two runs killed once they wrote state files in both partitions, each leaving its files
    // behind.
    let mut left_behind: Vec<String> = Vec::new();
    for _ in 0..2 {
        feed(&mut fed, 2_000);
        let process = WeirProcess::run(&paths.config);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let written_in_both = (0..2).all(|partition| {
                partition_state_files(&paths.checkpoints, partition)
                    .iter()
                    .any(|f| !left_behind.contains(f))
            });
            if written_in_both {
                std::thread::sleep(Duration::from_millis(50));
                process.kill9();
                let written: Vec<String> = state_files(&paths.checkpoints)
                    .into_iter()
                    .filter(|f| !left_behind.contains(f))
                    .collect();
                left_behind.extend(written);
                break;
            }
            assert!(Instant::now() < deadline, "the run writes state files");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // What the third run must delete: in each partition, the files the runs before it wrote up
    // to the record it restores (those after it, written by a run killed before its next record,
    // are left to a later run).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = weir::checkpoint::LocalCheckpointStore::new(&paths.checkpoints);
    let mut must_go: Vec<(u32, String)> = Vec::new();
    for partition in 0..2 {
        use weir::checkpoint::CheckpointStore as _;
        let restored_seq = runtime
            .block_on(store.load("telemetry", partition))
            .expect("load")
            .expect("a checkpoint")
            .state_seq;
        must_go.extend(
            partition_state_files(&paths.checkpoints, partition)
                .into_iter()
                .filter(|f| file_seq(f) <= restored_seq)
                .map(|f| (partition, f)),
        );
    }
    assert!(
        must_go.len() >= 2,
        "the earlier runs' files in both partitions: {must_go:?}"
    );

    // A third run, fed as it goes: its checkpoints after three expiries (3 s) delete them.
    let process = WeirProcess::run(&paths.config);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        feed(&mut fed, 100);
        let left: Vec<&(u32, String)> = must_go
            .iter()
            .filter(|(p, f)| partition_state_files(&paths.checkpoints, *p).contains(f))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline && fed < readings.len(),
            "the earlier runs' files stay: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "deleted only after three ownership expiries, took {:?}",
        started.elapsed()
    );
    assert!(
        !state_files(&paths.checkpoints).is_empty(),
        "the run's own files stay"
    );
    process.kill9();
    // What the last record lists is still there: the state restores.
    assert!(kept_keys(&paths.checkpoints) > 0);
}

/// The state files of `partition` of the pipeline `telemetry`.
fn partition_state_files(checkpoints: &Path, partition: u32) -> Vec<String> {
    std::fs::read_dir(
        checkpoints
            .join("telemetry")
            .join(format!("{partition}.state")),
    )
    .map(|files| {
        files
            .filter_map(Result::ok)
            .map(|f| f.file_name().to_string_lossy().into_owned())
            .collect()
    })
    .unwrap_or_default()
}

/// The sequence number in a state file's name (`<stage>.<sequence>-<run>.<kind>`).
fn file_seq(name: &str) -> u64 {
    name.split('.')
        .nth(1)
        .and_then(|part| part.split_once('-'))
        .and_then(|(seq, _)| seq.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Spill files (unlinked, so shown as deleted) of `spill_dir` that process `pid` has mapped.
fn spill_maps(pid: u32, spill_dir: &Path) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let dir = spill_dir.display().to_string();
    maps.lines()
        .filter(|l| l.contains(&dir) && l.ends_with("(deleted)"))
        .count()
}

/// Keys in the anomaly stage's checkpointed state, over both partitions.
fn kept_keys(checkpoints: &Path) -> usize {
    use weir::checkpoint::CheckpointStore as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = weir::checkpoint::LocalCheckpointStore::new(checkpoints);
    (0..2)
        .map(|partition| {
            let checkpoint = runtime
                .block_on(store.load("telemetry", partition))
                .expect("load")
                .expect("a checkpoint");
            let parts = checkpoint.state_parts.get("anomaly").expect("state files");
            weir::plugin::KeyedState::from_changes(parts.iter().cloned())
                .expect("state")
                .len()
        })
        .sum()
}
