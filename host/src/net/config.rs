//! Configuration of a listener: TLS and the opt-in to plain HTTP beyond loopback.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::LoadedConfig;

/// TLS of a listener: a certificate chain and its private key, both PEM files. Both are read
/// again when either file changes (checked at most once a second, on a new connection), so a
/// renewed certificate is served without a restart; a pair that cannot be read keeps the previous
/// one in service and is logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), the server's own certificate first; relative to the
    /// configuration file.
    pub cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1); relative to the configuration file.
    pub key_file: PathBuf,
}

impl TlsConfig {
    /// The same files, resolved against the configuration file's directory.
    pub fn resolved(&self, loaded: &LoadedConfig) -> TlsConfig {
        TlsConfig {
            cert_file: loaded.resolve(&self.cert_file),
            key_file: loaded.resolve(&self.key_file),
        }
    }
}

/// What decides whether a listener may serve: its address, its TLS and the opt-in to plain HTTP.
#[derive(Debug, Clone, Copy)]
pub struct ListenerConfig<'a> {
    /// `host:port`.
    pub address: &'a str,
    /// TLS, if configured.
    pub tls: Option<&'a TlsConfig>,
    /// Whether plain HTTP is allowed on an address other than loopback.
    pub allow_plain_http: bool,
}

impl ListenerConfig<'_> {
    /// Why this listener must not start: plain HTTP on an address other than loopback without
    /// the explicit opt-in (tokens and events would travel in the clear).
    pub fn refusal(&self) -> Option<String> {
        (self.tls.is_none() && !self.allow_plain_http && !super::is_loopback(self.address)).then(
            || {
                format!(
                    "plain HTTP on `{}`, which is not a loopback address: configure `tls` \
                     (cert_file and key_file), or set `allow_plain_http = true` to accept it",
                    self.address
                )
            },
        )
    }
}
