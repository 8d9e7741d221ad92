//! Credentials of the HTTP source: bearer tokens or shared keys, inline or in a file read again
//! when it changes. Only their SHA-256 digests are kept, compared in constant time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, header};
use sha2::{Digest, Sha256};

use super::config::IngestAuthConfig;
use super::entra::{EntraValidator, TokenRefusal, looks_like_jwt};
use crate::config::expand_env;

type Hash = [u8; 32];

/// Why a request was refused: the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthRefusal {
    /// No credential in the request.
    Missing,
    /// A credential that is not (or no longer) accepted.
    Invalid,
    /// A genuine Entra token for another tenant or audience (`403`).
    Forbidden,
}

impl AuthRefusal {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthRefusal::Missing => "missing",
            AuthRefusal::Invalid => "invalid",
            AuthRefusal::Forbidden => "forbidden",
        }
    }
}

/// The credentials a source accepts.
#[derive(Debug)]
pub(crate) struct Credentials {
    inline: Vec<Hash>,
    file: Option<PathBuf>,
    from_file: Mutex<FileCredentials>,
    key_header: HeaderName,
    entra: Option<EntraValidator>,
}

#[derive(Debug, Default)]
struct FileCredentials {
    stamp: Option<(SystemTime, u64)>,
    hashes: Vec<Hash>,
}

fn hash(credential: &[u8]) -> Hash {
    Sha256::digest(credential).into()
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The credentials in a file's text: one a line, blank lines and `#` comments skipped.
pub(crate) fn parse_credentials(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<Hash>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
    Ok(parse_credentials(&text)
        .into_iter()
        .map(|c| hash(c.as_bytes()))
        .collect())
}

impl Credentials {
    /// The credentials of `config`, its file (already resolved) read now: a file that cannot be
    /// read, or no credential at all, is refused.
    pub(crate) fn new(config: &IngestAuthConfig, file: Option<PathBuf>) -> Result<Self, String> {
        let key_header = HeaderName::from_bytes(config.key_header.to_ascii_lowercase().as_bytes())
            .map_err(|e| {
                format!(
                    "`auth.key_header` `{}` is not a header name: {e}",
                    config.key_header
                )
            })?;
        let inline: Vec<Hash> = config
            .tokens
            .iter()
            .map(|t| expand_env(t))
            .filter(|t| !t.trim().is_empty())
            .map(|t| hash(t.trim().as_bytes()))
            .collect();
        let mut from_file = FileCredentials::default();
        if let Some(path) = &file {
            from_file.stamp = file_stamp(path);
            from_file.hashes = read_file(path)?;
        }
        let entra = config.entra.as_ref().map(EntraValidator::new).transpose()?;
        if inline.is_empty() && file.is_none() && entra.is_none() {
            return Err("`auth` needs `tokens`, a `tokens_file` or `entra`".to_owned());
        }
        Ok(Credentials {
            inline,
            file,
            from_file: Mutex::new(from_file),
            key_header,
            entra,
        })
    }

    /// The request's credential: `Authorization: Bearer X`, else the key header.
    fn given<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .map(str::as_bytes);
        bearer.or_else(|| {
            headers
                .get(&self.key_header)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
        })
    }

    /// Whether `headers` carry an accepted credential: a shared key or token, else an Entra
    /// token when configured.
    pub(crate) async fn check(&self, headers: &HeaderMap) -> Result<(), AuthRefusal> {
        let given = self.given(headers).ok_or(AuthRefusal::Missing)?;
        if self.is_shared_key(given) {
            return Ok(());
        }
        match (&self.entra, std::str::from_utf8(given)) {
            (Some(entra), Ok(token)) if looks_like_jwt(token) => {
                entra.validate(token).await.map_err(|refusal| {
                    tracing::debug!(?refusal, "HTTP source: Entra token refused");
                    match refusal {
                        TokenRefusal::Invalid(_) => AuthRefusal::Invalid,
                        TokenRefusal::Forbidden(_) => AuthRefusal::Forbidden,
                    }
                })
            }
            _ => Err(AuthRefusal::Invalid),
        }
    }

    fn is_shared_key(&self, given: &[u8]) -> bool {
        let given = hash(given);
        let mut found = self.inline.iter().fold(false, |f, h| f | eq(h, &given));
        if self.file.is_some() {
            let file = self.current_file();
            found |= file.iter().fold(false, |f, h| f | eq(h, &given));
        }
        found
    }

    /// The file's credentials, read again if the file changed since (a file that cannot be read
    /// keeps the previous ones: a rotation writes it anew, it does not remove it).
    fn current_file(&self) -> Vec<Hash> {
        let mut state = self
            .from_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(path) = &self.file {
            let stamp = file_stamp(path);
            if stamp != state.stamp {
                match read_file(path) {
                    Ok(hashes) => {
                        tracing::info!(file = %path.display(), credentials = hashes.len(), "HTTP source: credentials reloaded");
                        state.hashes = hashes;
                        state.stamp = stamp;
                    }
                    Err(reason) => tracing::warn!(%reason, "HTTP source: credentials not reloaded"),
                }
            }
        }
        state.hashes.clone()
    }
}

/// Equality of two digests in a time that does not depend on where they differ.
fn eq(a: &Hash, b: &Hash) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        headers
    }

    #[tokio::test]
    async fn bearer_and_key_header_and_rotation_through_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("keys");
        std::fs::write(&file, "# keys\nold\n\nnew\n").expect("write");
        let config = IngestAuthConfig {
            tokens: vec!["inline".into()],
            tokens_file: Some(file.clone()),
            key_header: "X-Api-Key".into(),
            entra: None,
        };
        let credentials = Credentials::new(&config, Some(file.clone())).expect("credentials");
        let check = |h: HeaderMap| {
            let credentials = &credentials;
            async move { credentials.check(&h).await }
        };
        assert_eq!(check(HeaderMap::new()).await, Err(AuthRefusal::Missing));
        assert_eq!(
            check(headers("authorization", "Bearer inline")).await,
            Ok(())
        );
        assert_eq!(check(headers("authorization", "bearer old")).await, Ok(()));
        assert_eq!(check(headers("x-api-key", "new")).await, Ok(()));
        assert_eq!(
            check(headers("x-api-key", "wrong")).await,
            Err(AuthRefusal::Invalid)
        );
        assert_eq!(
            check(headers("authorization", "Basic old")).await,
            Err(AuthRefusal::Missing)
        );
        std::fs::write(&file, "newer\n").expect("rotate");
        assert_eq!(
            check(headers("x-api-key", "old")).await,
            Err(AuthRefusal::Invalid)
        );
        assert_eq!(check(headers("x-api-key", "newer")).await, Ok(()));
        std::fs::remove_file(&file).expect("remove");
        assert_eq!(check(headers("x-api-key", "newer")).await, Ok(()));
    }

    #[test]
    fn no_credential_at_all_is_refused() {
        let config = IngestAuthConfig {
            tokens: vec![" ".into()],
            tokens_file: None,
            key_header: "x-api-key".into(),
            entra: None,
        };
        assert!(Credentials::new(&config, None).is_err());
    }
}
