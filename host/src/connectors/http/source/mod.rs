//! The HTTP ingest endpoint: `POST /events` with one JSON event, a JSON array of events, or NDJSON.
//!
//! Accepted events are appended to a write-ahead log per partition (see `wal`) and synced before
//! the `202 Accepted` reply, so an acknowledged event survives a crash. Readers tail their
//! partition's log; an event's position is the byte offset of its frame in that log.
//!
//! - Partition key: the `key_header` header if present, else the top-level `key_field` of the
//!   event if configured, else none (the partition is then chosen by a stable hash of the body).
//! - Properties: request headers `x-weir-prop-NAME` become property `NAME` of every event.
//! - Replies: `202 {"accepted": n}`; `400` for an empty or unreadable body; `401` without an
//!   accepted credential (when `auth` is configured); `408` for a body slower than
//!   `body_timeout`; `413` for a body over `max_request_bytes`; `429` (with `Retry-After`) while a
//!   partition's log holds more than `max_wal_bytes` the pipeline has not checkpointed; `503`
//!   (with `Retry-After`) when the log writer has `wal_queue` requests waiting already, or when
//!   the log cannot be written. `GET /healthz` answers `200`.
//! - Connections: at most `max_connections` (more are answered `503` and closed), each with
//!   `header_timeout` to send a request head; TLS when configured (see [`crate::net`]).

mod body;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod wal;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::auth::{AuthRefusal, Credentials};
use crate::config::HttpSourceConfig;
use crate::event::{Event, PartitionId, Position, now_millis, partition_for_key};
use crate::json::top_level_field;
use crate::metrics::{Metrics, names};
use crate::net::{ListenerConfig, ServeOptions};
use crate::source::{
    PartitionReader, PartitionStart, ReadOutcome, Source, SourceError, SourceErrorKind,
};
use wal::{Append, Cursor, PartitionLog};

/// Prefix of the request headers kept as event properties.
const PROPERTY_HEADER_PREFIX: &str = "x-weir-prop-";
/// How long a new source waits for a previous one on the same log to let go of it.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a stop waits for requests in flight.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Events POSTed over HTTP, made durable in a write-ahead log before they are acknowledged.
#[derive(Debug)]
pub struct HttpSource {
    name: String,
    config: HttpSourceConfig,
    local_addr: SocketAddr,
    logs: Vec<Arc<PartitionLog>>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    writers: Vec<std::thread::JoinHandle<()>>,
}

/// What the request handlers share.
#[derive(Debug)]
struct Ingest {
    source_name: String,
    partitions: u32,
    key_header: HeaderName,
    key_field: Option<String>,
    max_request_bytes: usize,
    writers: Vec<mpsc::Sender<Append>>,
    /// Each partition's log, to bound what it holds.
    logs: Vec<Arc<PartitionLog>>,
    credentials: Option<Credentials>,
    body_timeout: Duration,
    max_wal_bytes: u64,
    retry_after: HeaderValue,
    metrics: Metrics,
}

/// What is checked before anything opens: the log directory, the key header, the credentials
/// and TLS.
struct Checked {
    wal_dir: PathBuf,
    key_header: HeaderName,
    credentials: Option<Credentials>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl HttpSource {
    /// Opens (and repairs) the write-ahead log in `config.wal_dir`, then starts listening on
    /// `config.address` (port 0 picks a free port: see [`HttpSource::local_addr`]). Settings that
    /// cannot work are `Misconfigured`; the log or the listener failing is `Unavailable`.
    /// Paths in `config` (`wal_dir`, `tls`, `auth.tokens_file`) are used as they are: the caller
    /// resolves them. Refusals and limits are counted in `metrics`.
    pub async fn start(
        name: &str,
        config: HttpSourceConfig,
        metrics: Metrics,
    ) -> Result<Self, (SourceErrorKind, String)> {
        let checked =
            checked_settings(&config).map_err(|reason| (SourceErrorKind::Misconfigured, reason))?;
        Self::start_checked(name, config, checked, metrics)
            .await
            .map_err(|reason| (SourceErrorKind::Unavailable, reason))
    }

    async fn start_checked(
        name: &str,
        config: HttpSourceConfig,
        checked: Checked,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let Checked {
            wal_dir,
            key_header,
            credentials,
            tls,
        } = checked;
        let dir_lock = Arc::new(lock_dir(&wal_dir).await?);
        let partitions = config.partitions;
        let segment_bytes = config.wal_segment_bytes;
        let opened = tokio::task::spawn_blocking(move || {
            warn_about_other_partitions(&wal_dir, partitions);
            (0..partitions)
                .map(|p| {
                    wal::open_partition(
                        &wal_dir.join(p.to_string()),
                        p,
                        segment_bytes,
                        Arc::clone(&dir_lock),
                    )
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .await
        .map_err(|e| format!("opening the write-ahead log failed: {e}"))??;

        let listener = tokio::net::TcpListener::bind(&config.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.address))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;

        let mut logs = Vec::with_capacity(opened.len());
        let mut senders = Vec::with_capacity(opened.len());
        let mut writers = Vec::with_capacity(opened.len());
        for (log, writer) in opened {
            let (sender, receiver) = mpsc::channel(config.wal_queue.max(1));
            let thread = std::thread::Builder::new()
                .name(format!("weir-wal-{}", log.partition))
                .spawn(move || writer.run(receiver))
                .map_err(|e| format!("cannot start a write-ahead log writer: {e}"))?;
            logs.push(log);
            senders.push(sender);
            writers.push(thread);
        }

        let ingest = Arc::new(Ingest {
            source_name: name.to_owned(),
            partitions,
            key_header,
            key_field: config.key_field.clone(),
            max_request_bytes: config.max_request_bytes,
            writers: senders,
            logs: logs.clone(),
            credentials,
            body_timeout: config.body_timeout.get(),
            max_wal_bytes: config.max_wal_bytes,
            retry_after: HeaderValue::from(retry_after_secs(&config)),
            metrics: metrics.clone(),
        });
        let app = Router::new()
            .route("/events", post(post_events))
            .route("/healthz", get(healthz))
            .with_state(ingest);
        let (stop, stopped) = oneshot::channel::<()>();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let options = ServeOptions {
            name: format!("source:{name}"),
            tls,
            max_connections: config.max_connections,
            header_timeout: config.header_timeout.get(),
            retry_after_secs: retry_after_secs(&config),
            metrics,
        };
        let server = tokio::spawn(crate::net::serve(
            listener,
            app,
            options,
            async move {
                // A dropped sender stops the server as well.
                let _ = stopped.await;
            },
            STOP_WAIT,
        ));
        tracing::info!(source = %name, address = %local_addr, scheme, "HTTP source listening");
        Ok(HttpSource {
            name: name.to_owned(),
            config,
            local_addr,
            logs,
            stop: Some(stop),
            server: Some(server),
            writers,
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish (up to a few seconds), and waits until the
    /// log writers have ended and released the write-ahead log.
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(STOP_WAIT, &mut server).await.is_err()
        {
            tracing::warn!(source = %self.name, "requests still in flight at stop; aborting them");
            server.abort();
            let _ = server.await;
        }
        let writers = std::mem::take(&mut self.writers);
        let _ = tokio::task::spawn_blocking(move || {
            for writer in writers {
                let _ = writer.join();
            }
        })
        .await;
    }
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        // Stops the server gracefully; the writers end once the requests in flight are done.
        drop(self.stop.take());
    }
}

/// Whole seconds for `Retry-After` (at least 1).
fn retry_after_secs(config: &HttpSourceConfig) -> u64 {
    config.retry_after.get().as_secs_f64().ceil().max(1.0) as u64
}

/// What `config` needs before anything opens, or why it cannot work.
fn checked_settings(config: &HttpSourceConfig) -> Result<Checked, String> {
    let wal_dir = config
        .wal_dir
        .clone()
        .ok_or_else(|| "no `wal_dir` for the write-ahead log".to_owned())?;
    if config.partitions == 0 {
        return Err("`partitions` must be at least 1".to_owned());
    }
    if config.wal_segment_bytes == 0 {
        return Err("`wal_segment_bytes` must be at least 1".to_owned());
    }
    if config.max_connections == 0 || config.wal_queue == 0 || config.max_wal_bytes == 0 {
        return Err(
            "`max_connections`, `wal_queue` and `max_wal_bytes` must be at least 1".to_owned(),
        );
    }
    let listener = ListenerConfig {
        address: &config.address,
        tls: config.tls.as_ref(),
        allow_plain_http: config.allow_plain_http,
    };
    if let Some(refusal) = listener.refusal() {
        return Err(refusal);
    }
    let key_header = HeaderName::from_bytes(config.key_header.to_ascii_lowercase().as_bytes())
        .map_err(|e| {
            format!(
                "`key_header` `{}` is not a header name: {e}",
                config.key_header
            )
        })?;
    let credentials = match &config.auth {
        Some(auth) => Some(Credentials::new(auth, auth.tokens_file.clone())?),
        None => None,
    };
    let tls = config
        .tls
        .as_ref()
        .map(crate::net::tls::acceptor)
        .transpose()?;
    Ok(Checked {
        wal_dir,
        key_header,
        credentials,
        tls,
    })
}

/// Takes the exclusive lock of the log directory, waiting a little for a previous owner.
async fn lock_dir(dir: &Path) -> Result<File, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "the write-ahead log {} is in use by another source",
                    dir.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
}

/// Logs partitions left on disk by a configuration with more partitions: their events are not read.
fn warn_about_other_partitions(dir: &Path, partitions: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            && p >= partitions
        {
            tracing::warn!(
                dir = %entry.path().display(), partitions,
                "write-ahead log of a partition beyond the configured count: its events will not be read"
            );
        }
    }
}

#[async_trait]
impl Source for HttpSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let mut readers: Vec<Box<dyn PartitionReader>> = Vec::with_capacity(starts.len());
        for start in starts {
            let log = self.logs.get(start.partition as usize).ok_or_else(|| {
                SourceError::start(
                    SourceErrorKind::Misconfigured,
                    &self.name,
                    format!(
                        "partition {} does not exist (the source has {})",
                        start.partition, self.config.partitions
                    ),
                )
            })?;
            readers.push(Box::new(
                WalReader::open(&self.name, Arc::clone(log), start.after).await?,
            ));
        }
        Ok(readers)
    }
}

/// Reads one partition's write-ahead log, waiting for new frames.
#[derive(Debug)]
struct WalReader {
    source_name: String,
    log: Arc<PartitionLog>,
    id: u64,
    /// Log offset of the next frame to read.
    next: u64,
    /// Frames at positions up to this one are covered by the checkpoint.
    skip_through: Option<Position>,
    /// Taken while a blocking read runs.
    cursor: Option<Cursor>,
}

impl WalReader {
    async fn open(
        source_name: &str,
        log: Arc<PartitionLog>,
        after: Option<Position>,
    ) -> Result<Self, SourceError> {
        let mut cursor = Cursor::default();
        let next = match after {
            None => log.first_offset(),
            Some(after) => {
                if after >= log.durable_end() {
                    tracing::warn!(
                        source = %source_name, partition = log.partition, after, end = log.durable_end(),
                        "the checkpoint is beyond the end of the write-ahead log (was the log deleted?): \
                         new events at positions up to it will be skipped"
                    );
                } else if after < log.first_offset() {
                    tracing::warn!(
                        source = %source_name, partition = log.partition, after, oldest = log.first_offset(),
                        "the checkpoint is older than the write-ahead log kept: events in between are gone"
                    );
                }
                let reading = Arc::clone(&log);
                let (found, returned) = tokio::task::spawn_blocking(move || {
                    let next = cursor.resume_point(&reading, after);
                    (next, cursor)
                })
                .await
                .map_err(|e| {
                    SourceError::start(
                        SourceErrorKind::Unavailable,
                        source_name,
                        format!(
                            "partition {}: finding the resume point failed: {e}",
                            log.partition
                        ),
                    )
                })?;
                cursor = returned;
                found
            }
        };
        let id = log.add_reader(after);
        Ok(WalReader {
            source_name: source_name.to_owned(),
            log,
            id,
            next,
            skip_through: after,
            cursor: Some(cursor),
        })
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::read(
            SourceErrorKind::Unavailable,
            &self.source_name,
            self.log.partition,
            reason,
        )
    }

    /// Reads what is durable, on a blocking thread.
    async fn read(&mut self, max: usize, end: u64) -> Result<Vec<Event>, SourceError> {
        let mut cursor = self.cursor.take().unwrap_or_default();
        let log = Arc::clone(&self.log);
        let (next, skip) = (self.next, self.skip_through);
        let (cursor, result) = tokio::task::spawn_blocking(move || {
            let result = cursor.read(&log, next, end, max, skip);
            (cursor, result)
        })
        .await
        .map_err(|e| self.error(format!("reading the write-ahead log failed: {e}")))?;
        self.cursor = Some(cursor);
        let (events, next) = result.map_err(|reason| self.error(reason))?;
        self.next = next;
        Ok(events)
    }
}

#[async_trait]
impl PartitionReader for WalReader {
    fn partition(&self) -> PartitionId {
        self.log.partition
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<ReadOutcome, SourceError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let log = Arc::clone(&self.log);
            let notified = log.notify().notified();
            tokio::pin!(notified);
            // Registered before the check, so an append right after it still wakes us.
            notified.as_mut().enable();
            let end = log.durable_end();
            if self.next < end {
                let events = self.read(max, end).await?;
                if !events.is_empty() {
                    return Ok(ReadOutcome::Events(events));
                }
                // All covered by the checkpoint: look again.
                if tokio::time::Instant::now() >= deadline {
                    return Ok(ReadOutcome::Idle);
                }
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(ReadOutcome::Idle);
            }
        }
    }

    /// Bytes of the log written (and synced) but not yet read.
    fn lag(&self) -> Option<u64> {
        Some(self.log.durable_end().saturating_sub(self.next))
    }

    fn checkpointed(&mut self, position: Position) {
        let released = self.log.checkpointed(self.id, position);
        if released.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || wal::delete_segments(released));
            }
            Err(_) => wal::delete_segments(released),
        }
    }
}

impl Drop for WalReader {
    fn drop(&mut self) {
        self.log.remove_reader(self.id);
    }
}

/// An error reply: status and reason.
type Refusal = (StatusCode, String);

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn healthz() -> Response {
    json_reply(StatusCode::OK, serde_json::json!({ "status": "ok" }))
}

async fn post_events(State(ingest): State<Arc<Ingest>>, request: Request) -> Response {
    if let Err(refusal) = ingest.authorize(request.headers()).await {
        return refusal;
    }
    match ingest.accept(request).await {
        Ok(accepted) => json_reply(
            StatusCode::ACCEPTED,
            serde_json::json!({ "accepted": accepted }),
        ),
        Err((status, reason)) => {
            if status.is_server_error() {
                tracing::error!(source = %ingest.source_name, %reason, "HTTP ingest failed");
            } else {
                tracing::debug!(source = %ingest.source_name, %status, %reason, "HTTP ingest refused a request");
            }
            let mut reply = json_reply(status, serde_json::json!({ "error": reason }));
            if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                reply
                    .headers_mut()
                    .insert(header::RETRY_AFTER, ingest.retry_after.clone());
            }
            reply
        }
    }
}

impl Ingest {
    /// The `401` for a request without an accepted credential, counted; says nothing more.
    #[allow(
        clippy::result_large_err,
        reason = "the error is the HTTP refusal itself, built at most once per request"
    )]
    async fn authorize(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        credentials.check(headers).await.map_err(|refusal| {
            let listener = format!("source:{}", self.source_name);
            self.metrics.add(
                names::HTTP_AUTH_REFUSED,
                &[("listener", &listener), ("reason", refusal.label())],
                1,
            );
            if refusal == AuthRefusal::Forbidden {
                return json_reply(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({ "error": "forbidden" }),
                );
            }
            let mut reply = json_reply(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": "unauthorized" }),
            );
            reply
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            reply
        })
    }

    /// Counts a request refused by a limit.
    fn limited(&self, reason: &'static str) {
        self.metrics.add(
            names::HTTP_REQUESTS_LIMITED,
            &[("source", &self.source_name), ("reason", reason)],
            1,
        );
    }

    /// `429` when a partition that `frames` go to holds more than `max_wal_bytes` on disk.
    fn check_backlog(&self, frames: &[Vec<u8>]) -> Result<(), Refusal> {
        for (partition, frames) in frames.iter().enumerate() {
            let Some(log) = self.logs.get(partition) else {
                continue;
            };
            let held = log.durable_end().saturating_sub(log.first_offset());
            if !frames.is_empty() && held > self.max_wal_bytes {
                self.limited("backlog");
                return Err((
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "partition {partition}: the pipeline is behind (the write-ahead log holds more than {} bytes)",
                        self.max_wal_bytes
                    ),
                ));
            }
        }
        Ok(())
    }
    /// Makes the request's events durable; returns how many there were.
    async fn accept(&self, request: Request) -> Result<usize, Refusal> {
        let (parts, body) = request.into_parts();
        let body = self.read_body(&parts.headers, body).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err((
                StatusCode::BAD_REQUEST,
                "the request body is empty".to_owned(),
            ));
        }
        // An empty array is the only body with no event: it is accepted, with 0 events.
        let events = body::split_events(&body, is_ndjson(&parts.headers));
        let properties = properties(&parts.headers);
        let header_key = parts
            .headers
            .get(&self.key_header)
            .map(|v| v.as_bytes().to_vec());
        let enqueued_time = now_millis();

        let mut frames: Vec<Vec<u8>> = vec![Vec::new(); self.partitions as usize];
        for event in &events {
            let field_key = match (&header_key, &self.key_field) {
                (None, Some(field)) => top_level_field(event, field)
                    .ok()
                    .flatten()
                    .and_then(|value| value.key_bytes()),
                _ => None,
            };
            let key = header_key.as_deref().or(field_key.as_deref());
            // Without a key, a stable hash of the body spreads events (a retry lands alike).
            let partition = partition_for_key(key.unwrap_or(event), self.partitions) as usize;
            let Some(out) = frames.get_mut(partition) else {
                return Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("no partition {partition}"),
                ));
            };
            wal::encode_frame(out, enqueued_time, key, &properties, event)
                .map_err(|reason| (StatusCode::PAYLOAD_TOO_LARGE, reason))?;
        }

        self.check_backlog(&frames)?;
        let mut pending = Vec::new();
        for (partition, frames) in frames.into_iter().enumerate() {
            if frames.is_empty() {
                continue;
            }
            let (done, durable) = oneshot::channel();
            let writer = &self.writers[partition];
            match writer.try_send(Append { frames, done }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.limited("wal_busy");
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("partition {partition}: the write-ahead log is busy"),
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(unavailable(partition, "the log writer has stopped"));
                }
            }
            pending.push((partition, durable));
        }
        for (partition, durable) in pending {
            match durable.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err(unavailable(partition, &reason)),
                Err(_) => return Err(unavailable(partition, "the log writer has stopped")),
            }
        }
        Ok(events.len())
    }

    /// The whole body, refused with 413 past `max_request_bytes` and 408 past `body_timeout`.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<Bytes, Refusal> {
        match tokio::time::timeout(self.body_timeout, self.read_body_untimed(headers, body)).await {
            Ok(read) => read,
            Err(_) => {
                self.limited("body_timeout");
                Err((
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request body took longer than {:?}", self.body_timeout),
                ))
            }
        }
    }

    async fn read_body_untimed(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<Bytes, Refusal> {
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds {} bytes", self.max_request_bytes),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_request_bytes as u64) {
            return Err(too_large());
        }
        let mut stream = body.into_data_stream();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            })?;
            total += chunk.len();
            if total > self.max_request_bytes {
                return Err(too_large());
            }
            chunks.push(chunk);
        }
        // A body that came in one chunk is kept as it is.
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    }
}

fn unavailable(partition: usize, reason: &str) -> Refusal {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("partition {partition}: the events could not be made durable: {reason}"),
    )
}

/// Whether the body is declared as newline-delimited JSON.
fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|media| {
            matches!(
                media.as_str(),
                "application/x-ndjson"
                    | "application/ndjson"
                    | "application/jsonl"
                    | "application/x-jsonlines"
            )
        })
}

/// Headers `x-weir-prop-NAME: value` as properties `(NAME, value)`.
fn properties(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix(PROPERTY_HEADER_PREFIX)?;
            (!name.is_empty()).then(|| {
                (
                    name.to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
        })
        .collect()
}
