//! Helpers for the service tests: a small HTTP client for the admin API, plugin versions computed
//! independently (SHA-256 of the file), a steady feeder of telemetry into a followed file, and a
//! pipeline configuration with the admin API and plugin-version columns.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::telemetry::Reading;

/// The admin token the test configurations use.
pub const TOKEN: &str = "test-token-7f3a";

/// A plugin's version as Weir names it, computed here from the file: the first 12 hex digits of
/// the SHA-256 of its bytes.
pub fn version_of(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).expect("read plugin"));
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Copies `from` over `to` the safe way: write a temporary file in the same directory, then
/// rename it into place.
pub fn install_atomically(from: &Path, to: &Path) {
    let temporary = to.with_extension("wasm.partial");
    std::fs::copy(from, &temporary).expect("copy plugin");
    std::fs::rename(&temporary, to).expect("rename plugin into place");
}

/// One HTTP/1.1 request; returns the status and the body.
pub fn http(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream.write_all(body).expect("send body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size.min(rest.len())]);
        text = rest.get(size + 2..).unwrap_or("");
    }
    out
}

/// `GET path` as JSON; panics unless 200.
pub fn get_json(address: &str, path: &str) -> Value {
    let (status, body) = http(address, "GET", path, None, b"");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The plugin report of `stage` in `pipeline` from `GET /plugins/{pipeline}/{stage}`.
pub fn plugin_report(address: &str, pipeline: &str, stage: &str) -> Value {
    get_json(address, &format!("/plugins/{pipeline}/{stage}"))
}

/// Events read by every partition of `pipeline`, from `GET /pipelines`.
pub fn events_in(address: &str, pipeline: &str) -> u64 {
    let pipelines = get_json(address, "/pipelines");
    pipelines["pipelines"]
        .as_array()
        .expect("pipelines")
        .iter()
        .filter(|p| p["pipeline"] == pipeline)
        .flat_map(|p| p["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| p["events_in"].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until `/readyz` answers 200: every pipeline started and its plugin slots registered (the
/// admin API answers before that, while the pipelines start).
pub fn wait_ready(address: &str, timeout: Duration) {
    wait_until(timeout, "/readyz to answer 200", || {
        http(address, "GET", "/readyz", None, b"").0 == 200
    });
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One sample as the Prometheus parser gives it: name, labels, value.
pub type Sample = (String, Value, f64);

/// One metric family: name, type, samples.
pub type Family = (String, String, Vec<Sample>);

/// Parses Prometheus text with the Python `prometheus_client` package's own parser.
pub fn parse_prometheus(text: &str) -> Vec<Family> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    out.append([family.name, family.type, [[s.name, s.labels, s.value] for s in family.samples]])
print(json.dumps(out))
"#;
    let mut child = crate::python_command(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let output = child.wait_with_output().expect("python");
    assert!(
        output.status.success(),
        "prometheus_client could not parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Vec<Family> = serde_json::from_slice(&output.stdout).expect("parser output");
    families
}

/// Appends readings to a JSON Lines file at a steady pace, from a thread.
#[derive(Debug)]
pub struct Feeder {
    written: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Feeder {
    /// Starts appending `readings` to `path`, `chunk` lines every `every`.
    pub fn start(path: &Path, readings: Vec<Reading>, chunk: usize, every: Duration) -> Feeder {
        let lines = readings.iter().map(Reading::to_json).collect();
        Feeder::start_lines(path, lines, chunk, every)
    }

    /// Starts appending `lines` (JSON documents, one a line) to `path`, `chunk` lines every
    /// `every`.
    pub fn start_lines(path: &Path, lines: Vec<String>, chunk: usize, every: Duration) -> Feeder {
        let written = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let path: PathBuf = path.to_path_buf();
        let (thread_written, thread_stop) = (written.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open input");
            for group in lines.chunks(chunk) {
                if thread_stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut text = String::new();
                for line in group {
                    text.push_str(line);
                    text.push('\n');
                }
                file.write_all(text.as_bytes()).expect("append input");
                file.flush().expect("flush input");
                thread_written.fetch_add(group.len(), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        Feeder {
            written,
            stop,
            thread: Some(thread),
        }
    }

    /// Lines (readings) written so far.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops writing (after the chunk in progress) and returns how many lines (readings) were
    /// written: the first that many of those given.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("feeder thread");
        }
        self.written()
    }

    /// Waits until every line (reading) is written.
    pub fn join(mut self) -> usize {
        if let Some(thread) = self.thread.take() {
            thread.join().expect("feeder thread");
        }
        self.written()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Options of [`swap_pipeline`].
#[derive(Debug, Clone)]
pub struct SwapOptions {
    /// Partitions of the source.
    pub partitions: u32,
    /// Events a new version is on probation for.
    pub probation_events: u64,
    /// Largest share of trapping events during probation.
    pub max_trap_ratio: f64,
    /// Checkpoint interval, as configuration text.
    pub checkpoint_interval: &'static str,
    /// The pipeline's `event_time` table, as configuration text.
    pub event_time: &'static str,
}

impl Default for SwapOptions {
    fn default() -> Self {
        SwapOptions {
            partitions: 4,
            probation_events: 400,
            max_trap_ratio: 0.05,
            checkpoint_interval: "300ms",
            event_time: r#"{ field = "Timestamp" }"#,
        }
    }
}

/// Lays out a hot-swap test's files: `initial` copied to the watched `<dir>/plugins/<plugin>`,
/// and an empty followed input `<dir>/<input>`. Returns their paths, in that order.
pub fn plugin_and_input(
    dir: &Path,
    plugin: &str,
    initial: &Path,
    input: &str,
) -> (PathBuf, PathBuf) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let plugin = plugins.join(plugin);
    std::fs::copy(initial, &plugin).expect("copy plugin");
    let input = dir.join(input);
    std::fs::write(&input, "").expect("input");
    (plugin, input)
}

/// Paths of a pipeline under test whose output is one Delta table.
#[derive(Debug, Clone)]
pub struct StagePaths {
    /// The configuration file.
    pub config: PathBuf,
    /// The followed input file.
    pub input: PathBuf,
    /// The stage's plugin file (watched).
    pub plugin: PathBuf,
    /// The Delta table.
    pub table: PathBuf,
    /// Dead letters.
    pub dead_letters: PathBuf,
}

/// Paths of a [`swap_pipeline`].
#[derive(Debug, Clone)]
pub struct SwapPaths {
    /// The configuration file.
    pub config: PathBuf,
    /// The followed input file.
    pub input: PathBuf,
    /// The stage's plugin file (watched).
    pub plugin: PathBuf,
    /// Delta table of every reading, with `PluginVersion`, `Partition` and `Position` columns.
    pub raw_table: PathBuf,
    /// Delta table of the alerts, with `PluginVersion`.
    pub alerts_table: PathBuf,
    /// Dead letters.
    pub dead_letters: PathBuf,
    /// Checkpoints.
    pub checkpoints: PathBuf,
}

/// A telemetry pipeline reading a followed JSON Lines file through the anomaly plugin (first
/// version: `initial`, copied into `<dir>/plugins/anomaly.wasm`, the watched file) into two Delta
/// tables that record which plugin version produced each row; admin API on a free port.
pub fn swap_pipeline(dir: &Path, initial: &Path, options: &SwapOptions) -> SwapPaths {
    let (plugin, input) = plugin_and_input(dir, "anomaly.wasm", initial, "telemetry.jsonl");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "{interval}"

[plugins]
watch_settle = "150ms"
rollback = {{ probation_events = {probation}, max_trap_ratio = {trap_ratio}, max_error_ratio = 0.5 }}

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[sources.telemetry]
kind = "file"
path = "telemetry.jsonl"
partitions = {partitions}
key_field = "DeviceId"
follow = true

[sinks.raw_telemetry]
kind = "delta"
path = "delta/raw_telemetry"
columns = [
  {{ name = "EventId", type = "string", nullable = false }},
  {{ name = "DeviceId", type = "string", nullable = false }},
  {{ name = "Temperature", type = "double" }},
  {{ name = "Timestamp", type = "timestamp" }},
  {{ name = "PluginVersion", type = "string", value = "plugin_version" }},
  {{ name = "Partition", type = "integer", value = "partition" }},
  {{ name = "Position", type = "long", value = "position" }},
]

[sinks.alerts]
kind = "delta"
path = "delta/alerts"
columns = [
  {{ name = "EventId", type = "string", nullable = false }},
  {{ name = "DeviceId", type = "string" }},
  {{ name = "Location", type = "string" }},
  {{ name = "Temperature", type = "double" }},
  {{ name = "PrevTemperature", type = "double" }},
  {{ name = "TempDelta", type = "double" }},
  {{ name = "EventTime", type = "string" }},
  {{ name = "AlertType", type = "string" }},
  {{ name = "Severity", type = "string" }},
  {{ name = "PluginVersion", type = "string", value = "plugin_version" }},
  {{ name = "Partition", type = "integer", value = "partition" }},
  {{ name = "Position", type = "long", value = "position" }},
]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.telemetry]
source = "telemetry"
event_time = {event_time}
dead_letter = "dead_letters"
batch = {{ max_events = 64, max_wait = "20ms" }}

[[pipelines.telemetry.stages]]
name = "anomaly"
plugin = "plugins/anomaly.wasm"
outputs = {{ alerts = "alerts", rows = "raw_telemetry" }}
"#,
        interval = options.checkpoint_interval,
        probation = options.probation_events,
        trap_ratio = options.max_trap_ratio,
        partitions = options.partitions,
        event_time = options.event_time,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    SwapPaths {
        config: path,
        input,
        plugin,
        raw_table: dir.join("delta/raw_telemetry"),
        alerts_table: dir.join("delta/alerts"),
        dead_letters: dir.join("dead_letters"),
        checkpoints: dir.join("checkpoints"),
    }
}

/// Checks what the admin API and `/metrics` report after stage `pipeline`/`stage` rolled back by
/// itself from `bad` to `good`: the activation with its cause and reason, the bad version listed
/// as rolled back, and the rollback counted once.
pub fn assert_automatic_rollback_reported(
    admin: &str,
    pipeline: &str,
    stage: &str,
    good: &str,
    bad: &str,
) -> String {
    let report = plugin_report(admin, pipeline, stage);
    let rollback = report["activations"]
        .as_array()
        .expect("activations")
        .iter()
        .find(|a| a["cause"] == "automatic_rollback")
        .expect("rollback")
        .clone();
    assert_eq!(rollback["version"], good);
    assert_eq!(rollback["previous"], bad);
    let reason = rollback["reason"].as_str().expect("reason");
    assert!(reason.contains("trapped on"), "{reason}");
    let bad_status = report["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["version"] == bad)
        .expect("the bad version is listed")["status"]
        .clone();
    assert_eq!(bad_status, "rolled_back");
    let (_, metrics) = http(admin, "GET", "/metrics", None, b"");
    assert!(
        metrics.contains(&format!(
            "weir_plugin_rollbacks_total{{pipeline=\"{pipeline}\",stage=\"{stage}\"}} 1"
        )),
        "{metrics}"
    );
    metrics
}

/// `bytes` (a component) with a custom section named `weir-test-version` holding `tag`: the same
/// code under another content hash, that is, another version.
pub fn another_version(bytes: &[u8], tag: &[u8]) -> Vec<u8> {
    let name = b"weir-test-version";
    let size = 1 + name.len() + tag.len();
    assert!(size < 128, "one-byte LEB128 sizes");
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push(size as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(tag);
    out
}

/// Uploads `bytes` as a new version of `stage` of `pipeline` through the admin API (with
/// [`TOKEN`]) and checks the answer: accepted and activated (the upload answers once it is).
pub fn upload_activated(admin: &str, pipeline: &str, stage: &str, bytes: &[u8]) {
    let (status, body) = http(
        admin,
        "POST",
        &format!("/plugins/{pipeline}/{stage}"),
        Some(TOKEN),
        bytes,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"outcome\":\"activated\""), "{body}");
}

/// Each version in an admin API plugin report, with how it was loaded (`config`, `file`, `api`).
pub fn version_origins(report: &Value) -> BTreeMap<String, String> {
    report["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_str().expect("version").to_owned(),
                v["origin"].as_str().expect("origin").to_owned(),
            )
        })
        .collect()
}

/// The version `stage` of `pipeline` runs now, from the admin API.
pub fn active_version(admin: &str, pipeline: &str, stage: &str) -> String {
    plugin_report(admin, pipeline, stage)["active"]
        .as_str()
        .expect("active")
        .to_owned()
}

/// Waits until `pipeline` read `count` more events than it had when called.
pub fn wait_for_more_events(admin: &str, pipeline: &str, count: u64, timeout: Duration) {
    let start = events_in(admin, pipeline);
    wait_until(timeout, "more events", || {
        events_in(admin, pipeline) >= start + count
    });
}

/// Records `stage` (of any pipeline) emitted so far, from `/metrics`.
pub fn stage_records_out(admin: &str, stage: &str) -> u64 {
    let (status, text) = http(admin, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    text.lines()
        .filter(|line| {
            line.starts_with("weir_stage_records_out_total{")
                && line.contains(&format!("stage=\"{stage}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The plugin version of every row (its `PluginVersion` column), checked to be one of `known`;
/// and, per partition (`Partition`), the versions in `Position` order must be a subsequence of
/// `order` (a partition switches only forward, at batch boundaries). Returns the versions used.
pub fn versions_by_row(rows: &[Value], known: &[&str], order: &[&str]) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut by_partition: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for row in rows {
        let version = row["PluginVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("a row without its version: {row}"))
            .to_owned();
        assert!(known.contains(&version.as_str()), "unknown version: {row}");
        by_partition
            .entry(row["Partition"].as_i64().expect("Partition"))
            .or_default()
            .push((row["Position"].as_i64().expect("Position"), version.clone()));
        used.insert(version);
    }
    for (partition, mut rows) in by_partition {
        rows.sort();
        let mut next = 0;
        for (position, version) in &rows {
            match order[next..].iter().position(|v| v == version) {
                Some(offset) => next += offset,
                None => panic!(
                    "partition {partition}: version {version} at position {position} after {:?}",
                    &order[..=next]
                ),
            }
        }
    }
    used
}
