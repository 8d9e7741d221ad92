//! The HTTP source through the `weir` binary and a configuration file, as a user runs it: `POST
//! /events` is answered `202` once the events are in the write-ahead log, `413` over
//! `max_request_bytes`; malformed bodies and events reach the dead letters with their reasons;
//! every accepted event reaches the sink exactly once, also when `weir` is killed with SIGKILL
//! right after accepting it (the next run delivers it from the log).
//!
//! Issue 13: `weir run` dropped its handle on the source after opening the readers, and the
//! source's `Drop` stopped the server, so every request was refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use weir_tests::servers::{free_port, wait_for};
use weir_tests::{WeirProcess, plugin_path};

/// The source's `max_request_bytes`.
const MAX_REQUEST_BYTES: usize = 4096;

/// Writes the configuration: the HTTP source on `port` into a passthrough stage, a file sink for
/// the events and one for the dead letters.
fn write_config(dir: &Path, port: u16) -> PathBuf {
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.ingest]
kind = "http"
address = "127.0.0.1:{port}"
partitions = 2
key_field = "id"
max_request_bytes = {MAX_REQUEST_BYTES}

[sinks.events]
kind = "file"
path = "events"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.ingest]
source = "ingest"
event_time = {{ field = "ts" }}
dead_letter = "dead_letters"
batch = {{ max_events = 64, max_wait = "20ms" }}

[[pipelines.ingest.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "events" }}
"#,
        plugin = plugin_path("passthrough").display(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// One HTTP/1.1 request to the source: sends the head, then `body` (none when `None`, whatever
/// the declared length); returns the status and the reply body.
fn request(port: u16, headers: &[(&str, &str)], body: Option<&[u8]>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP source");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head =
        format!("POST /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send the head");
    if let Some(body) = body {
        stream.write_all(body).expect("send the body");
    }
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("read the reply");
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP reply: {text}"));
    (status, rest.to_owned())
}

/// Posts `body` with its length (and `content_type`, if any); returns the status and reply.
fn post(port: u16, body: &str, content_type: Option<&str>) -> (u16, String) {
    let length = body.len().to_string();
    let mut headers = vec![("Content-Length", length.as_str())];
    if let Some(content_type) = content_type {
        headers.push(("Content-Type", content_type));
    }
    request(port, &headers, Some(body.as_bytes()))
}

/// Posts `body` and asserts it is accepted with `count` events.
fn accepted(port: u16, body: &str, content_type: Option<&str>, count: usize) {
    let (status, reply) = post(port, body, content_type);
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply).expect("reply JSON");
    assert_eq!(reply, json!({ "accepted": count }));
}

/// Events `{id, ts, v}` named `<prefix><i>`.
fn events(prefix: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            json!({
                "id": format!("{prefix}{i}"),
                "ts": format!("2026-11-01T00:{:02}:{:02}Z", i / 60, i % 60),
                "v": i,
            })
        })
        .collect()
}

fn as_array(events: &[Value]) -> String {
    Value::Array(events.to_vec()).to_string()
}

fn as_ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// Every complete line of the `*.jsonl` files under `dir` (a sink's last line may be half
/// written while the run goes on).
fn complete_lines(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read sink file");
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            lines
                .push(serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("bad JSON line in {}: {e}: {line}", file.display())
                }));
        }
    }
    lines
}

/// Every byte of the source's write-ahead log segments, all partitions.
fn wal_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    let root = dir.join("checkpoints/wal/ingest");
    for partition in std::fs::read_dir(&root).expect("the write-ahead log directory") {
        let partition = partition.expect("entry").path();
        if !partition.is_dir() {
            continue;
        }
        for segment in std::fs::read_dir(&partition).expect("partition directory") {
            let segment = segment.expect("entry").path();
            if segment.extension().is_some_and(|e| e == "wal") {
                bytes.extend(std::fs::read(&segment).expect("read segment"));
            }
        }
    }
    bytes
}

/// Asserts that every event in `sent` is in the log's bytes.
fn assert_in_wal(dir: &Path, sent: &[Value]) {
    let log = wal_bytes(dir);
    for event in sent {
        let body = event.to_string();
        assert!(
            log.windows(body.len()).any(|w| w == body.as_bytes()),
            "accepted event {body} is not in the write-ahead log"
        );
    }
}

fn multiset(values: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in values {
        *counts.entry(value.to_string()).or_default() += 1;
    }
    counts
}

/// Waits until the sink under `dir` holds `count` lines.
fn wait_for_lines(dir: &Path, count: usize, process: &mut WeirProcess) {
    wait_for(
        &format!("{count} lines in {}", dir.display()),
        Duration::from_secs(120),
        || {
            assert!(
                process.is_running(),
                "weir stopped; log:\n{}",
                process.log_text()
            );
            complete_lines(dir).len() >= count
        },
    );
}

#[test]
fn http_source_under_weir_run_acknowledges_after_the_log_and_delivers_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = write_config(dir.path(), port);
    let sink = dir.path().join("events");
    let dead_letters = dir.path().join("dead_letters");

    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    assert!(weir.log_text().contains("HTTP source listening"));

    // A JSON array and NDJSON: 202 once the events are in the write-ahead log.
    let mut sent = events("array-", 40);
    accepted(port, &as_array(&sent), Some("application/json"), 40);
    assert_in_wal(dir.path(), &sent);
    let lines = events("line-", 10);
    accepted(port, &as_ndjson(&lines), Some("application/x-ndjson"), 10);
    assert_in_wal(dir.path(), &lines);
    sent.extend(lines);

    // Over `max_request_bytes`: 413 on the declared length, nothing is read or logged.
    let too_long = (MAX_REQUEST_BYTES + 1).to_string();
    let (status, reply) = request(
        port,
        &[
            ("Content-Length", too_long.as_str()),
            ("Content-Type", "application/json"),
        ],
        None,
    );
    assert_eq!(status, 413, "{reply}");
    assert!(
        reply.contains(&format!("exceeds {MAX_REQUEST_BYTES} bytes")),
        "{reply}"
    );

    // A malformed body (cut JSON), and malformed events: a line that is not JSON, one without
    // its event time, one with an unreadable event time. Each is accepted as an event and
    // dead-lettered by the pipeline with the reason.
    let cut = r#"{"id":"cut","ts":"2026-11-01T00:00:00Z""#;
    accepted(port, cut, Some("application/json"), 1);
    let bad_lines =
        "this is not json\n{\"id\":\"no-time\"}\n{\"id\":\"bad-time\",\"ts\":\"yesterday\"}\n";
    accepted(port, bad_lines, None, 3);
    // An empty body is refused outright.
    assert_eq!(post(port, "  \n", None).0, 400);

    wait_for_lines(&sink, sent.len(), &mut weir);
    wait_for_lines(&dead_letters, 4, &mut weir);
    assert_eq!(multiset(&complete_lines(&sink)), multiset(&sent));
    let letters: BTreeMap<String, (String, String)> = complete_lines(&dead_letters)
        .iter()
        .map(|l| {
            (
                l["body"].as_str().expect("body").to_owned(),
                (
                    l["kind"].as_str().expect("kind").to_owned(),
                    l["reason"].as_str().expect("reason").to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert_eq!(letters[cut].0, "malformed", "{letters:?}");
    assert_eq!(letters["this is not json"].0, "malformed", "{letters:?}");
    assert_eq!(
        letters[r#"{"id":"no-time"}"#],
        (
            "event_time".to_owned(),
            "missing event-time field `ts`".to_owned()
        )
    );
    let (kind, reason) = &letters[r#"{"id":"bad-time","ts":"yesterday"}"#];
    assert_eq!(kind, "event_time");
    assert!(reason.starts_with("field `ts`:"), "{reason}");
    for (body, (_, reason)) in &letters {
        assert!(!reason.is_empty(), "dead letter of {body} without a reason");
    }

    // Accepted, then the process is killed at once: the event is in the log, and the next run
    // delivers it.
    let crash = events("crash-", 20);
    accepted(port, &as_array(&crash), None, 20);
    weir.kill9();
    assert_in_wal(dir.path(), &crash);
    sent.extend(crash);

    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(2, Duration::from_secs(120));
    let after = events("after-", 5);
    accepted(port, &as_ndjson(&after), Some("application/x-ndjson"), 5);
    sent.extend(after);
    wait_for_lines(&sink, sent.len(), &mut weir);
    weir.terminate();
    let status = weir.wait(Duration::from_secs(60));
    assert!(status.success(), "weir exited with {status}");
    let log = std::fs::read_to_string(config.with_extension("log")).expect("log");
    assert!(
        log.contains("pipeline `ingest`: "),
        "no end-of-run summary:\n{log}"
    );

    // Exactly once: nothing lost, nothing written twice by the replay, no dead letter repeated.
    assert_eq!(multiset(&complete_lines(&sink)), multiset(&sent));
    assert_eq!(complete_lines(&dead_letters).len(), 4);
}
