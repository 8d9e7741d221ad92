//! Webhooks: records POSTed as JSON to a URL (Logic Apps, Fabric custom endpoints, Teams or Slack
//! incoming webhooks). At least once: a request that fails with a connection error, a timeout, 408,
//! 429 or a 5xx status is retried with exponential backoff (honouring `Retry-After`); once every
//! attempt failed, or at once for any other status, its records go back to the pipeline, which
//! sends them to its dead-letter sink with the reason. Each request carries a deterministic
//! `Idempotency-Key` (pipeline, partition, source position, output index), so a receiver can drop
//! the repeats a replay after a crash sends.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::json;

use crate::config::{WebhookSinkConfig, expand_env};
use crate::event::{Event, Position};
use crate::sink::{
    RefusalKind, Refused, Sink, SinkError, SinkErrorKind, SinkProgress, SinkWriter, WriterScope,
};

/// The header that carries a request's deterministic id.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// A webhook endpoint.
pub struct WebhookSink {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    config: WebhookSinkConfig,
    client: reqwest::Client,
    headers: HeaderMap,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.shared.name)
            .field("url", &self.shared.config.url)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// A sink posting to `config.url`.
    pub fn new(name: &str, config: &WebhookSinkConfig) -> Result<Self, SinkError> {
        let fail = |reason: String| SinkError::opening(SinkErrorKind::Misconfigured, name, reason);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (key, value) in &config.headers {
            let header = HeaderName::from_bytes(key.as_bytes())
                .map_err(|e| fail(format!("bad header name `{key}`: {e}")))?;
            let mut value = HeaderValue::from_str(&expand_env(value))
                .map_err(|e| fail(format!("bad value for header `{key}`: {e}")))?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout.get())
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot create the HTTP client: {e}")))?;
        Ok(WebhookSink {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                config: config.clone(),
                client,
                headers,
            }),
        })
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn describe(&self) -> String {
        format!("webhook {}", self.shared.config.url)
    }

    async fn open_writer(
        &self,
        scope: &WriterScope,
        _progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        Ok(Box::new(WebhookWriter {
            shared: Arc::clone(&self.shared),
            scope: scope.clone(),
            last_position: None,
            output_index: 0,
            delivered: 0,
        }))
    }
}

/// The writer of one pipeline partition.
struct WebhookWriter {
    shared: Arc<Shared>,
    scope: WriterScope,
    last_position: Option<Position>,
    output_index: u32,
    /// Records delivered since the writer opened.
    delivered: u64,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try, after at least this long when the server said so.
    Retry(String, Option<Duration>),
    /// Never worth another try.
    Fail(String),
}

impl WebhookWriter {
    fn id(&mut self, event: &Event) -> String {
        if self.last_position == Some(event.position) {
            self.output_index += 1;
        } else {
            self.last_position = Some(event.position);
            self.output_index = 0;
        }
        format!(
            "{}/{}/{}/{}",
            self.scope.pipeline, self.scope.partition, event.position, self.output_index
        )
    }

    async fn attempt(&self, body: &[u8], id: &str) -> Attempt {
        let shared = &self.shared;
        let request = shared
            .client
            .post(&shared.config.url)
            .headers(shared.headers.clone())
            .header(IDEMPOTENCY_HEADER, id)
            .body(body.to_vec());
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry(
                    format!("no answer within {:?}", shared.config.timeout.get()),
                    None,
                );
            }
            Err(e) => return Attempt::Retry(format!("request failed: {e}"), None),
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(200).collect();
        let reason = format!("HTTP {status}: {excerpt}");
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            Attempt::Retry(reason, retry_after)
        } else {
            Attempt::Fail(reason)
        }
    }

    /// Posts `body` until it is delivered or every attempt failed; the error is the reason.
    async fn deliver(&self, body: &[u8], id: &str) -> Result<(), (RefusalKind, String)> {
        let config = &self.shared.config;
        let mut backoff = config.initial_backoff.get();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (reason, retry_after) = match self.attempt(body, id).await {
                Attempt::Delivered => return Ok(()),
                Attempt::Fail(reason) => {
                    return Err((
                        RefusalKind::RejectedByDestination,
                        format!("webhook {} refused the request: {reason}", config.url),
                    ));
                }
                Attempt::Retry(reason, retry_after) => (reason, retry_after),
            };
            if attempts > config.max_retries {
                return Err((
                    RefusalKind::Undelivered,
                    format!(
                        "webhook {} failed {attempts} times; last: {reason}",
                        config.url
                    ),
                ));
            }
            let wait = retry_after
                .map_or(backoff, |after| after.max(backoff))
                .min(config.max_backoff.get());
            tracing::warn!(
                sink = %self.shared.name, pipeline = %self.scope.pipeline,
                partition = self.scope.partition, id, attempt = attempts, %reason,
                wait_ms = wait.as_millis() as u64, "webhook request failed; retrying"
            );
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(config.max_backoff.get());
        }
    }
}

#[async_trait]
impl SinkWriter for WebhookWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        let mut refused = Vec::new();
        let mut valid = Vec::with_capacity(records.len());
        for record in records {
            let id = self.id(&record);
            if serde_json::from_slice::<serde::de::IgnoredAny>(&record.body).is_ok() {
                valid.push((id, record));
            } else {
                refused.push(Refused {
                    record,
                    kind: RefusalKind::Malformed,
                    reason: "the record is not one JSON value, so it cannot be posted".to_owned(),
                });
            }
        }
        let batch = self.shared.config.batch_max_records.max(1);
        let mut valid = valid.into_iter().peekable();
        while valid.peek().is_some() {
            let chunk: Vec<(String, Event)> = valid.by_ref().take(batch).collect();
            let (body, id) = if batch == 1 {
                (chunk[0].1.body.to_vec(), chunk[0].0.clone())
            } else {
                let mut body = Vec::from(&b"["[..]);
                for (index, (_, record)) in chunk.iter().enumerate() {
                    if index > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&record.body);
                }
                body.push(b']');
                let id = match (chunk.first(), chunk.len()) {
                    (Some((first, _)), 1) => first.clone(),
                    (Some((first, _)), n) => format!("{first}+{n}"),
                    (None, _) => String::new(),
                };
                (body, id)
            };
            match self.deliver(&body, &id).await {
                Ok(()) => self.delivered += chunk.len() as u64,
                Err((kind, reason)) => {
                    tracing::error!(sink = %self.shared.name, id, %reason, "webhook delivery failed; dead-lettering");
                    refused.extend(chunk.into_iter().map(|(_, record)| Refused {
                        record,
                        kind,
                        reason: reason.clone(),
                    }));
                }
            }
        }
        Ok(refused)
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        // Every request was answered inside `write`: nothing is buffered.
        Ok(json!({ "delivered": self.delivered }))
    }
}

#[cfg(test)]
mod tests;
