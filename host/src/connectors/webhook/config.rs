//! Configuration of the webhook sink.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{ConfigDuration, ConfigError, Document};

/// An HTTP endpoint that receives records as JSON POSTs (Logic Apps, Fabric custom endpoints,
/// Teams or Slack incoming webhooks). At least once: a record is retried with backoff and goes to
/// the pipeline's dead letters when every attempt failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// The URL to POST to.
    pub url: String,
    /// Extra request headers (for example `Authorization`); `${NAME}` in a value is replaced by
    /// the environment variable `NAME`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Records per request: 1 posts each record as one JSON object; more posts JSON arrays.
    #[serde(default = "default_webhook_batch")]
    pub batch_max_records: usize,
    /// Longest one request may take.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: ConfigDuration,
    /// Attempts after the first one before the records are dead-lettered.
    #[serde(default = "default_webhook_retries")]
    pub max_retries: u32,
    /// Wait before the first retry; each further retry waits twice as long, up to `max_backoff`.
    /// A `Retry-After` header from the server is honoured up to `max_backoff`.
    #[serde(default = "default_webhook_backoff")]
    pub initial_backoff: ConfigDuration,
    /// Longest wait between two attempts.
    #[serde(default = "default_webhook_max_backoff")]
    pub max_backoff: ConfigDuration,
}

fn default_webhook_batch() -> usize {
    1
}
fn default_webhook_timeout() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}
fn default_webhook_retries() -> u32 {
    5
}
fn default_webhook_backoff() -> ConfigDuration {
    ConfigDuration::from_millis(200)
}
fn default_webhook_max_backoff() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}

/// Checks a webhook sink.
pub(crate) fn validate_sink(
    doc: &Document<'_>,
    name: &str,
    webhook: &WebhookSinkConfig,
) -> Result<(), ConfigError> {
    let url = webhook.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(doc.error(
            &["sinks", name, "url"],
            format!(
                "expected an http:// or https:// URL, found `{}`",
                webhook.url
            ),
        ));
    }
    if webhook.batch_max_records == 0 {
        return Err(doc.error(&["sinks", name, "batch_max_records"], "expected at least 1"));
    }
    if webhook.max_backoff.get() < webhook.initial_backoff.get() {
        return Err(doc.error(
            &["sinks", name, "max_backoff"],
            "expected at least `initial_backoff`",
        ));
    }
    Ok(())
}
