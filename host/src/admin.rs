//! The admin HTTP API: health, readiness, Prometheus metrics, pipelines with their partitions'
//! positions and lag, plugins with their versions; uploads and rollbacks behind a bearer token.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once every pipeline started, 503 while starting, stopping or after a worker failed |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /pipelines` | pipelines, partitions, positions, checkpoints, lag |
//! | `GET /plugins` | every stage's plugin: active version (and its crate's `name` and `crate_version`), probation, versions, activations |
//! | `GET /plugins/{pipeline}/{stage}` | one stage's plugin |
//! | `POST /plugins/{pipeline}/{stage}` | upload a component (body: its bytes); token required |
//! | `POST /plugins/{pipeline}/{stage}/rollback` | `{"version": "..."}` (or `{}`: the previous one); token required |
//! | `POST /plugins/{pipeline}/{stage}/shadow?events=N[&within=SECONDS]` | run a component (body: its bytes) beside the active version (of a transform, window or join stage) on the next N events of each partition, on a copy of the stage's state, without delivering its outputs; the run ends after SECONDS at the latest; token required |
//! | `GET /plugins/{pipeline}/{stage}/shadow` | the latest shadow run: progress per partition, records and differences per output |
//!
//! Reads other than `/healthz` and `/readyz` require `Authorization: Bearer READ_TOKEN` (or the
//! write token) when a read token is configured. TLS and the limits of [`crate::net`] apply.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::metrics::{MetricKey, names};
use crate::pipeline::Services;
use crate::plugin::{SlotControl, SwapError, VersionOrigin};

/// The environment variable that holds the admin token when the configuration has none.
pub const TOKEN_ENV: &str = "WEIR_ADMIN_TOKEN";
/// The environment variable that holds the read token when the configuration has none.
pub const READ_TOKEN_ENV: &str = "WEIR_ADMIN_READ_TOKEN";
/// Connections the admin API serves at once.
const MAX_CONNECTIONS: usize = 64;
/// Time an admin client has to send a request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How the admin server runs: its address, tokens, upload limit and TLS.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `host:port`.
    pub address: String,
    /// The write token; `None` disables uploads and rollbacks.
    pub token: Option<String>,
    /// The read token; `None` leaves reads open.
    pub read_token: Option<String>,
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    /// TLS (paths resolved).
    pub tls: Option<crate::net::TlsConfig>,
    /// Whether plain HTTP is allowed beyond loopback.
    pub allow_plain_http: bool,
}

impl AdminSettings {
    /// The settings of `config`, tokens resolved from the environment and paths from the
    /// configuration file's directory.
    pub fn from_config(
        config: &crate::config::AdminConfig,
        loaded: &crate::config::LoadedConfig,
    ) -> AdminSettings {
        AdminSettings {
            address: config.address.clone(),
            token: resolve_token(config.token.as_deref()),
            read_token: resolve_read_token(config.read_token.as_deref()),
            max_upload_bytes: config.max_upload_bytes,
            tls: config.tls.as_ref().map(|tls| tls.resolved(loaded)),
            allow_plain_http: config.allow_plain_http,
        }
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
#[error("admin API cannot listen on {address}: {reason}")]
pub struct AdminError {
    /// The configured address.
    pub address: String,
    /// Why.
    pub reason: String,
}

#[derive(Clone)]
struct AdminState {
    services: Services,
    token: Option<String>,
    read_token: Option<String>,
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl AdminServer {
    /// The address it listens on (with the port chosen when the configuration said 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving (requests in flight get a second to finish).
    pub fn stop(self) {
        drop(self.stop);
        drop(self.task);
    }
}

/// The token from the configuration, else from [`TOKEN_ENV`]; `None` disables mutations.
pub fn resolve_token(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.trim().is_empty())
}

/// The read token from the configuration, else from [`READ_TOKEN_ENV`]; `None` leaves reads open.
pub fn resolve_read_token(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var(READ_TOKEN_ENV).ok())
        .filter(|t| !t.trim().is_empty())
}

/// Starts the admin server.
pub async fn serve(
    settings: &AdminSettings,
    services: Services,
) -> Result<AdminServer, AdminError> {
    let address = settings.address.as_str();
    let error = |reason: String| AdminError {
        address: address.to_owned(),
        reason,
    };
    let listener = crate::net::ListenerConfig {
        address,
        tls: settings.tls.as_ref(),
        allow_plain_http: settings.allow_plain_http,
    };
    if let Some(refusal) = listener.refusal() {
        return Err(error(refusal));
    }
    let tls = settings
        .tls
        .as_ref()
        .map(crate::net::tls::acceptor)
        .transpose()
        .map_err(error)?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| error(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| error(e.to_string()))?;
    let token = settings.token.clone();
    if token.is_none() {
        tracing::warn!(
            "admin API: no token configured (admin.token or {TOKEN_ENV}); uploads and rollbacks are refused"
        );
    }
    let services_metrics = services.metrics.clone();
    let state = AdminState {
        services,
        token,
        read_token: settings.read_token.clone(),
    };
    // Everything but the probes sits behind the read token (when there is one).
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/pipelines", get(pipelines))
        .route("/plugins", get(plugins))
        .route("/plugins/{pipeline}/{stage}", get(plugin).post(upload))
        .route("/plugins/{pipeline}/{stage}/rollback", post(rollback))
        .route(
            "/plugins/{pipeline}/{stage}/shadow",
            get(shadow_report).post(start_shadow),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_guard,
        ));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(settings.max_upload_bytes))
        .with_state(state);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = crate::net::ServeOptions {
        name: "admin".to_owned(),
        tls,
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        retry_after_secs: 1,
        metrics: services_metrics,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::net::serve(
        listener,
        router,
        options,
        async move {
            let _ = stopped.await;
        },
        std::time::Duration::from_secs(1),
    ));
    tracing::info!("admin API listening on {scheme}://{bound}");
    Ok(AdminServer {
        address: bound,
        task,
        stop,
    })
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.services.status.is_ready() {
        json_response(StatusCode::OK, json!({ "status": "ready" }))
    } else {
        let why = if state.services.status.is_stopping() {
            "stopping"
        } else {
            "not ready"
        };
        json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "status": why }))
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let now = crate::event::now_millis();
    let mut extra: Vec<(MetricKey, f64)> = Vec::new();
    for pipeline in state.services.status.pipelines() {
        for partition in &pipeline.partitions {
            if let Some(at) = partition.checkpoint_written_at {
                let labels = vec![
                    ("pipeline", pipeline.pipeline.clone()),
                    ("partition", partition.partition.to_string()),
                ];
                extra.push((
                    (names::CHECKPOINT_AGE, labels),
                    (now - at).max(0) as f64 / 1000.0,
                ));
            }
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.services.metrics.render(&extra),
    )
        .into_response()
}

async fn pipelines(State(state): State<AdminState>) -> Response {
    json_response(
        StatusCode::OK,
        json!({ "pipelines": state.services.status.pipelines() }),
    )
}

async fn plugins(State(state): State<AdminState>) -> Response {
    let reports: Vec<_> = state
        .services
        .plugins
        .all()
        .iter()
        .map(|slot| with_active_crate(slot.report()))
        .collect();
    json_response(StatusCode::OK, json!({ "plugins": reports }))
}

/// A slot's report as JSON, with the crate name and version of its active version beside
/// `active` (the content hash), when the component records them (`weir plugin build`).
fn with_active_crate(report: crate::plugin::SlotReport) -> serde_json::Value {
    let active = report
        .versions
        .iter()
        .find(|v| v.info.version == report.active)
        .map(|v| (v.info.name.clone(), v.info.crate_version.clone()));
    let mut value = json!(report);
    if let (Some((Some(name), Some(version))), Some(object)) = (active, value.as_object_mut()) {
        object.insert("name".into(), json!(name));
        object.insert("crate_version".into(), json!(version));
    }
    value
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP refusal itself, built at most once per request"
)]
fn find_slot(
    state: &AdminState,
    pipeline: &str,
    stage: &str,
) -> Result<std::sync::Arc<dyn SlotControl>, Response> {
    state.services.plugins.find(pipeline, stage).ok_or_else(|| {
        json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no stage `{stage}` in pipeline `{pipeline}`") }),
        )
    })
}

async fn plugin(
    State(state): State<AdminState>,
    Path((pipeline, stage)): Path<(String, String)>,
) -> Response {
    match find_slot(&state, &pipeline, &stage) {
        Ok(slot) => json_response(StatusCode::OK, with_active_crate(slot.report())),
        Err(response) => response,
    }
}

/// Checks the bearer token; the refusal otherwise. Comparison takes the same time whatever the
/// first differing byte.
#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP refusal itself, built at most once per request"
)]
fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(expected) = &state.token else {
        return Err(json_response(
            StatusCode::FORBIDDEN,
            json!({ "error": format!("changes are disabled: no admin token is configured (admin.token or {TOKEN_ENV})") }),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let unauthorized = |why: &str| {
        let mut response = json_response(StatusCode::UNAUTHORIZED, json!({ "error": why }));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        response
    };
    match given {
        None => Err(unauthorized("a bearer token is required")),
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("wrong token")),
    }
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// With a read token configured, a request must carry it or the write token: `401` otherwise,
/// counted, with nothing more said.
async fn read_guard(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(read_token) = &state.read_token else {
        return next.run(request).await;
    };
    let given = bearer(request.headers());
    let accepted = given.is_some_and(|given| {
        let read = constant_time_eq(given.as_bytes(), read_token.as_bytes());
        let write = state
            .token
            .as_ref()
            .is_some_and(|t| constant_time_eq(given.as_bytes(), t.as_bytes()));
        read | write
    });
    if accepted {
        return next.run(request).await;
    }
    let reason = if given.is_some() {
        "invalid"
    } else {
        "missing"
    };
    state.services.metrics.add(
        names::HTTP_AUTH_REFUSED,
        &[("listener", "admin"), ("reason", reason)],
        1,
    );
    let mut response = json_response(StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }));
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (index, byte) in a.iter().enumerate() {
        difference |= usize::from(byte ^ b.get(index).copied().unwrap_or(0));
    }
    difference == 0
}

fn swap_error(error: SwapError) -> Response {
    let status = match &error {
        SwapError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SwapError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
        SwapError::NoPrevious { .. } | SwapError::Fixed { .. } => StatusCode::CONFLICT,
    };
    json_response(status, json!({ "error": error.to_string() }))
}

async fn upload(
    State(state): State<AdminState>,
    Path((pipeline, stage)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = authorize(&state, &headers) {
        tracing::warn!(pipeline = %pipeline, stage = %stage, "admin API: plugin upload refused (token)");
        return refusal;
    }
    let slot = match find_slot(&state, &pipeline, &stage) {
        Ok(slot) => slot,
        Err(response) => return response,
    };
    let bytes = body.to_vec();
    match crate::plugin::loading::run_load(move || slot.offer(bytes, VersionOrigin::Api)).await {
        Ok(Ok(offered)) => json_response(StatusCode::OK, json!(offered)),
        Ok(Err(error)) => swap_error(error),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("upload task failed: {e}") }),
        ),
    }
}

/// The `events` of a shadow request's query (`?events=N`, at least 1) and its time bound
/// (`&within=SECONDS`, optional).
fn shadow_events(uri: &axum::http::Uri) -> Result<(u64, Option<std::time::Duration>), String> {
    let query = |name: &str| {
        uri.query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let value = query("events")
        .ok_or("expected ?events=N: the events of each partition to run both versions on")?;
    let events = match value.parse::<u64>() {
        Ok(events) if events > 0 => events,
        _ => {
            return Err(format!(
                "expected ?events=N with N at least 1, found `{value}`"
            ));
        }
    };
    let within = match query("within") {
        None => None,
        Some(value) => match value.parse::<u64>() {
            Ok(seconds) if seconds > 0 => Some(std::time::Duration::from_secs(seconds)),
            _ => {
                return Err(format!(
                    "expected &within=SECONDS with SECONDS at least 1, found `{value}`"
                ));
            }
        },
    };
    Ok((events, within))
}

async fn start_shadow(
    State(state): State<AdminState>,
    Path((pipeline, stage)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = authorize(&state, &headers) {
        tracing::warn!(pipeline = %pipeline, stage = %stage, "admin API: shadow run refused (token)");
        return refusal;
    }
    let (events, within) = match shadow_events(&uri) {
        Ok(query) => query,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, json!({ "error": e })),
    };
    let slot = match find_slot(&state, &pipeline, &stage) {
        Ok(slot) => slot,
        Err(response) => return response,
    };
    // The partitions this process runs now (not those it stopped, or lost to another
    // process): each runs both versions on its next events.
    let partitions: Vec<u32> = state
        .services
        .status
        .pipelines()
        .iter()
        .filter(|p| p.pipeline == pipeline)
        .flat_map(|p| p.partitions.iter())
        .filter(|p| {
            matches!(
                p.state,
                crate::status::PartitionState::Starting | crate::status::PartitionState::Running
            )
        })
        .map(|p| p.partition)
        .collect();
    let bytes = body.to_vec();
    match crate::plugin::loading::run_load(move || {
        slot.start_shadow(bytes, events, &partitions, within)
    })
    .await
    {
        Ok(Ok(report)) => json_response(StatusCode::OK, json!(report)),
        Ok(Err(error)) => swap_error(error),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("shadow task failed: {e}") }),
        ),
    }
}

async fn shadow_report(
    State(state): State<AdminState>,
    Path((pipeline, stage)): Path<(String, String)>,
) -> Response {
    let slot = match find_slot(&state, &pipeline, &stage) {
        Ok(slot) => slot,
        Err(response) => return response,
    };
    match slot.shadow_report() {
        Some(report) => json_response(StatusCode::OK, json!(report)),
        None => json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no shadow run for stage `{stage}` of pipeline `{pipeline}`") }),
        ),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    version: Option<String>,
}

async fn rollback(
    State(state): State<AdminState>,
    Path((pipeline, stage)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = authorize(&state, &headers) {
        tracing::warn!(pipeline = %pipeline, stage = %stage, "admin API: rollback refused (token)");
        return refusal;
    }
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest { version: None }
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("expected {{\"version\": \"<version>\"}}: {e}") }),
                );
            }
        }
    };
    let slot = match find_slot(&state, &pipeline, &stage) {
        Ok(slot) => slot,
        Err(response) => return response,
    };
    match crate::plugin::loading::run_load(move || slot.rollback(request.version.as_deref())).await
    {
        Ok(Ok(version)) => json_response(
            StatusCode::OK,
            json!({ "outcome": "activated", "version": version }),
        ),
        Ok(Err(error)) => swap_error(error),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": format!("rollback task failed: {e}") }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
