//! Configuration of the HTTP source.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigDuration;
use crate::net::TlsConfig;

/// An HTTP ingest endpoint: `POST /events` with one JSON event or NDJSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address to listen on.
    #[serde(default = "default_http_address")]
    pub address: String,
    /// Number of partitions.
    #[serde(default = "default_one_partition")]
    pub partitions: u32,
    /// Request header carrying the partition key.
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// Top-level JSON field used as partition key when the header is absent.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Directory of the write-ahead log that makes accepted events durable before the reply.
    #[serde(default)]
    pub wal_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Size at which a write-ahead log segment is closed and a new one started, in bytes. Whole
    /// segments below every reader's checkpoint are deleted.
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
    /// TLS (certificate and key files, read again when they change). Absent: plain HTTP, which
    /// is refused on an address other than loopback unless `allow_plain_http` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Serve plain HTTP on an address other than loopback (events and credentials in the clear).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// Credentials a request must carry. Absent: none is asked for.
    #[serde(default)]
    pub auth: Option<IngestAuthConfig>,
    /// Connections served at once; more are answered `503` with `Retry-After` and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request's head (and, on a kept-alive connection, the next
    /// one); past it the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfigDuration,
    /// Time a client has to send a request's body once its head is in; past it, `408`.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: ConfigDuration,
    /// Bytes one partition's write-ahead log may hold before the pipeline has checkpointed them;
    /// past it, requests are answered `429` with `Retry-After` until it has.
    #[serde(default = "default_max_wal_bytes")]
    pub max_wal_bytes: u64,
    /// Requests waiting for one partition's log writer; past it, `503` with `Retry-After`.
    #[serde(default = "default_wal_queue")]
    pub wal_queue: usize,
    /// What `Retry-After` says to a refused client.
    #[serde(default = "default_retry_after")]
    pub retry_after: ConfigDuration,
}

/// Credentials of the HTTP source: a request carries one as `Authorization: Bearer CREDENTIAL`
/// or in the `key_header` header. Refusals are `401` and say no more.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestAuthConfig {
    /// Credentials accepted (changing them needs a restart; `${VAR}` reads the environment).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// A file of credentials, one a line (blank lines and `#` comments skipped), read again when
    /// it changes: credentials rotate without a restart. Relative to the configuration file.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// The header that carries a shared key, as an alternative to `Authorization: Bearer`.
    #[serde(default = "default_key_header_auth")]
    pub key_header: String,
    /// Microsoft Entra ID access tokens (`Authorization: Bearer <JWT>`) accepted as well.
    #[serde(default)]
    pub entra: Option<EntraConfig>,
}

/// Microsoft Entra ID tokens: RS256, signed by a key of the tenant's key set, issued by the tenant
/// (v1 or v2 issuer), for `audience`, and not expired. A genuine token for another tenant or
/// audience is `403`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// The tenant (directory) id.
    pub tenant: String,
    /// The audience the token must be for: the application id URI or client id of the ingest
    /// API's app registration.
    pub audience: String,
    /// Where the tenant's signing keys are (default:
    /// `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`).
    #[serde(default)]
    pub jwks_url: Option<String>,
}

fn default_key_header_auth() -> String {
    "x-api-key".to_owned()
}
fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}
fn default_body_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(30_000)
}
fn default_max_wal_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_wal_queue() -> usize {
    1024
}
fn default_retry_after() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}

fn default_http_address() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_key_header() -> String {
    "x-partition-key".to_owned()
}
fn default_max_request_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_wal_segment_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_one_partition() -> u32 {
    1
}

/// What types alone cannot say: plain HTTP beyond loopback without the opt-in, credentials that
/// are missing, limits of zero.
pub(crate) fn validate_source(
    doc: &crate::config::Document<'_>,
    name: &str,
    config: &HttpSourceConfig,
) -> Result<(), crate::config::ConfigError> {
    let listener = crate::net::ListenerConfig {
        address: &config.address,
        tls: config.tls.as_ref(),
        allow_plain_http: config.allow_plain_http,
    };
    if let Some(refusal) = listener.refusal() {
        return Err(doc.error(&["sources", name, "address"], refusal));
    }
    if let Some(auth) = &config.auth
        && auth.tokens.iter().all(|t| t.trim().is_empty())
        && auth.tokens_file.is_none()
        && auth.entra.is_none()
    {
        return Err(doc.error(
            &["sources", name, "auth"],
            "expected `tokens` (one or more credentials), a `tokens_file` or `entra`",
        ));
    }
    if let Some(entra) = config.auth.as_ref().and_then(|a| a.entra.as_ref()) {
        for (key, value) in [("tenant", &entra.tenant), ("audience", &entra.audience)] {
            if value.trim().is_empty() {
                return Err(doc.error(
                    &["sources", name, "auth", "entra", key],
                    "expected a non-empty value",
                ));
            }
        }
    }
    for (key, value) in [
        ("max_connections", config.max_connections as u64),
        ("wal_queue", config.wal_queue as u64),
        ("max_wal_bytes", config.max_wal_bytes),
    ] {
        if value == 0 {
            return Err(doc.error(&["sources", name, key], "expected at least 1, found 0"));
        }
    }
    for (key, value) in [
        ("header_timeout", config.header_timeout),
        ("body_timeout", config.body_timeout),
    ] {
        if value.get().is_zero() {
            return Err(doc.error(&["sources", name, key], "expected a duration above zero"));
        }
    }
    Ok(())
}
