use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

fn config(dir: &Path, partitions: u32) -> HttpSourceConfig {
    HttpSourceConfig {
        address: "127.0.0.1:0".to_owned(),
        partitions,
        key_header: "X-Partition-Key".to_owned(),
        key_field: None,
        wal_dir: Some(dir.to_path_buf()),
        max_request_bytes: 1 << 20,
        wal_segment_bytes: 64 << 20,
        tls: None,
        allow_plain_http: false,
        auth: None,
        max_connections: 1024,
        header_timeout: crate::config::ConfigDuration::from_millis(10_000),
        body_timeout: crate::config::ConfigDuration::from_millis(30_000),
        max_wal_bytes: 1 << 30,
        wal_queue: 1024,
        retry_after: crate::config::ConfigDuration::from_millis(1_000),
    }
}

fn all(partitions: u32, after: Option<Position>) -> Vec<PartitionStart> {
    (0..partitions)
        .map(|partition| PartitionStart { partition, after })
        .collect()
}

struct Reply {
    status: u16,
    json: serde_json::Value,
}

thread_local! {
    // One client per test (each test runs on its own thread): building one takes tens of ms.
    static CLIENT: reqwest::Client = reqwest::Client::new();
}

async fn post(
    source: &HttpSource,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = CLIENT
        .with(reqwest::Client::clone)
        .post(format!("http://{}/events", source.local_addr()))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("reply body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Reply { status, json }
}

async fn accepted(source: &HttpSource, body: &str, headers: &[(&str, &str)]) -> u64 {
    let reply = post(source, body.to_owned(), headers).await;
    assert_eq!(reply.status, 202, "{}", reply.json);
    reply.json["accepted"].as_u64().expect("accepted count")
}

/// Posts `chunks` chunks of `size` spaces with chunked transfer encoding; returns the status line.
async fn post_chunked(source: &HttpSource, chunks: usize, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(source.local_addr())
        .await
        .expect("connect");
    let mut request =
        b"POST /events HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..chunks {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b' ', size));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before taking the whole body.
    let _ = stream.write_all(&request).await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Everything the readers can read now, per reader, in order.
async fn drain(readers: &mut [Box<dyn PartitionReader>]) -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    for reader in readers.iter_mut() {
        let mut events = Vec::new();
        loop {
            match reader
                .next_batch(7, Duration::from_millis(100))
                .await
                .expect("read")
            {
                ReadOutcome::Events(batch) => {
                    assert!(batch.len() <= 7);
                    events.extend(batch);
                }
                ReadOutcome::Idle => break,
                ReadOutcome::End => panic!("the HTTP source never ends"),
                ReadOutcome::Undecodable { .. } => panic!("this source never has undecodable data"),
            }
        }
        out.push(events);
    }
    out
}

fn bodies(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.body.to_vec()).expect("UTF-8"))
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn accepts_single_array_ndjson_and_pretty_printed_bodies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("start");
    let mut readers = source.open(all(1, None)).await.expect("open");

    assert_eq!(accepted(&source, r#"{"n":1}"#, &[]).await, 1);
    assert_eq!(
        accepted(&source, r#"[{"n":2}, {"n":3,"s":"a,]"}]"#, &[]).await,
        2
    );
    let ndjson = "{\"n\":4}\n\n{\"n\":5}\r\nnot json\n";
    assert_eq!(
        accepted(&source, ndjson, &[("content-type", "application/x-ndjson")]).await,
        3
    );
    assert_eq!(
        accepted(
            &source,
            "{\"n\":6}\n{\"n\":7}\n",
            &[("content-type", "application/json")]
        )
        .await,
        2
    );
    assert_eq!(
        accepted(
            &source,
            "{\n  \"n\": 8,\n  \"s\": \"two  spaces\"\n}\n",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        accepted(&source, "[\n  {\"n\": 9},\n  {\n    \"n\": 10\n  }\n]", &[]).await,
        2
    );
    assert_eq!(accepted(&source, "[]", &[]).await, 0);

    let events = drain(&mut readers).await.remove(0);
    assert_eq!(
        bodies(&events),
        [
            r#"{"n":1}"#,
            r#"{"n":2}"#,
            r#"{"n":3,"s":"a,]"}"#,
            r#"{"n":4}"#,
            r#"{"n":5}"#,
            "not json",
            r#"{"n":6}"#,
            r#"{"n":7}"#,
            r#"{"n":8,"s":"two  spaces"}"#,
            r#"{"n": 9}"#,
            r#"{"n":10}"#,
        ]
    );
    // Positions are the byte offsets of the frames: the first at 0, each after the previous one.
    assert_eq!(events[0].position, 0);
    assert!(
        events
            .windows(2)
            .all(|w| w[1].position > w[0].position + w[0].body.len() as u64)
    );
    let now = now_millis();
    assert!(
        events
            .iter()
            .all(|e| (now - e.enqueued_time).abs() < 60_000 && e.key.is_none())
    );
    source.shutdown().await;
}

#[tokio::test]
async fn keys_come_from_the_header_then_the_field_then_a_hash_of_the_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), 4);
    cfg.key_field = Some("DeviceId".to_owned());
    let source = HttpSource::start("http", cfg, Metrics::new())
        .await
        .expect("start");
    let mut readers = source.open(all(4, None)).await.expect("open");

    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"DeviceId":"device-{i:03}","n":{i}}}"#))
        .collect();
    assert_eq!(accepted(&source, &lines.join("\n"), &[]).await, 40);
    assert_eq!(
        accepted(
            &source,
            &lines[..3].join("\n"),
            &[("x-partition-key", "fixed")]
        )
        .await,
        3
    );
    assert_eq!(accepted(&source, r#"{"other":1}"#, &[]).await, 1);

    let per_partition = drain(&mut readers).await;
    let mut by_field = 0;
    let mut by_header = 0;
    let mut unkeyed = 0;
    for (partition, events) in per_partition.iter().enumerate() {
        for event in events {
            assert_eq!(event.partition as usize, partition);
            match event.key.as_deref() {
                Some(b"fixed") => {
                    by_header += 1;
                    assert_eq!(event.partition, partition_for_key(b"fixed", 4));
                }
                Some(key) => {
                    by_field += 1;
                    let body: serde_json::Value =
                        serde_json::from_slice(&event.body).expect("JSON");
                    assert_eq!(body["DeviceId"].as_str().map(str::as_bytes), Some(key));
                    assert_eq!(event.partition, partition_for_key(key, 4));
                }
                None => {
                    unkeyed += 1;
                    assert_eq!(event.partition, partition_for_key(&event.body, 4));
                }
            }
        }
    }
    assert_eq!((by_field, by_header, unkeyed), (40, 3, 1));
    assert!(
        per_partition.iter().all(|events| !events.is_empty()),
        "40 keys reach all 4 partitions"
    );
    source.shutdown().await;
}

#[tokio::test]
async fn oversized_and_empty_bodies_are_refused_and_health_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), 1);
    cfg.max_request_bytes = 1000;
    let source = HttpSource::start("http", cfg, Metrics::new())
        .await
        .expect("start");
    let mut readers = source.open(all(1, None)).await.expect("open");

    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
    let reply = post(&source, big, &[]).await;
    assert_eq!(reply.status, 413);
    assert!(
        reply.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("1000 bytes")),
        "{}",
        reply.json
    );
    // A body streamed without a length is cut off at the limit too.
    assert!(
        post_chunked(&source, 20, 100)
            .await
            .starts_with("HTTP/1.1 413")
    );
    assert!(
        post_chunked(&source, 2, 100)
            .await
            .starts_with("HTTP/1.1 400"),
        "blank, not too large"
    );
    for empty in ["", "  \n\r\n "] {
        let reply = post(&source, empty.to_owned(), &[]).await;
        assert_eq!(reply.status, 400, "{empty:?}");
        assert!(
            reply.json["error"]
                .as_str()
                .is_some_and(|e| e.contains("empty"))
        );
    }
    let health = CLIENT
        .with(reqwest::Client::clone)
        .get(format!("http://{}/healthz", source.local_addr()))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        drain(&mut readers).await[0].is_empty(),
        "nothing refused was logged"
    );
    source.shutdown().await;
}

#[tokio::test]
async fn prefixed_headers_become_properties() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("start");
    let mut readers = source.open(all(1, None)).await.expect("open");
    let headers = [
        ("X-Weir-Prop-Tenant", "contoso"),
        ("x-weir-prop-trace", "abc 123"),
        ("x-other", "no"),
    ];
    assert_eq!(accepted(&source, "{\"a\":1}\n{\"a\":2}", &headers).await, 2);
    let events = drain(&mut readers).await.remove(0);
    assert_eq!(events.len(), 2);
    for event in events {
        let mut properties = event.properties.clone();
        properties.sort();
        assert_eq!(
            properties,
            [
                ("tenant".to_owned(), "contoso".to_owned()),
                ("trace".to_owned(), "abc 123".to_owned())
            ]
        );
    }
    source.shutdown().await;
}

#[tokio::test]
async fn a_waiting_reader_wakes_on_new_events_and_reports_lag() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("start");
    let mut readers = source.open(all(1, None)).await.expect("open");
    let mut reader = readers.remove(0);
    assert_eq!(reader.lag(), Some(0));
    let started = Instant::now();
    assert!(matches!(
        reader
            .next_batch(10, Duration::from_millis(150))
            .await
            .expect("read"),
        ReadOutcome::Idle
    ));
    assert!(started.elapsed() >= Duration::from_millis(140));

    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let outcome = reader
            .next_batch(10, Duration::from_secs(20))
            .await
            .expect("read");
        (outcome, started.elapsed(), reader)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(accepted(&source, r#"{"wake":true}"#, &[]).await, 1);
    let (outcome, waited, reader) = waiting.await.expect("reader task");
    match outcome {
        ReadOutcome::Events(events) => assert_eq!(bodies(&events), [r#"{"wake":true}"#]),
        other => panic!("expected the new event, got {other:?}"),
    }
    assert!(
        waited < Duration::from_secs(5),
        "woken by the writer, not by the timeout: {waited:?}"
    );
    assert_eq!(reader.lag(), Some(0));
    assert_eq!(accepted(&source, "{\"a\":1}\n{\"a\":2}", &[]).await, 2);
    assert!(reader.lag().is_some_and(|lag| lag > 0));
    source.shutdown().await;
}

#[tokio::test]
async fn concurrent_requests_are_all_durable_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = Arc::new(
        HttpSource::start("http", config(dir.path(), 2), Metrics::new())
            .await
            .expect("start"),
    );
    let mut readers = source.open(all(2, None)).await.expect("open");
    let mut tasks = Vec::new();
    for client in 0..8 {
        let source = Arc::clone(&source);
        tasks.push(tokio::spawn(async move {
            for request in 0..20 {
                let body: Vec<String> = (0..5)
                    .map(|i| format!(r#"{{"c":{client},"r":{request},"i":{i}}}"#))
                    .collect();
                assert_eq!(accepted(&source, &body.join("\n"), &[]).await, 5);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let events: Vec<Event> = drain(&mut readers).await.into_iter().flatten().collect();
    assert_eq!(events.len(), 8 * 20 * 5);
    let distinct: std::collections::HashSet<Vec<u8>> =
        events.iter().map(|e| e.body.to_vec()).collect();
    assert_eq!(distinct.len(), events.len());
}

#[tokio::test]
async fn events_survive_a_restart_and_readers_resume_after_their_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("start");
    let lines: Vec<String> = (0..10).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    assert_eq!(accepted(&source, &lines.join("\n"), &[]).await, 10);
    let mut readers = source.open(all(1, None)).await.expect("open");
    let before = drain(&mut readers).await.remove(0);
    assert_eq!(bodies(&before), lines);
    drop(readers);
    source.shutdown().await;

    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("restart");
    let checkpoint = before[3].position;
    let mut readers = source.open(all(1, Some(checkpoint))).await.expect("open");
    let after = drain(&mut readers).await.remove(0);
    assert_eq!(bodies(&after), lines[4..]);
    assert_eq!(
        after.iter().map(|e| e.position).collect::<Vec<_>>(),
        before[4..].iter().map(|e| e.position).collect::<Vec<_>>()
    );
    // New events go after the old ones.
    assert_eq!(accepted(&source, r#"{"n":10}"#, &[]).await, 1);
    let more = drain(&mut readers).await.remove(0);
    assert_eq!(bodies(&more), [r#"{"n":10}"#]);
    assert!(more[0].position > before[9].position);
    // A checkpoint at the very last event resumes with nothing to read.
    let mut readers = source
        .open(all(1, Some(more[0].position)))
        .await
        .expect("open");
    assert!(drain(&mut readers).await[0].is_empty());
    source.shutdown().await;
}

#[tokio::test]
async fn a_torn_tail_is_truncated_on_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("start");
    assert_eq!(
        accepted(&source, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}", &[]).await,
        3
    );
    source.shutdown().await;

    let segment = segment_files(&dir.path().join("0")).remove(0);
    let intact = std::fs::metadata(&segment).expect("segment").len();
    // A crash in the middle of writing a frame, then one whose checksum fails.
    for torn in [0usize, 1] {
        let mut frame = Vec::new();
        wal::encode_frame(&mut frame, 1, None, &[], br#"{"n":"torn"}"#).expect("encode");
        if torn == 0 {
            frame.truncate(frame.len() / 2);
        } else {
            let last = frame.len() - 1;
            frame[last] ^= 0xff;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("open segment");
        std::io::Write::write_all(&mut file, &frame).expect("append torn frame");
        drop(file);
        assert!(std::fs::metadata(&segment).expect("segment").len() > intact);

        let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
            .await
            .expect("restart");
        assert_eq!(
            std::fs::metadata(&segment).expect("segment").len(),
            intact,
            "torn tail cut"
        );
        let mut readers = source.open(all(1, None)).await.expect("open");
        let events = drain(&mut readers).await.remove(0);
        assert_eq!(bodies(&events), [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
        source.shutdown().await;
    }
    let source = HttpSource::start("http", config(dir.path(), 1), Metrics::new())
        .await
        .expect("restart");
    assert_eq!(accepted(&source, r#"{"n":3}"#, &[]).await, 1);
    let mut readers = source.open(all(1, None)).await.expect("open");
    let events = drain(&mut readers).await.remove(0);
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[3].position, intact,
        "the next frame starts where the intact log ended"
    );
    source.shutdown().await;
}

#[tokio::test]
async fn checkpoints_release_whole_segments_below_every_reader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), 1);
    cfg.wal_segment_bytes = 150;
    let source = HttpSource::start("http", cfg.clone(), Metrics::new())
        .await
        .expect("start");
    let lines: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"n":{i:02},"pad":"xxxxxxxxxx"}}"#))
        .collect();
    assert_eq!(accepted(&source, &lines[..20].join("\n"), &[]).await, 20);
    for line in &lines[20..] {
        assert_eq!(accepted(&source, line, &[]).await, 1);
    }
    let partition_dir = dir.path().join("0");
    let starts = |files: &[PathBuf]| -> Vec<u64> {
        files
            .iter()
            .map(|f| {
                f.file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                    .expect("named by offset")
            })
            .collect()
    };
    let before_starts = starts(&segment_files(&partition_dir));
    let segments_before = before_starts.len();
    assert!(segments_before >= 10, "{segments_before} segments");

    let mut readers = source.open(all(1, None)).await.expect("open");
    let mut other = source
        .open(all(1, None))
        .await
        .expect("open a second reader");
    let events = drain(&mut readers).await.remove(0);
    assert_eq!(bodies(&events), lines);
    let checkpoint = events[24].position;

    // Another reader that has no checkpoint yet keeps everything.
    readers[0].checkpointed(checkpoint);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(segment_files(&partition_dir).len(), segments_before);
    other[0].checkpointed(events[1].position);
    drop(other);
    readers[0].checkpointed(checkpoint);
    // Segments that end at or before the checkpoint go; the one holding it stays.
    let released = before_starts
        .windows(2)
        .filter(|pair| pair[1] <= checkpoint)
        .count();
    assert!(
        released >= segments_before / 2,
        "{released} of {segments_before}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let remaining = loop {
        let remaining = segment_files(&partition_dir);
        if remaining.len() == segments_before - released || Instant::now() > deadline {
            break remaining;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(remaining.len(), segments_before - released);
    let oldest = starts(&remaining)[0];
    assert!(
        oldest <= checkpoint,
        "the segment holding the checkpoint is kept"
    );
    assert!(oldest > events[1].position);
    source.shutdown().await;

    // After a restart, a reader resumes right after the checkpoint.
    let source = HttpSource::start("http", cfg, Metrics::new())
        .await
        .expect("restart");
    let mut readers = source.open(all(1, Some(checkpoint))).await.expect("open");
    assert_eq!(bodies(&drain(&mut readers).await.remove(0)), lines[25..]);
    source.shutdown().await;
}

#[tokio::test]
async fn bad_settings_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), 1);
    cfg.wal_dir = None;
    let (kind, reason) = HttpSource::start("http", cfg, Metrics::new())
        .await
        .expect_err("no wal_dir");
    assert!(reason.contains("wal_dir"));
    assert_eq!(kind, SourceErrorKind::Misconfigured);
    let mut cfg = config(dir.path(), 1);
    cfg.address = "not an address".to_owned();
    // Issue 19: plain HTTP beyond loopback needs the opt-in.
    let (kind, reason) = HttpSource::start("http", cfg.clone(), Metrics::new())
        .await
        .expect_err("plain HTTP beyond loopback");
    assert_eq!(kind, SourceErrorKind::Misconfigured);
    assert!(reason.contains("allow_plain_http"), "{reason}");
    cfg.allow_plain_http = true;
    assert!(
        HttpSource::start("http", cfg, Metrics::new())
            .await
            .expect_err("bad address")
            .1
            .contains("cannot listen")
    );
    // The failed start let go of the log.
    let source = HttpSource::start("http", config(dir.path(), 2), Metrics::new())
        .await
        .expect("start");
    let starts = vec![PartitionStart {
        partition: 2,
        after: None,
    }];
    let Err(err) = source.open(starts).await else {
        panic!("partition 2 does not exist");
    };
    assert!(
        err.to_string().contains("partition 2 does not exist"),
        "{err}"
    );
    source.shutdown().await;
}

/// Ingest throughput for 1,000-event NDJSON posts from 4 concurrent clients.
/// `cargo test -p weir --lib http_ingest_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn http_ingest_throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path(), 4);
    cfg.key_field = Some("DeviceId".to_owned());
    cfg.max_request_bytes = 16 << 20;
    let source = Arc::new(
        HttpSource::start("http", cfg, Metrics::new())
            .await
            .expect("start"),
    );
    let body: String = (0..1000)
        .map(|i| {
            format!(
                r#"{{"DeviceId":"device-{:03}","Location":"Seattle","DeviceType":"Thermostat","Temperature":23.45,"Humidity":45.12,"Pressure":1012.34,"BatteryLevel":87.50,"SignalStrength":-67.00,"Timestamp":"2026-11-22T10:00:00.000Z","EventId":"6f1c2a3b-1d2e-4f30-8a4b-5c6d7e8f9012"}}"#,
                i % 50
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (clients, posts) = (4, 50);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let source = Arc::clone(&source);
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..posts {
                let reply = client
                    .post(format!("http://{}/events", source.local_addr()))
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("post");
                assert_eq!(reply.status().as_u16(), 202);
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let elapsed = started.elapsed();
    let events = clients * posts * 1000;
    println!(
        "http ingest: {events} events ({} MB) in {elapsed:?} = {:.0} events/s, {:.1} MB/s",
        events * 260 / 1_000_000,
        events as f64 / elapsed.as_secs_f64(),
        (events * 260) as f64 / 1e6 / elapsed.as_secs_f64()
    );
    let mut readers = source.open(all(4, None)).await.expect("open");
    let started = Instant::now();
    let mut read = 0;
    for reader in &mut readers {
        while let ReadOutcome::Events(batch) = reader
            .next_batch(1024, Duration::from_millis(10))
            .await
            .expect("read")
        {
            read += batch.len();
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(read, events);
    println!(
        "http read-back: {read} events in {elapsed:?} = {:.0} events/s",
        read as f64 / elapsed.as_secs_f64()
    );
}
