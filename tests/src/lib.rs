//! Helpers shared by Weir's integration tests: where the plugins and the `weir` binary are, how to
//! run and kill it, how to read outputs back (Delta tables through the Python `deltalake`
//! package, an independent reader), and telemetry test data with an independent expectation of
//! the anomaly rule.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failure is the test's failure"
)]

pub mod bookings;
pub mod eventhubs;
pub mod examples;
pub mod kafka;
pub mod kafka_proxies;
pub mod librdkafka;
pub mod scale_out;
pub mod script_plugins;
pub mod servers;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod token_service;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("WEIR_WORKSPACE_DIR"))
}

/// The compiled component of plugin `name` (file stem, such as `telemetry_anomaly`).
pub fn plugin_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("WEIR_PLUGIN_DIR")).join(format!("{name}.wasm"));
    assert!(path.is_file(), "plugin {} was not built", path.display());
    path
}

/// The Python interpreter with the `deltalake` package: `WEIR_PYTHON`, else the project's venv.
pub fn python() -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join(".venv/bin/python"));
    assert!(
        python.is_file(),
        "no Python interpreter at {}: run `scripts/setup` (it creates .venv with the deltalake package) or set WEIR_PYTHON",
        python.display()
    );
    python
}

/// A command that runs `script` with the project's Python interpreter (arguments and stdin are the
/// caller's). The script ends in `os._exit(0)` after flushing its output: pyarrow's and
/// deltalake's native threads were seen to abort the interpreter's teardown ("terminate called
/// without an active exception") after the script's work was done. An exception in the script
/// still exits non-zero before reaching it.
pub fn python_command(script: &str) -> Command {
    let mut command = Command::new(python());
    command.arg("-c").arg(format!(
        "{script}\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"
    ));
    command
}

/// A Delta table as the Python `deltalake` package reads it.
#[derive(Debug, Clone)]
pub struct DeltaRead {
    /// Table version.
    pub version: i64,
    /// Partition columns.
    pub partition_columns: Vec<String>,
    /// Every row, as JSON (timestamps and dates as text).
    pub rows: Vec<Value>,
}

/// Reads the Delta table at `path` with the Python `deltalake` package.
pub fn read_delta(path: &Path) -> DeltaRead {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
table = DeltaTable(sys.argv[1])
rows = table.to_pyarrow_table().to_pylist()
print(json.dumps({"version": table.version(), "partition_columns": table.metadata().partition_columns}))
for row in rows:
    print(json.dumps(row, default=str))
"#;
    let output = python_command(SCRIPT)
        .arg(path)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python deltalake could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let mut lines = text.lines();
    let header: Value =
        serde_json::from_str(lines.next().expect("header line")).expect("header json");
    DeltaRead {
        version: header["version"].as_i64().expect("version"),
        partition_columns: serde_json::from_value(header["partition_columns"].clone())
            .expect("partition columns"),
        rows: lines
            .map(|l| serde_json::from_str(l).expect("row json"))
            .collect(),
    }
}

/// Every JSON line of every `*.jsonl` file under `dir`, in file-name then line order.
pub fn read_jsonl_dir(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .expect("read jsonl")
                .lines()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|e| {
                        panic!("bad JSON line in {}: {e}: {line}", file.display())
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `weir` command line built by this package (`weir-test-bin`, next to the test executables).
pub fn weir_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test executables live in <target>/<profile>/deps; binaries one level up.
    let profile_dir = exe.parent().and_then(Path::parent).expect("target layout");
    let binary = profile_dir.join(format!("weir-test-bin{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// User and system seconds of this process's reaped children (`cutime` and `cstime` of
/// `/proc/self/stat`, in clock ticks of 1/100 s): read before and after running `weir` to the
/// end, the CPU time that run took on every core.
pub fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    stat_seconds(&stat, 13).expect("cutime and cstime in /proc/self/stat")
}

/// The sum of two consecutive clock-tick fields of a `/proc/.../stat` line, in seconds;
/// `index` counts from the state (field 3), after the command name, which may hold spaces.
fn stat_seconds(stat: &str, index: usize) -> Option<f64> {
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = after.split_whitespace().skip(index);
    let mut tick = || fields.next()?.parse::<u64>().ok();
    Some((tick()? + tick()?) as f64 / 100.0)
}

/// User and system seconds of this process's threads whose name starts with `prefix` (live
/// threads only: `utime` and `stime` of `/proc/self/task/*/stat`), to tell apart the parts of a
/// benchmark that run in its own process (an endpoint, a client).
pub fn thread_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // utime and stime
            stat_seconds(&stat, 11)
        })
        .sum()
}

/// A running `weir` process.
#[derive(Debug)]
pub struct WeirProcess {
    child: Child,
    log: PathBuf,
}

impl WeirProcess {
    /// Starts `weir run --config <config>`, logging to `<config>.log` (appended).
    pub fn run(config: &Path) -> WeirProcess {
        Self::spawn(&["run", "--config"], config)
    }

    /// Starts `weir <args> <config>`.
    pub fn spawn(args: &[&str], config: &Path) -> WeirProcess {
        Self::spawn_with_env(args, config, &[])
    }

    /// Starts `weir <args> <config>` with extra environment variables.
    pub fn spawn_with_env(args: &[&str], config: &Path, env: &[(&str, &str)]) -> WeirProcess {
        let log = config.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(weir_binary())
            .args(args)
            .arg(config)
            .env(
                "WEIR_LOG",
                std::env::var("WEIR_LOG").unwrap_or_else(|_| {
                    "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn".to_owned()
                }),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::from(log_file.try_clone().expect("log file")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start weir");
        WeirProcess { child, log }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for it to exit, at most `timeout`; kills it and panics with its log on timeout.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "weir did not finish within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log says a pipeline started `count` times in all (the log is appended to
    /// across runs of the same configuration), at most `timeout`.
    pub fn wait_for_start(&mut self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_text().matches("pipeline started").count() < count {
            assert!(
                Instant::now() < deadline && self.is_running(),
                "weir did not start; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin API's address, once the process has logged it (panics after `timeout`). Only
    /// lines logged by this process count (the log file is appended to across runs).
    pub fn admin_address(&self, skip_bytes: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if let Some(rest) = log
                .get(skip_bytes..)
                .and_then(|l| l.split("admin API listening on http://").nth(1))
            {
                return rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "weir did not start its admin API; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Length of the log so far (to read only what comes after).
    pub fn log_len(&self) -> usize {
        self.log_text().len()
    }
}

/// Log lines of a process a failing test shows.
const LOG_LINES_ON_FAILURE: usize = 300;

impl Drop for WeirProcess {
    fn drop(&mut self) {
        // Never leave a process behind, whatever the test did.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test's temporary directory, and the log in it, go with it: show the end of
        // the log where the test's output is kept (the harness prints it with the failure).
        if std::thread::panicking() {
            eprintln!(
                "--- the end of the log of weir process {} ({}) ---\n{}\n--- end of log ---",
                self.child.id(),
                self.log.display(),
                log_tail(&self.log_text())
            );
        }
    }
}

/// The last [`LOG_LINES_ON_FAILURE`] lines of a process's log.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..].join("\n")
}

/// Runs `weir run` on `config` to completion and returns its log; panics if it fails.
pub fn run_to_completion(config: &Path, timeout: Duration) -> String {
    let process = WeirProcess::run(config);
    let log = process.log.clone();
    let status = process.wait(timeout);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "weir exited with {status}; log:\n{text}");
    text
}

/// Waits until `dir` (a pipeline's directory in the local checkpoint store) holds a checkpoint.
pub fn wait_for_first_checkpoint(dir: &Path, timeout: Duration) {
    servers::wait_for("a first checkpoint", timeout, || {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".ckpt"))
        })
    });
}

/// Milliseconds since the Unix epoch of a timestamp as the Python reader prints it
/// (`2026-11-01 00:05:00+00:00`, with or without a fraction of a second).
pub fn python_timestamp_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z")
        .unwrap_or_else(|e| panic!("timestamp `{text}`: {e}"))
        .timestamp_millis()
}

/// Compares two floats from JSON within 1e-9.
pub fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9,
        _ => a == b,
    }
}

/// The owner id a `weir` process claims partitions under, from its log's "partition acquired"
/// lines (`owner=<id> previous_owner=<id>`: the log also names other processes' ids).
pub fn logged_owner_id(log: &str) -> Option<String> {
    strip_ansi(log)
        .lines()
        .filter(|line| line.contains("partition acquired"))
        .find_map(|line| line.split(" owner=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

/// The text without terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Stops every process still running with SIGTERM and checks each exits cleanly; returns their
/// logs, read before the stop.
pub fn stop_all(processes: Vec<Option<WeirProcess>>) -> Vec<String> {
    let logs = processes
        .iter()
        .flatten()
        .map(WeirProcess::log_text)
        .collect();
    for process in processes.iter().flatten() {
        process.terminate();
    }
    for process in processes.into_iter().flatten() {
        let (pid, log) = (process.child.id(), process.log.clone());
        let status = process.wait(std::time::Duration::from_secs(60));
        if !status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "weir process {pid} ended with {status}; the end of its log:\n{}",
                log_tail(&log)
            );
        }
    }
    logs
}
