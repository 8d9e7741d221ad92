//! The webhook sink against a real HTTP server on loopback, scripted to fail.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::*;
use crate::config::ConfigDuration;

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    id: String,
    body: String,
    authorization: Option<String>,
}

/// What the server answers, in order; `200` once the script is used up.
#[derive(Default)]
struct Script {
    answers: VecDeque<(u16, Option<u64>)>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Script>>;

async fn receive(State(script): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut script = script.lock().expect("script lock");
    script.seen.push(Seen {
        at: Instant::now(),
        id: headers
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let (status, retry_after) = script.answers.pop_front().unwrap_or((200, None));
    let status = StatusCode::from_u16(status).expect("status");
    match retry_after {
        Some(seconds) => (status, [("retry-after", seconds.to_string())], "busy").into_response(),
        None => (status, "answer").into_response(),
    }
}

/// A server on a free loopback port; it stops when the test's runtime ends.
async fn server(answers: &[(u16, Option<u64>)]) -> (String, Shared) {
    let script: Shared = Arc::new(Mutex::new(Script {
        answers: answers.iter().copied().collect(),
        seen: Vec::new(),
    }));
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{address}/hook"), script)
}

fn config(url: &str, batch: usize, retries: u32) -> WebhookSinkConfig {
    WebhookSinkConfig {
        url: url.to_owned(),
        headers: [("Authorization".to_owned(), "Bearer t0ken".to_owned())].into(),
        batch_max_records: batch,
        timeout: ConfigDuration::from_millis(2_000),
        max_retries: retries,
        initial_backoff: ConfigDuration::from_millis(100),
        max_backoff: ConfigDuration::from_millis(1_500),
    }
}

async fn open(config: &WebhookSinkConfig) -> Box<dyn SinkWriter> {
    let sink = WebhookSink::new("hook", config).expect("sink");
    let scope = WriterScope {
        pipeline: "p".into(),
        partition: 3,
    };
    sink.open_writer(&scope, None).await.expect("writer")
}

fn alert(position: u64, n: u32) -> Event {
    Event::new(3, position, format!("{{\"alert\":{n}}}"))
}

fn seen(script: &Shared) -> Vec<Seen> {
    script.lock().expect("lock").seen.clone()
}

#[tokio::test]
async fn transient_failures_are_retried_with_exponential_backoff_then_delivered_once() {
    let (url, script) = server(&[(503, None), (500, None), (408, None)]).await;
    let mut writer = open(&config(&url, 1, 5)).await;
    let refused = writer.write(vec![alert(7, 1)]).await.expect("write");
    assert!(refused.is_empty(), "{refused:?}");
    let requests = seen(&script);
    assert_eq!(requests.len(), 4, "three failures, then the delivery");
    for request in &requests {
        assert_eq!(request.id, "p/3/7/0", "every attempt carries the same id");
        assert_eq!(request.body, "{\"alert\":1}");
        assert_eq!(request.authorization.as_deref(), Some("Bearer t0ken"));
    }
    // Waits of 100, 200 and 400 ms between the attempts (sleeps never end early).
    let gaps: Vec<Duration> = requests.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, at_least) in gaps.iter().zip([100u64, 200, 400]) {
        assert!(
            *gap >= Duration::from_millis(at_least),
            "gaps {gaps:?} should grow 100, 200, 400 ms"
        );
    }
    let progress = writer.flush().await.expect("flush");
    assert_eq!(progress["delivered"], 1);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_the_longest_backoff() {
    let (url, script) = server(&[(429, Some(1))]).await;
    let mut writer = open(&config(&url, 1, 2)).await;
    assert!(
        writer
            .write(vec![alert(1, 1)])
            .await
            .expect("write")
            .is_empty()
    );
    let requests = seen(&script);
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn records_are_dead_lettered_after_the_last_retry_or_at_once_when_refused() {
    // Always failing: 1 attempt + 2 retries, then the record comes back with the reason.
    let (url, script) = server(&[(500, None); 10]).await;
    let mut writer = open(&config(&url, 1, 2)).await;
    let refused = writer.write(vec![alert(1, 1)]).await.expect("write");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].reason.contains("failed 3 times"),
        "{}",
        refused[0].reason
    );
    assert!(refused[0].reason.contains("500"), "{}", refused[0].reason);
    assert_eq!(refused[0].kind, RefusalKind::Undelivered);
    assert_eq!(seen(&script).len(), 3);

    // A 400 is not retried: the request itself is wrong.
    let (url, script) = server(&[(400, None)]).await;
    let mut writer = open(&config(&url, 1, 5)).await;
    let refused = writer
        .write(vec![alert(1, 1), alert(2, 2)])
        .await
        .expect("write");
    assert_eq!(refused.len(), 1, "the second record is delivered");
    assert_eq!(refused[0].record.position, 1);
    assert!(
        refused[0].reason.contains("refused the request: HTTP 400"),
        "{}",
        refused[0].reason
    );
    assert_eq!(refused[0].kind, RefusalKind::RejectedByDestination);
    assert_eq!(seen(&script).len(), 2);

    // A record that is not JSON is refused without a request.
    let mut writer = writer_for_unreachable().await;
    let refused = writer
        .write(vec![Event::new(3, 9, "not json")])
        .await
        .expect("write");
    assert!(refused[0].reason.contains("not one JSON value"));
    assert_eq!(refused[0].kind, RefusalKind::Malformed);
}

async fn writer_for_unreachable() -> Box<dyn SinkWriter> {
    // A port that was free a moment ago: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    open(&config(&format!("http://127.0.0.1:{port}/hook"), 1, 1)).await
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_dead_lettered() {
    let mut writer = writer_for_unreachable().await;
    let started = Instant::now();
    let refused = writer.write(vec![alert(4, 1)]).await.expect("write");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].reason.contains("failed 2 times"),
        "{}",
        refused[0].reason
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "one backoff"
    );
}

#[tokio::test]
async fn batches_are_posted_as_json_arrays_with_deterministic_ids() {
    let (url, script) = server(&[]).await;
    let mut writer = open(&config(&url, 2, 0)).await;
    // Two outputs of position 5 and one of position 6.
    let refused = writer
        .write(vec![alert(5, 1), alert(5, 2), alert(6, 3)])
        .await
        .expect("write");
    assert!(refused.is_empty());
    let requests = seen(&script);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, "[{\"alert\":1},{\"alert\":2}]");
    assert_eq!(requests[0].id, "p/3/5/0+2");
    assert_eq!(requests[1].body, "[{\"alert\":3}]");
    assert_eq!(requests[1].id, "p/3/6/0");
}
