//! The webhook sink through `weir run`: the telemetry anomaly pipeline posts its alerts to an HTTP
//! server on 127.0.0.1 (a small one in this test) that accepts some, answers 500 a few times and
//! then accepts others, answers 500 for good to some, and refuses some with 400. The accepted
//! alerts are exactly the rule's (derived in the test), each delivered once; the retried ones
//! arrive after their 500s with the same body and `Idempotency-Key`; the ones that fail for good
//! are in the dead-letter sink with the reason; nothing is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use weir_tests::telemetry::{
    PipelineOptions, anomaly_pipeline, assert_alerts_match, expected_alerts, generated_readings,
    write_input,
};
use weir_tests::{read_jsonl_dir, run_to_completion};

/// Retries after the first attempt, as configured below.
const MAX_RETRIES: usize = 3;
/// 500s a transiently failing alert gets before it is accepted (fewer than the attempts).
const TRANSIENT_FAILURES: usize = 2;

/// What the server does with an alert, chosen from its EventId alone (not from anything Weir
/// decides), so the test knows each alert's fate in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// 200 at once.
    Accepted,
    /// 500 `TRANSIENT_FAILURES` times, then 200.
    AcceptedAfterRetries,
    /// 500 every time: dead-lettered once the retries are spent.
    AlwaysFails,
    /// 400: final at once, dead-lettered without a retry.
    Refused,
}

fn fate(event_id: &str) -> Fate {
    // FNV-1a: stable across runs and platforms.
    let hash = event_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    match hash % 4 {
        0 => Fate::Accepted,
        1 => Fate::AcceptedAfterRetries,
        2 => Fate::AlwaysFails,
        _ => Fate::Refused,
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Received {
    body: Value,
    idempotency_key: String,
    status: u16,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 (keep-alive, `Content-Length` bodies): enough for
/// reqwest's POSTs. It stops accepting when dropped; connection threads end when Weir closes
/// its connections.
struct AlertServer {
    address: String,
    received: Arc<Mutex<Vec<Received>>>,
    stopping: Arc<AtomicBool>,
}

impl AlertServer {
    fn start() -> AlertServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (log, stop) = (Arc::clone(&received), Arc::clone(&stopping));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(stream, &log));
            }
        });
        AlertServer {
            address,
            received,
            stopping,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/alerts", self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("log").clone()
    }
}

impl Drop for AlertServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.address);
    }
}

/// Answers the requests of one connection until it closes.
fn serve(stream: TcpStream, log: &Mutex<Vec<Received>>) {
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut length = 0usize;
        let mut idempotency_key = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().expect("content length"),
                    "idempotency-key" => idempotency_key = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("request body");
        assert!(request_line.starts_with("POST /alerts "), "{request_line}");
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        let event_id = body["EventId"].as_str().expect("EventId").to_owned();
        let status = {
            let mut log = log.lock().expect("log");
            let earlier = log
                .iter()
                .filter(|r| r.body["EventId"] == event_id.as_str())
                .count();
            let status = match fate(&event_id) {
                Fate::Accepted => 200,
                Fate::AcceptedAfterRetries if earlier < TRANSIENT_FAILURES => 500,
                Fate::AcceptedAfterRetries => 200,
                Fate::AlwaysFails => 500,
                Fate::Refused => 400,
            };
            log.push(Received {
                body,
                idempotency_key,
                status,
            });
            status
        };
        let (reason, text) = match status {
            200 => ("OK", "accepted"),
            400 => ("Bad Request", "alert refused by the test server"),
            _ => ("Internal Server Error", "test server failure"),
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn alerts_are_posted_retried_after_500s_and_dead_lettered_when_they_fail_for_good() {
    let server = AlertServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let readings = generated_readings(16, 60, 17);
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());
    // The alerts go to the webhook instead of JSON Lines files.
    let config = std::fs::read_to_string(&paths.config).expect("config");
    let file_sink = "[sinks.alerts]\nkind = \"file\"\npath = \"alerts\"";
    assert!(config.contains(file_sink), "{config}");
    let config = config.replace(
        file_sink,
        &format!(
            "[sinks.alerts]\nkind = \"webhook\"\nurl = \"{}\"\nbatch_max_records = 1\ntimeout = \"10s\"\nmax_retries = {MAX_RETRIES}\ninitial_backoff = \"10ms\"\nmax_backoff = \"40ms\"",
            server.url()
        ),
    );
    std::fs::write(&paths.config, config).expect("config");

    run_to_completion(&paths.config, Duration::from_secs(180));

    // Every expected alert, by its fate.
    let expected = expected_alerts(&readings);
    let mut by_fate: BTreeMap<Fate, Vec<_>> = BTreeMap::new();
    for alert in &expected {
        by_fate
            .entry(fate(&alert.event_id))
            .or_default()
            .push(alert.clone());
    }
    for kind in [
        Fate::Accepted,
        Fate::AcceptedAfterRetries,
        Fate::AlwaysFails,
        Fate::Refused,
    ] {
        assert!(
            by_fate.get(&kind).is_some_and(|a| !a.is_empty()),
            "the input yields no alert whose fate is {kind:?}: {by_fate:?}"
        );
    }

    let received = server.received();
    let mut requests: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for request in &received {
        let id = request.body["EventId"]
            .as_str()
            .expect("EventId")
            .to_owned();
        requests.entry(id).or_default().push(request);
    }

    // Accepted alerts (at once or after retries) are exactly the rule's, each accepted once.
    let accepted: Vec<Value> = received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body.clone())
        .collect();
    let should_arrive: Vec<_> = expected
        .iter()
        .filter(|a| {
            matches!(
                fate(&a.event_id),
                Fate::Accepted | Fate::AcceptedAfterRetries
            )
        })
        .cloned()
        .collect();
    assert_alerts_match(&accepted, &should_arrive);

    // How many requests each alert took: one, the failures plus one, every attempt, or one.
    for alert in &expected {
        let tries = requests.get(&alert.event_id).map_or(&[][..], Vec::as_slice);
        let statuses: Vec<u16> = tries.iter().map(|r| r.status).collect();
        let want: Vec<u16> = match fate(&alert.event_id) {
            Fate::Accepted => vec![200],
            Fate::AcceptedAfterRetries => {
                let mut want = vec![500; TRANSIENT_FAILURES];
                want.push(200);
                want
            }
            Fate::AlwaysFails => vec![500; MAX_RETRIES + 1],
            Fate::Refused => vec![400],
        };
        assert_eq!(statuses, want, "requests for {}", alert.event_id);
        // A retry is the same request: same body, same idempotency key.
        let keys: BTreeSet<&str> = tries.iter().map(|r| r.idempotency_key.as_str()).collect();
        assert_eq!(keys.len(), 1, "{}: {keys:?}", alert.event_id);
        assert!(keys.iter().all(|k| k.starts_with("telemetry/")), "{keys:?}");
        assert!(
            tries.iter().all(|r| r.body == tries[0].body),
            "{}: retried with another body",
            alert.event_id
        );
    }
    // Different alerts never share a key.
    let keys: BTreeSet<&str> = received
        .iter()
        .map(|r| r.idempotency_key.as_str())
        .collect();
    assert_eq!(keys.len(), requests.len());

    // Those that failed for good are dead letters, with the reason, each once.
    let dead_letters: Vec<Value> = read_jsonl_dir(&paths.dead_letters)
        .into_iter()
        .filter(|d| d["kind"] == "sink_refused")
        .collect();
    let mut dead: BTreeMap<String, &Value> = BTreeMap::new();
    for letter in &dead_letters {
        assert_eq!(letter["sink"], "alerts", "{letter}");
        assert_eq!(letter["pipeline"], "telemetry", "{letter}");
        let body: Value =
            serde_json::from_str(letter["body"].as_str().expect("body text")).expect("alert JSON");
        let id = body["EventId"].as_str().expect("EventId").to_owned();
        // The dead letter holds the alert as it was posted.
        let posted = &requests.get(&id).expect("posted before dead-lettering")[0].body;
        assert_eq!(&body, posted, "{id}");
        assert!(dead.insert(id.clone(), letter).is_none(), "{id} twice");
    }
    let should_be_dead: BTreeSet<String> = expected
        .iter()
        .filter(|a| matches!(fate(&a.event_id), Fate::AlwaysFails | Fate::Refused))
        .map(|a| a.event_id.clone())
        .collect();
    assert_eq!(
        dead.keys().cloned().collect::<BTreeSet<_>>(),
        should_be_dead,
        "dead letters"
    );
    for (id, letter) in &dead {
        let reason = letter["reason"].as_str().expect("reason");
        match fate(id) {
            Fate::AlwaysFails => {
                assert!(
                    reason.contains(&format!("failed {} times", MAX_RETRIES + 1))
                        && reason.contains("HTTP 500")
                        && reason.contains("test server failure"),
                    "{id}: {reason}"
                );
            }
            _ => assert!(
                reason.contains("refused the request")
                    && reason.contains("HTTP 400")
                    && reason.contains("alert refused by the test server"),
                "{id}: {reason}"
            ),
        }
    }

    // Nothing lost: every alert was accepted or dead-lettered, none both.
    let accepted_ids: BTreeSet<String> = accepted
        .iter()
        .map(|a| a["EventId"].as_str().expect("EventId").to_owned())
        .collect();
    assert!(accepted_ids.is_disjoint(&should_be_dead));
    assert_eq!(accepted_ids.len() + dead.len(), expected.len());
    println!(
        "{} alerts: {} accepted at once, {} after {TRANSIENT_FAILURES} 500s, {} dead-lettered after {} 500s, {} refused with 400",
        expected.len(),
        by_fate[&Fate::Accepted].len(),
        by_fate[&Fate::AcceptedAfterRetries].len(),
        by_fate[&Fate::AlwaysFails].len(),
        MAX_RETRIES + 1,
        by_fate[&Fate::Refused].len()
    );
}
