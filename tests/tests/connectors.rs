//! The connector kinds no other test runs through the `weir` binary (issue 13's matrix): the
//! telemetry simulator and the bookings generator as sources, standard output as a sink. Each
//! runs `weir run` on a configuration file and checks what it wrote against what the README
//! promises of the kind. (The other kinds: see the README's source and sink tables.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{plugin_path, read_jsonl_dir, weir_binary};

/// The simulator's and the generator's first event time.
const START: &str = "2026-11-01T00:00:00Z";

fn millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("timestamp `{text}`: {e}"))
        .timestamp_millis()
}

/// Runs `weir run` on `config` to its end; returns its standard output (records of stdout sinks
/// and the summary) and its log (standard error). The process is killed, by its id, on timeout.
fn run(config: &Path) -> (String, String) {
    let stdout_path = config.with_extension("stdout");
    let log_path = config.with_extension("log");
    let mut child = Command::new(weir_binary())
        .args(["run", "--config"])
        .arg(config)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::from(
            std::fs::File::create(&stdout_path).expect("stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&log_path).expect("log file"),
        ))
        .spawn()
        .expect("start weir");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "weir did not finish; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(status.success(), "weir exited with {status}; log:\n{log}");
    (stdout, log)
}

fn multiset(values: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in values {
        *counts.entry(value.to_string()).or_default() += 1;
    }
    counts
}

/// The simulator (`kind = "simulator"`) into a stdout sink and a file sink at once (an output
/// naming a list of sinks): `max_events` readings from `devices` devices, reading `r` from one
/// device at `start_time + r · reading_interval / devices`; a duplicate is sent twice, identical.
/// Standard output holds exactly the records of the file sink, one JSON document a line.
#[test]
fn the_simulator_source_and_the_stdout_sink_through_weir_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (readings, devices) = (600_i64, 6_i64);
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.telemetry]
kind = "simulator"
partitions = 3
devices = {devices}
rate = 0
max_events = {readings}
seed = 7
start_time = "{START}"
reading_interval = "6s"
duplicate_ratio = 0.02

[sinks.screen]
kind = "stdout"

[sinks.readings]
kind = "file"
path = "readings"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.telemetry]
source = "telemetry"
event_time = {{ field = "Timestamp" }}
dead_letter = "dead_letters"

[[pipelines.telemetry.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = ["screen", "readings"] }}
"#,
            plugin = plugin_path("passthrough").display()
        ),
    )
    .expect("config");
    let (stdout, log) = run(&config);

    let printed: Vec<Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let written = read_jsonl_dir(&dir.path().join("readings"));
    assert_eq!(multiset(&printed), multiset(&written), "stdout = file sink");
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());

    // Distinct readings: exactly `max_events`, one per 1 s of event time (6 s / 6 devices), each
    // device in turn; duplicates identical to their reading.
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for record in &printed {
        let id = record["EventId"].as_str().expect("EventId").to_owned();
        if let Some(first) = by_id.insert(id, record) {
            assert_eq!(first, record, "a duplicate is identical");
        }
    }
    assert_eq!(by_id.len(), readings as usize);
    let duplicates = printed.len() - by_id.len();
    assert!(duplicates > 0 && duplicates < 40, "{duplicates} duplicates");
    let start = millis(START);
    let mut times: Vec<(i64, String)> = by_id
        .values()
        .map(|r| {
            for field in [
                "Location",
                "DeviceType",
                "Temperature",
                "Humidity",
                "Pressure",
                "BatteryLevel",
                "SignalStrength",
            ] {
                assert!(!r[field].is_null(), "{field} missing from {r}");
            }
            (
                millis(r["Timestamp"].as_str().expect("Timestamp")),
                r["DeviceId"].as_str().expect("DeviceId").to_owned(),
            )
        })
        .collect();
    times.sort();
    let expected: Vec<i64> = (0..readings).map(|r| start + r * 1000).collect();
    assert_eq!(times.iter().map(|(t, _)| *t).collect::<Vec<_>>(), expected);
    let first_round: Vec<&String> = times[..devices as usize].iter().map(|(_, d)| d).collect();
    assert_eq!(
        first_round.iter().collect::<BTreeSet<_>>().len(),
        devices as usize
    );
    for (r, (_, device)) in times.iter().enumerate() {
        assert_eq!(device, first_round[r % devices as usize], "reading {r}");
    }
    assert!(
        stdout.contains(&format!(
            "pipeline `telemetry`: {} events in",
            printed.len()
        )),
        "{stdout}\n{log}"
    );
}

/// The bookings generator (`kind = "bookings"`): `max_orders` bookings one `booking_interval`
/// apart, every order paid once (no missing payment configured) after its booking and at most
/// three deadlines later, partitioned by `OrderId` (a booking and its payment in one partition).
#[test]
fn the_bookings_source_through_weir_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let orders = 300_i64;
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.bookings]
kind = "bookings"
partitions = 3
rate = 0
max_orders = {orders}
seed = 11
start_time = "{START}"
booking_interval = "2s"
payment_deadline = "1m"
missing_payment_ratio = 0.0
failed_payment_ratio = 0.0

[sinks.events]
kind = "file"
path = "events"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.bookings]
source = "bookings"
event_time = {{ field = "Timestamp" }}
dead_letter = "dead_letters"

[[pipelines.bookings.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "events" }}
"#,
            plugin = plugin_path("passthrough").display()
        ),
    )
    .expect("config");
    let (stdout, log) = run(&config);
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());

    // OrderId -> (partition file, booking time, payment time).
    let mut bookings: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut payments: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let files = std::fs::read_dir(dir.path().join("events")).expect("sink dir");
    for file in files {
        let path = file.expect("entry").path();
        let partition = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for line in std::fs::read_to_string(&path).expect("read").lines() {
            let event: Value = serde_json::from_str(line).expect("JSON");
            let order = event["OrderId"].as_str().expect("OrderId").to_owned();
            let time = millis(event["Timestamp"].as_str().expect("Timestamp"));
            let into = if event.get("PaymentId").is_some() {
                assert_eq!(event["Status"], "Succeeded", "{event}");
                &mut payments
            } else {
                assert!(
                    event["Seats"].as_array().is_some_and(|s| !s.is_empty()),
                    "{event}"
                );
                &mut bookings
            };
            assert!(
                into.insert(order, (partition.clone(), time)).is_none(),
                "sent twice: {event}"
            );
        }
    }
    assert_eq!(bookings.len(), orders as usize);
    assert_eq!(
        payments.keys().collect::<Vec<_>>(),
        bookings.keys().collect::<Vec<_>>(),
        "every order paid once"
    );
    let start = millis(START);
    let mut booking_times: Vec<i64> = bookings.values().map(|(_, t)| *t).collect();
    booking_times.sort_unstable();
    assert_eq!(
        booking_times,
        (0..orders).map(|n| start + n * 2000).collect::<Vec<_>>()
    );
    let partitions: BTreeSet<&String> = bookings.values().map(|(p, _)| p).collect();
    assert_eq!(partitions.len(), 3, "{partitions:?}");
    for (order, (partition, booked)) in &bookings {
        let (paid_in, paid) = &payments[order];
        assert_eq!(
            paid_in, partition,
            "order {order}: booking and payment apart"
        );
        assert!(
            *paid > *booked && *paid <= booked + 3 * 60_000,
            "order {order}: booked {booked}, paid {paid}"
        );
    }
    assert!(
        stdout.contains(&format!("pipeline `bookings`: {} events in", 2 * orders)),
        "{stdout}\n{log}"
    );
}
