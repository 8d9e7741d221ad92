//! Issue 19: the network surfaces of `weir run` as a production deployment exposes them, each
//! through the binary and a configuration file.
//!
//! - TLS on the HTTP source and the admin API with a test certificate the test makes (`openssl`);
//!   a renewed certificate is served without a restart; a plain-HTTP request to a TLS port gets
//!   no HTTP answer; a plain address beyond loopback
//!   without `allow_plain_http` is refused at start with file, line and key.
//! - Ingest credentials: none, a wrong one and a rotated-out one are `401` and nothing of theirs
//!   is written; a valid one is `202` and its event reaches the sink; refusals are counted.
//! - The admin API's reads behind the read token; `/healthz` and `/readyz` stay open.
//! - Slow clients and a flood: connections over `max_connections` get `503` with `Retry-After`,
//!   slow heads and bodies are cut off, a flood above what the pipeline checkpoints gets `429`
//!   with `Retry-After`; every accepted event reaches the sink, and the process's memory stays
//!   bounded, with 1,000 slow clients (the test raises its own soft limit on open files, 1,024 on
//!   many machines, to the hard one).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use weir_tests::servers::{free_port, wait_for};
use weir_tests::tls::test_certificates;
use weir_tests::{WeirProcess, plugin_path};

/// An HTTP/1.1 reply: status, head (lower-cased) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn retry_after(&self) -> Option<u64> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix("retry-after:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Sends one request over `stream` (`Connection: close`) and reads the reply; `None` when the
/// server answered nothing readable as HTTP.
fn exchange(
    mut stream: impl Read + Write,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut reply = Vec::new();
    // A TLS peer that closes without close_notify still gave us the whole reply.
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some(Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

fn plain(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
}

/// A TLS client that trusts the test CA only.
fn tls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn https(
    client: &Arc<rustls::ClientConfig>,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let connection = rustls::ClientConnection::new(
        Arc::clone(client),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("TLS client");
    let stream = rustls::StreamOwned::new(connection, plain(port));
    exchange(stream, port, method, path, headers, body)
        .unwrap_or_else(|| panic!("no HTTPS reply to {method} {path}"))
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    exchange(plain(port), port, method, path, headers, body)
        .unwrap_or_else(|| panic!("no HTTP reply to {method} {path}"))
}

/// The configuration: source `ingest` (settings `source`) through a passthrough stage into the
/// file sink `events`; the admin API (settings `admin`) when given.
fn write_config(dir: &Path, source: &str, admin: Option<&str>, checkpoint: &str) -> PathBuf {
    let admin = admin.map(|a| format!("[admin]\n{a}\n")).unwrap_or_default();
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "{checkpoint}"

{admin}
[sources.ingest]
kind = "http"
partitions = 1
{source}

[sinks.events]
kind = "file"
path = "events"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.ingest]
source = "ingest"
dead_letter = "dead_letters"
batch = {{ max_events = 256, max_wait = "20ms" }}

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

/// The `id`s of the complete lines of the file sink under `dir`.
fn sink_ids(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry in entries {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let value: Value = serde_json::from_str(line).expect("sink line");
            if let Some(id) = value.get("id").and_then(Value::as_str) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

fn wait_for_ids(dir: &Path, ids: &BTreeSet<String>, weir: &mut WeirProcess) {
    wait_for(
        &format!("{} events in the sink", ids.len()),
        Duration::from_secs(120),
        || {
            assert!(weir.is_running(), "weir stopped; log:\n{}", weir.log_text());
            let found: BTreeSet<String> = sink_ids(dir).into_iter().collect();
            ids.is_subset(&found)
        },
    );
}

/// Every byte of the write-ahead log under `dir`.
fn wal_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    let root = dir.join("checkpoints/wal/ingest/0");
    for segment in std::fs::read_dir(&root).into_iter().flatten() {
        bytes.extend(std::fs::read(segment.expect("entry").path()).unwrap_or_default());
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The sum of the samples of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The port a listener of `weir` bound (its configuration said port 0), from the log line with
/// `marker`: the port of the `host:port` right after `prefix`.
fn logged_port(weir: &WeirProcess, marker: &str, prefix: &str) -> u16 {
    let mut port = None;
    wait_for(marker, Duration::from_secs(60), || {
        port = weir
            .log_text()
            .lines()
            .find(|l| l.contains(marker))
            .and_then(|line| {
                let address = line.split(prefix).nth(1)?.split_whitespace().next()?;
                address.rsplit(':').next()?.trim_matches('"').parse().ok()
            });
        port.is_some()
    });
    port.unwrap_or_default()
}

fn source_port(weir: &WeirProcess) -> u16 {
    logged_port(weir, "HTTP source listening", "address=")
}

fn admin_port(weir: &WeirProcess) -> u16 {
    logged_port(weir, "admin API listening on", "://")
}

#[test]
fn tls_on_the_source_and_the_admin_api_with_a_read_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_certificates(dir.path());
    let tls = format!(
        "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let config = write_config(
        dir.path(),
        &format!("address = \"127.0.0.1:0\"\nauth = {{ tokens = [\"ingest-key\"] }}\n{tls}"),
        Some(&format!(
            "address = \"127.0.0.1:0\"\ntoken = \"write-token\"\nread_token = \"read-token\"\n{tls}"
        )),
        "200ms",
    );
    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    let (source_port, admin_port) = (source_port(&weir), admin_port(&weir));
    let client = tls_client(&ca);

    // Probes are open, over TLS.
    assert_eq!(
        https(&client, admin_port, "GET", "/healthz", &[], b"").status,
        200
    );
    wait_for("readiness", Duration::from_secs(60), || {
        https(&client, admin_port, "GET", "/readyz", &[], b"").status == 200
    });
    // Ingest over TLS with the credential.
    let auth = [("Authorization", "Bearer ingest-key")];
    let event = json!({ "id": "over-tls" }).to_string();
    let reply = https(
        &client,
        source_port,
        "POST",
        "/events",
        &auth,
        event.as_bytes(),
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_for_ids(
        &dir.path().join("events"),
        &BTreeSet::from(["over-tls".to_owned()]),
        &mut weir,
    );

    // Plain HTTP to either TLS port gets no HTTP answer, and the handshake failure is counted.
    for port in [source_port, admin_port] {
        let answer = exchange(plain(port), port, "GET", "/healthz", &[], b"");
        assert!(
            answer.is_none(),
            "plain HTTP answered on a TLS port: {answer:?}"
        );
    }

    // Reads need the read token (or the write token); without or with a wrong one: 401.
    for token in [None, Some("wrong")] {
        let header = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("Authorization", h.as_str()))
            .collect();
        for path in [
            "/metrics",
            "/pipelines",
            "/plugins",
            "/plugins/ingest/forward",
        ] {
            let reply = https(&client, admin_port, "GET", path, &headers, b"");
            assert_eq!(reply.status, 401, "{path}: {}", reply.body);
            assert_eq!(reply.body.trim(), r#"{"error":"unauthorized"}"#);
        }
    }
    let read = [("Authorization", "Bearer read-token")];
    let pipelines = https(&client, admin_port, "GET", "/pipelines", &read, b"");
    assert_eq!(pipelines.status, 200, "{}", pipelines.body);
    let write = [("Authorization", "Bearer write-token")];
    assert_eq!(
        https(&client, admin_port, "GET", "/plugins", &write, b"").status,
        200
    );
    // The read token does not upload.
    let upload = https(
        &client,
        admin_port,
        "POST",
        "/plugins/ingest/forward",
        &read,
        b"x",
    );
    assert_eq!(upload.status, 401, "{}", upload.body);
    let metrics = https(&client, admin_port, "GET", "/metrics", &read, b"").body;
    assert_eq!(
        metric(&metrics, "weir_http_tls_failures_total", "source:ingest"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "weir_http_tls_failures_total",
            "listener=\"admin\""
        ),
        1.0
    );
    assert!(
        metric(
            &metrics,
            "weir_http_auth_refused_total",
            "listener=\"admin\""
        ) >= 8.0
    );

    // A renewed certificate (from another CA) is served without a restart once its files change.
    let renewed = dir.path().join("renewed");
    std::fs::create_dir_all(&renewed).expect("dir");
    let (new_ca, new_cert, new_key) = test_certificates(&renewed);
    for (from, to) in [(&new_key, &key), (&new_cert, &cert)] {
        let partial = to.with_extension("partial");
        std::fs::copy(from, &partial).expect("copy");
        std::fs::rename(&partial, to).expect("rename");
    }
    let new_client = tls_client(&new_ca);
    let healthz = |client: &Arc<rustls::ClientConfig>| {
        let connection = rustls::ClientConnection::new(
            Arc::clone(client),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("TLS client");
        let stream = rustls::StreamOwned::new(connection, plain(source_port));
        exchange(stream, source_port, "GET", "/healthz", &[], b"").map(|r| r.status)
    };
    wait_for("the renewed certificate", Duration::from_secs(30), || {
        healthz(&new_client) == Some(200)
    });
    assert_eq!(healthz(&client), None, "the old CA still verifies");
    weir.terminate();
}

#[test]
fn plain_http_beyond_loopback_is_refused_at_start_unless_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("address = \"0.0.0.0:{port}\""),
        None,
        "1s",
    );
    let weir = WeirProcess::run(&config);
    let status = weir.wait(Duration::from_secs(60));
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap_or_default();
    assert!(log.contains("allow_plain_http"), "{log}");
    // `weir validate` says the same, with file, line and key.
    let output = std::process::Command::new(weir_tests::weir_binary())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("run weir validate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("weir.toml:"), "{stderr}");
    assert!(stderr.contains("sources.ingest.address"), "{stderr}");
    assert!(stderr.contains("allow_plain_http"), "{stderr}");

    // The admin API alike.
    let config = write_config(
        dir.path(),
        "address = \"127.0.0.1:0\"",
        Some(&format!("address = \"0.0.0.0:{port}\"")),
        "1s",
    );
    let output = std::process::Command::new(weir_tests::weir_binary())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("run weir validate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin.address"), "{stderr}");
    assert!(stderr.contains("allow_plain_http"), "{stderr}");

    // With the opt-in, it starts.
    let config = write_config(
        dir.path(),
        "address = \"0.0.0.0:0\"\nallow_plain_http = true",
        None,
        "1s",
    );
    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    let port = source_port(&weir);
    assert_eq!(http(port, "GET", "/healthz", &[], b"").status, 200);
    weir.terminate();
}

#[test]
fn ingest_credentials_refuse_missing_wrong_and_rotated_out_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("ingest.keys");
    std::fs::write(&keys, "# current keys\nalpha\nbeta\n").expect("keys");
    let config = write_config(
        dir.path(),
        "address = \"127.0.0.1:0\"\nauth = { tokens_file = \"ingest.keys\" }",
        Some("address = \"127.0.0.1:0\""),
        "200ms",
    );
    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    let port = source_port(&weir);
    let admin = weir.admin_address(0, Duration::from_secs(60));
    let post = |id: &str, headers: &[(&str, &str)]| {
        let body = json!({ "id": id }).to_string();
        http(port, "POST", "/events", headers, body.as_bytes())
    };

    let refused = [
        ("no-credential", vec![]),
        ("wrong-credential", vec![("Authorization", "Bearer gamma")]),
        ("wrong-key", vec![("x-api-key", "alpha-")]),
    ];
    for (id, headers) in &refused {
        let reply = post(id, headers);
        assert_eq!(reply.status, 401, "{id}: {}", reply.body);
        assert_eq!(reply.body.trim(), r#"{"error":"unauthorized"}"#);
        assert!(reply.head.contains("www-authenticate: bearer"));
    }
    assert_eq!(
        post("with-alpha", &[("Authorization", "Bearer alpha")]).status,
        202
    );
    assert_eq!(post("with-beta-key", &[("x-api-key", "beta")]).status, 202);

    // Rotation: alpha is taken out, gamma comes in; no restart.
    std::fs::write(&keys, "beta\ngamma\n").expect("rotate");
    let rotated_out = post("rotated-out", &[("Authorization", "Bearer alpha")]);
    assert_eq!(rotated_out.status, 401, "{}", rotated_out.body);
    assert_eq!(
        post("with-gamma", &[("Authorization", "Bearer gamma")]).status,
        202
    );

    let accepted: BTreeSet<String> = ["with-alpha", "with-beta-key", "with-gamma"]
        .map(str::to_owned)
        .into();
    let sink = dir.path().join("events");
    wait_for_ids(&sink, &accepted, &mut weir);
    // Nothing refused was written: not in the log, not in the sink.
    let log = wal_bytes(dir.path());
    let written: BTreeSet<String> = sink_ids(&sink).into_iter().collect();
    for id in [
        "no-credential",
        "wrong-credential",
        "wrong-key",
        "rotated-out",
    ] {
        assert!(!contains(&log, id), "{id} is in the write-ahead log");
        assert!(!written.contains(id), "{id} is in the sink");
    }
    assert_eq!(written, accepted);
    let metrics = weir_tests::service::http(&admin, "GET", "/metrics", None, b"").1;
    let refusals = |reason: &str| {
        metric(
            &metrics,
            "weir_http_auth_refused_total",
            &format!("listener=\"source:ingest\",reason=\"{reason}\""),
        )
    };
    assert_eq!(refusals("missing"), 1.0, "{metrics}");
    assert_eq!(refusals("invalid"), 3.0, "{metrics}");
    weir.terminate();
}

/// Raises this process's soft limit on open files to its hard limit: the test holds a thousand
/// sockets at once, and many machines' soft limit is 1,024.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.maximum != limit.current {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("could not raise the open-file limit: {e}");
        }
    }
}

/// Holds `count` connections open that send half a request head, and never the rest.
fn slow_clients(port: u16, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .ok()?;
            stream
                .write_all(b"POST /events HTTP/1.1\r\nHost: x\r\n")
                .ok()?;
            Some(stream)
        })
        .collect()
}

/// What a slow client got: a `503` with `Retry-After`, or the connection closed without a reply.
fn outcome(mut stream: TcpStream) -> Option<Reply> {
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some(Reply {
        status: head.get(9..12)?.parse().ok()?,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn slow_clients_and_a_flood_are_refused_with_retry_after_and_nothing_accepted_is_lost() {
    const MAX_CONNECTIONS: usize = 40;
    const SLOW_CLIENTS: usize = 1000;
    raise_open_file_limit();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "address = \"127.0.0.1:0\"\nmax_connections = {MAX_CONNECTIONS}\n\
             header_timeout = \"1s\"\nbody_timeout = \"1s\"\nretry_after = \"2s\"\n\
             max_wal_bytes = 16384\nwal_segment_bytes = 4096"
        ),
        Some("address = \"127.0.0.1:0\""),
        "1s",
    );
    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    let port = source_port(&weir);
    let admin = weir.admin_address(0, Duration::from_secs(60));
    let rss_before = rss_kib(weir.id());

    // Slow heads: the first MAX_CONNECTIONS are held until `header_timeout` closes them; the
    // rest are answered 503 with Retry-After at once.
    let started = Instant::now();
    let clients = slow_clients(port, SLOW_CLIENTS);
    // Slots free up each `header_timeout` (1 s): a slow machine connecting for longer lets
    // another MAX_CONNECTIONS in per second.
    let rounds = 1 + started.elapsed().as_secs() as usize;
    let connected = clients.len();
    let outcomes: Vec<Option<Reply>> = clients.into_iter().map(outcome).collect();
    let refused = outcomes
        .iter()
        .flatten()
        .filter(|r| r.status == 503 && r.retry_after() == Some(2))
        .count();
    let cut_off = outcomes.iter().filter(|o| o.is_none()).count();
    assert_eq!(connected, SLOW_CLIENTS);
    assert_eq!(
        refused + cut_off,
        SLOW_CLIENTS,
        "every slow client refused or cut off"
    );
    assert!(
        cut_off > 0 && cut_off <= MAX_CONNECTIONS * rounds,
        "{cut_off} cut off ({rounds} rounds of {MAX_CONNECTIONS})"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The slots are free again: a normal request is served.
    let body = json!({ "id": "after-slow-heads" }).to_string();
    assert_eq!(
        http(port, "POST", "/events", &[], body.as_bytes()).status,
        202
    );

    // A slow body: 408 after `body_timeout`, nothing written.
    let mut stream = plain(port);
    stream
        .write_all(
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":\"slow-body\"",
        )
        .expect("send");
    let slow_body = outcome(stream).expect("a reply to the slow body");
    assert_eq!(slow_body.status, 408, "{}", slow_body.body);

    // A flood from 8 clients for 4 seconds, far above what a log of 16 KiB between 1 s
    // checkpoints holds: 429 (or 503) with Retry-After for what cannot be taken.
    let flood_until = Instant::now() + Duration::from_secs(4);
    let threads: Vec<_> = (0..8)
        .map(|client| {
            std::thread::spawn(move || {
                let (mut accepted, mut limited) = (Vec::new(), 0usize);
                let mut n = 0;
                while Instant::now() < flood_until {
                    let id = format!("flood-{client}-{n}");
                    n += 1;
                    let body = json!({ "id": id, "pad": "x".repeat(200) }).to_string();
                    let reply = http(port, "POST", "/events", &[], body.as_bytes());
                    match reply.status {
                        202 => accepted.push(id),
                        429 | 503 => {
                            assert!(reply.retry_after().is_some(), "{:?}", reply.head);
                            limited += 1;
                        }
                        other => panic!("unexpected {other}: {}", reply.body),
                    }
                }
                (accepted, limited)
            })
        })
        .collect();
    let mut accepted: BTreeSet<String> = BTreeSet::from(["after-slow-heads".to_owned()]);
    let mut limited = 0;
    for thread in threads {
        let (ids, refused) = thread.join().expect("flood client");
        accepted.extend(ids);
        limited += refused;
    }
    assert!(limited > 0, "the flood was never refused");
    assert!(accepted.len() > 50, "only {} accepted", accepted.len());
    let rss_after = rss_kib(weir.id());
    eprintln!(
        "slow clients: {refused} refused, {cut_off} cut off; flood: {} accepted, {limited} refused; \
         RSS {rss_before} KiB -> {rss_after} KiB",
        accepted.len()
    );
    assert!(
        rss_after < rss_before + 200 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Every accepted event reaches the sink; nothing refused does.
    let sink = dir.path().join("events");
    wait_for_ids(&sink, &accepted, &mut weir);
    let written: BTreeSet<String> = sink_ids(&sink).into_iter().collect();
    assert_eq!(written, accepted);
    let metrics = weir_tests::service::http(&admin, "GET", "/metrics", None, b"").1;
    let limited_count = |reason: &str| {
        metric(
            &metrics,
            "weir_http_requests_limited_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert_eq!(limited_count("body_timeout"), 1.0, "{metrics}");
    assert_eq!(
        (limited_count("backlog") + limited_count("wal_busy")) as usize,
        limited,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "weir_http_connections_refused_total",
            "source:ingest"
        ) >= refused as f64
    );
    weir.terminate();
}

/// Base64url without padding (JWT parts).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
    output.stdout
}

/// An RSA key made with `openssl` in `dir/name.pem`, and its JWK (`kid` = `name`).
fn rsa_key(dir: &Path, name: &str) -> Value {
    let file = format!("{name}.pem");
    openssl(dir, &["genrsa", "-out", &file, "2048"]);
    let modulus = String::from_utf8(openssl(dir, &["rsa", "-in", &file, "-noout", "-modulus"]))
        .expect("modulus text");
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    json!({ "kid": name, "kty": "RSA", "use": "sig", "n": base64url(&n), "e": "AQAB" })
}

/// An RS256 JWT with `claims`, signed by `dir/key.pem` and naming key `kid`.
fn jwt(dir: &Path, key: &str, kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": kid });
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    std::fs::write(dir.join("input"), &input).expect("write input");
    let signature = openssl(
        dir,
        &["dgst", "-sha256", "-sign", &format!("{key}.pem"), "input"],
    );
    format!("{input}.{}", base64url(&signature))
}

/// Serves `body` as JSON to every request on 127.0.0.1 until the test ends.
fn serve_json(body: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

#[test]
fn entra_tokens_are_checked_for_signature_tenant_audience_and_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path();
    let signing = rsa_key(keys, "signing");
    rsa_key(keys, "stranger");
    let jwks_port = serve_json(json!({ "keys": [signing] }).to_string());
    let (tenant, audience) = ("11111111-2222-3333-4444-555555555555", "api://weir-ingest");
    let config = write_config(
        dir.path(),
        &format!(
            "address = \"127.0.0.1:0\"\n[sources.ingest.auth.entra]\ntenant = \"{tenant}\"\n\
             audience = \"{audience}\"\njwks_url = \"http://127.0.0.1:{jwks_port}/keys\""
        ),
        Some("address = \"127.0.0.1:0\""),
        "200ms",
    );
    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    let port = source_port(&weir);
    let admin = weir.admin_address(0, Duration::from_secs(60));
    let now = chrono::Utc::now().timestamp();
    let claims = |tid: &str, aud: &str, exp: i64| {
        json!({
            "iss": format!("https://login.microsoftonline.com/{tid}/v2.0"),
            "aud": aud, "tid": tid, "exp": exp, "nbf": now - 10, "sub": "device-writer",
        })
    };
    let good = jwt(
        keys,
        "signing",
        "signing",
        &claims(tenant, audience, now + 600),
    );
    let cases = [
        ("entra-valid", good.clone(), 202),
        (
            "entra-other-audience",
            jwt(
                keys,
                "signing",
                "signing",
                &claims(tenant, "api://other", now + 600),
            ),
            403,
        ),
        (
            "entra-other-tenant",
            jwt(
                keys,
                "signing",
                "signing",
                &claims("other-tenant", audience, now + 600),
            ),
            403,
        ),
        (
            "entra-expired",
            jwt(
                keys,
                "signing",
                "signing",
                &claims(tenant, audience, now - 3600),
            ),
            401,
        ),
        (
            "entra-forged",
            jwt(
                keys,
                "stranger",
                "signing",
                &claims(tenant, audience, now + 600),
            ),
            401,
        ),
        (
            "entra-unknown-key",
            jwt(
                keys,
                "stranger",
                "stranger",
                &claims(tenant, audience, now + 600),
            ),
            401,
        ),
        (
            "entra-garbage",
            "eyJhbGciOiJSUzI1NiJ9.e30.AAAA".to_owned(),
            401,
        ),
    ];
    for (id, token, expected) in &cases {
        let header = format!("Bearer {token}");
        let body = json!({ "id": id }).to_string();
        let reply = http(
            port,
            "POST",
            "/events",
            &[("Authorization", &header)],
            body.as_bytes(),
        );
        assert_eq!(reply.status, *expected, "{id}: {}", reply.body);
    }
    let sink = dir.path().join("events");
    wait_for_ids(
        &sink,
        &BTreeSet::from(["entra-valid".to_owned()]),
        &mut weir,
    );
    let written: BTreeSet<String> = sink_ids(&sink).into_iter().collect();
    assert_eq!(written, BTreeSet::from(["entra-valid".to_owned()]));
    let log = wal_bytes(dir.path());
    for (id, _, expected) in &cases {
        assert_eq!(contains(&log, id), *expected == 202, "{id} in the log");
    }
    let metrics = weir_tests::service::http(&admin, "GET", "/metrics", None, b"").1;
    let refusals = |reason: &str| {
        metric(
            &metrics,
            "weir_http_auth_refused_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert_eq!(refusals("forbidden"), 2.0, "{metrics}");
    assert_eq!(refusals("invalid"), 4.0, "{metrics}");
    weir.terminate();
}

/// Issue 19: the error of a failed start named its pipeline as empty (`pipeline ``); it names the
/// pipelines that use the sink now, and still no secret of the connection string.
#[test]
fn a_failed_start_names_its_pipeline_and_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "c2VjcmV0LXNob3VsZC1ub3QtbGVhaw==";
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"

[sources.ingest]
kind = "http"
address = "127.0.0.1:0"

[sinks.alerts]
kind = "eventhubs"
connection_string = "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=k;SharedAccessKey={secret};EntityPath=alerts"
custom_endpoint = "amqp://127.0.0.1:1"

[sinks.dead]
kind = "stdout"

[pipelines.telemetry]
source = "ingest"
dead_letter = "dead"

[[pipelines.telemetry.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = "alerts" }}
"#,
        plugin = plugin_path("passthrough").display(),
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    let status = WeirProcess::run(&path).wait(Duration::from_secs(120));
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("weir.log")).expect("log");
    assert!(
        log.contains("sink `alerts` (pipeline `telemetry`)"),
        "{log}"
    );
    assert!(!log.contains("pipeline ``"), "{log}");
    assert!(!log.contains(secret), "{log}");
}
