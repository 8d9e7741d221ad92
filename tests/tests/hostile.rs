//! Hostile plugins (issue 4, evidence 3), each in its own test: an infinite loop, a memory bomb, a
//! panic, an attempt to read a file, to open a socket and to read an environment variable. The
//! host stays up (the run ends normally), the reason is reported in the dead letters, nothing
//! leaks, and another pipeline in the same process is unaffected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use weir_tests::telemetry::{
    assert_alerts_match, expected_alerts, generated_readings, write_input,
};
use weir_tests::{WeirProcess, plugin_path, read_jsonl_dir};

const EVENTS: usize = 20;
/// Events marked poison for the plugins that misbehave only on those.
const POISON: [usize; 2] = [7, 13];

struct Run {
    dir: tempfile::TempDir,
    log: String,
}

impl Run {
    fn out(&self, sink: &str) -> Vec<Value> {
        read_jsonl_dir(&self.dir.path().join(sink))
    }
}

/// Runs a `hostile` pipeline (plugin `plugin` with `config`) next to a healthy anomaly pipeline,
/// to completion; checks the healthy pipeline's alerts.
fn run(plugin: &str, config: &str, env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let hostile_input = dir.path().join("hostile.jsonl");
    let text: String = (0..EVENTS)
        .map(|n| format!("{{\"n\":{n},\"poison\":{}}}\n", POISON.contains(&n)))
        .collect();
    std::fs::write(&hostile_input, text).expect("input");
    let readings = generated_readings(10, 40, 9);
    let healthy_input = dir.path().join("telemetry.jsonl");
    write_input(&healthy_input, &readings, &[]);
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.hostile]
kind = "file"
path = "{hostile}"

[sources.telemetry]
kind = "file"
path = "{healthy}"
partitions = 2
key_field = "DeviceId"

[sinks.hostile_out]
kind = "file"
path = "hostile_out"

[sinks.leaks]
kind = "file"
path = "leaks"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[sinks.alerts]
kind = "file"
path = "alerts"

[sinks.rows]
kind = "file"
path = "rows"

[pipelines.hostile]
source = "hostile"
dead_letter = "dead_letters"
batch = {{ max_events = 8, max_wait = "20ms" }}

[[pipelines.hostile.stages]]
name = "hostile"
plugin = "{plugin}"
outputs = {{ out = "hostile_out", leak = "leaks" }}
config = {config}
call_timeout = "300ms"
max_memory_bytes = 33554432

[pipelines.telemetry]
source = "telemetry"
event_time = {{ field = "Timestamp" }}
dead_letter = "dead_letters"

[[pipelines.telemetry.stages]]
name = "anomaly"
plugin = "{anomaly}"
outputs = {{ alerts = "alerts", rows = "rows" }}
"#,
        hostile = hostile_input.display(),
        healthy = healthy_input.display(),
        plugin = plugin_path(plugin).display(),
        anomaly = plugin_path("telemetry_anomaly").display(),
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("config");
    let process = WeirProcess::spawn_with_env(&["run", "--config"], &path, env);
    let status = process.wait(Duration::from_secs(240));
    let log = std::fs::read_to_string(path.with_extension("log")).unwrap_or_default();
    assert!(
        status.success(),
        "the host stays up and ends normally: {log}"
    );
    let run = Run { dir, log };
    // The other pipeline is unaffected.
    assert_eq!(
        run.out("rows").len(),
        readings.len(),
        "healthy pipeline complete"
    );
    assert_alerts_match(&run.out("alerts"), &expected_alerts(&readings));
    assert!(
        run.out("leaks").is_empty(),
        "nothing leaked: {:?}",
        run.out("leaks")
    );
    run
}

fn letters(run: &Run) -> Vec<Value> {
    run.out("dead_letters")
        .into_iter()
        .filter(|l| l["pipeline"] == "hostile")
        .collect()
}

/// The poison events are dead-lettered as traps with `reason`, the others went through.
fn only_poison_trapped(run: &Run, reason: &str) {
    let letters = letters(run);
    assert_eq!(letters.len(), POISON.len(), "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter["kind"], "trap", "{letter}");
        assert_eq!(letter["stage"], "hostile");
        assert!(letter["plugin_version"].is_string(), "{letter}");
        assert!(letter["position"].is_u64() && letter["partition"].is_u64());
        let text = letter["reason"].as_str().expect("reason");
        assert!(
            text.contains(reason),
            "reason `{text}` should say `{reason}`"
        );
        let body: Value =
            serde_json::from_str(letter["body"].as_str().expect("body")).expect("json");
        assert_eq!(body["poison"], true, "only poison events: {letter}");
    }
    let out = run.out("hostile_out");
    assert_eq!(out.len(), EVENTS - POISON.len());
    assert!(out.iter().all(|e| e["poison"] == false));
}

/// Every event rejected by the plugin with a reason containing `reason`.
fn all_rejected(run: &Run, reason: &str) -> String {
    let letters = letters(run);
    assert_eq!(letters.len(), EVENTS, "{letters:#?}");
    let mut text = String::new();
    for letter in &letters {
        assert_eq!(letter["kind"], "rejected", "{letter}");
        text = letter["reason"].as_str().expect("reason").to_owned();
        assert!(
            text.contains(reason),
            "reason `{text}` should say `{reason}`"
        );
    }
    assert!(run.out("hostile_out").is_empty());
    text
}

#[test]
fn an_infinite_loop_is_interrupted_at_the_call_deadline() {
    let run = run("hostile_loop", "{}", &[]);
    only_poison_trapped(&run, "deadline exceeded: the call ran longer than 300ms");
}

#[test]
fn a_memory_bomb_is_stopped_at_the_memory_limit() {
    let run = run("hostile_memory", "{}", &[]);
    only_poison_trapped(&run, "memory limit exceeded");
    assert!(run.log.contains("limit of 33554432 bytes"), "{}", run.log);
}

#[test]
fn a_panic_traps_only_its_event() {
    let run = run("hostile_panic", "{}", &[]);
    only_poison_trapped(&run, "panic");
    let letters = letters(&run);
    assert!(
        letters[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("hostile-panic: poison event at position")),
        "the panic message is the reason: {letters:?}"
    );
}

#[test]
fn reading_a_host_file_is_refused() {
    let secret_dir = tempfile::tempdir().expect("temp dir");
    let secret: PathBuf = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "the-secret-content").expect("secret");
    let run = run(
        "hostile_file",
        &format!("{{ path = \"{}\" }}", secret.display()),
        &[],
    );
    let reason = all_rejected(&run, &format!("cannot read {}", secret.display()));
    assert!(reason.contains("listing / gave Err"), "{reason}");
    assert_no_secret(run.dir.path(), "the-secret-content");
}

#[test]
fn opening_a_socket_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address");
    let run = run(
        "hostile_socket",
        &format!("{{ address = \"{address}\" }}"),
        &[],
    );
    all_rejected(&run, &format!("cannot connect to {address}"));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the plugin reached the listener: {other:?}"),
    }
}

#[test]
fn reading_an_environment_variable_is_refused() {
    let run = run(
        "hostile_env",
        "{ name = \"WEIR_TEST_SECRET\" }",
        &[("WEIR_TEST_SECRET", "env-secret-value")],
    );
    all_rejected(
        &run,
        "cannot read environment variable WEIR_TEST_SECRET: environment variable not found; 0 variables visible",
    );
    assert_no_secret(run.dir.path(), "env-secret-value");
}

/// No output file under `dir` contains `secret`.
fn assert_no_secret(dir: &Path, secret: &str) {
    for sink in ["hostile_out", "leaks", "dead_letters", "rows", "alerts"] {
        for line in read_jsonl_dir(&dir.join(sink)) {
            assert!(!line.to_string().contains(secret), "{sink} leaked: {line}");
        }
    }
}
