//! Microsoft Entra ID access tokens on the HTTP source: an RS256 JWT whose signature checks
//! against the tenant's signing keys (JWKS, fetched from `jwks_url` and again when a token names
//! a key not seen yet, at most once a minute), issued by the tenant, for the audience, and within
//! its validity (60 s of clock skew allowed).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::config::EntraConfig;

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 60;
/// The keys are fetched again at most this often for an unknown key id.
const REFETCH: Duration = Duration::from_secs(60);

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// Not a token, a bad signature, an unknown key, expired: `401`.
    Invalid(String),
    /// A genuine token for another tenant or audience: `403`.
    Forbidden(String),
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// An RSA public key: modulus and exponent, big-endian.
type RsaKey = (Vec<u8>, Vec<u8>);

/// Validates Entra tokens for one source.
#[derive(Debug)]
pub(crate) struct EntraValidator {
    tenant: String,
    audiences: Vec<String>,
    issuers: Vec<String>,
    jwks_url: String,
    client: reqwest::Client,
    keys: Mutex<(HashMap<String, RsaKey>, Option<Instant>)>,
}

/// Whether `text` looks like a JWT (three base64url parts).
pub(crate) fn looks_like_jwt(text: &str) -> bool {
    text.split('.').count() == 3 && text.starts_with("ey")
}

fn invalid(reason: impl Into<String>) -> TokenRefusal {
    TokenRefusal::Invalid(reason.into())
}

fn part<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, TokenRefusal> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| invalid(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{what} is not JSON: {e}")))
}

impl EntraValidator {
    /// A validator for `config`.
    pub(crate) fn new(config: &EntraConfig) -> Result<Self, String> {
        let tenant = config.tenant.trim().to_owned();
        if tenant.is_empty() || config.audience.trim().is_empty() {
            return Err("`auth.entra` needs a `tenant` and an `audience`".to_owned());
        }
        let jwks_url = config.jwks_url.clone().unwrap_or_else(|| {
            format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(EntraValidator {
            issuers: vec![
                format!("https://login.microsoftonline.com/{tenant}/v2.0"),
                format!("https://sts.windows.net/{tenant}/"),
            ],
            audiences: vec![config.audience.trim().to_owned()],
            tenant,
            jwks_url,
            client,
            keys: Mutex::new((HashMap::new(), None)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, RsaKey>, Option<Instant>)> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key `kid`, fetching the key set when it is not known (at most once per [`REFETCH`]).
    async fn key(&self, kid: &str) -> Result<RsaKey, TokenRefusal> {
        let due = {
            let keys = self.lock();
            if let Some(key) = keys.0.get(kid) {
                return Ok(key.clone());
            }
            keys.1.is_none_or(|at| at.elapsed() >= REFETCH)
        };
        if due {
            self.lock().1 = Some(Instant::now());
            match self.fetch().await {
                Ok(fetched) => self.lock().0 = fetched,
                Err(reason) => {
                    tracing::warn!(url = %self.jwks_url, %reason, "cannot fetch the Entra signing keys")
                }
            }
        }
        self.lock()
            .0
            .get(kid)
            .cloned()
            .ok_or_else(|| invalid(format!("unknown signing key `{kid}`")))
    }

    async fn fetch(&self) -> Result<HashMap<String, RsaKey>, String> {
        let response = self
            .client
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?;
        let jwks: Jwks = response.json().await.map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for key in jwks.keys {
            if let (Some(kid), Some(n), Some(e), "RSA") = (key.kid, key.n, key.e, key.kty.as_str())
                && let (Ok(n), Ok(e)) = (URL_SAFE_NO_PAD.decode(n), URL_SAFE_NO_PAD.decode(e))
            {
                keys.insert(kid, (n, e));
            }
        }
        Ok(keys)
    }

    /// Checks `token` now.
    pub(crate) async fn validate(&self, token: &str) -> Result<(), TokenRefusal> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a JWT"));
        };
        let header: Header = part(header, "the header")?;
        if header.alg != "RS256" {
            return Err(invalid(format!("algorithm `{}`", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| invalid("no key id"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|e| invalid(format!("the signature is not base64url: {e}")))?;
        let (n, e) = self.key(&kid).await?;
        let signed = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
        ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                signed.as_bytes(),
                &signature,
            )
            .map_err(|_| invalid("bad signature"))?;
        let claims: Claims = part(claims, "the claims")?;
        self.check_claims(&claims, chrono::Utc::now().timestamp())
    }

    fn check_claims(&self, claims: &Claims, now: i64) -> Result<(), TokenRefusal> {
        match claims.exp {
            Some(exp) if exp + LEEWAY_SECS >= now => {}
            _ => return Err(invalid("expired (or no `exp`)")),
        }
        if claims.nbf.is_some_and(|nbf| nbf - LEEWAY_SECS > now) {
            return Err(invalid("not valid yet"));
        }
        let forbidden = |what: &str| TokenRefusal::Forbidden(what.to_owned());
        if claims.tid.as_deref() != Some(self.tenant.as_str()) {
            return Err(forbidden("another tenant"));
        }
        if !claims
            .iss
            .as_ref()
            .is_some_and(|iss| self.issuers.contains(iss))
        {
            return Err(forbidden("another issuer"));
        }
        let audiences: Vec<&str> = match &claims.aud {
            Some(serde_json::Value::String(one)) => vec![one.as_str()],
            Some(serde_json::Value::Array(many)) => {
                many.iter().filter_map(serde_json::Value::as_str).collect()
            }
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| self.audiences.iter().any(|b| a == b))
        {
            return Err(forbidden("another audience"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> EntraValidator {
        EntraValidator::new(&EntraConfig {
            tenant: "t1".into(),
            audience: "api://weir".into(),
            jwks_url: Some("http://127.0.0.1:1/keys".into()),
        })
        .expect("validator")
    }

    fn claims(tid: &str, aud: &str, exp: i64) -> Claims {
        Claims {
            iss: Some(format!("https://login.microsoftonline.com/{tid}/v2.0")),
            aud: Some(serde_json::json!(aud)),
            tid: Some(tid.into()),
            exp: Some(exp),
            nbf: None,
        }
    }

    #[test]
    fn tenant_audience_and_time_are_checked() {
        let v = validator();
        assert_eq!(
            v.check_claims(&claims("t1", "api://weir", 1000), 900),
            Ok(())
        );
        assert!(matches!(
            v.check_claims(&claims("t1", "api://weir", 1000), 2000),
            Err(TokenRefusal::Invalid(_))
        ));
        assert!(matches!(
            v.check_claims(&claims("t2", "api://weir", 1000), 900),
            Err(TokenRefusal::Forbidden(_))
        ));
        assert!(matches!(
            v.check_claims(&claims("t1", "api://other", 1000), 900),
            Err(TokenRefusal::Forbidden(_))
        ));
    }

    #[tokio::test]
    async fn garbage_is_invalid_without_a_fetch() {
        let v = validator();
        for token in [
            "",
            "a.b.c",
            "eyJ.eyJ.x",
            "eyJhbGciOiJub25lIn0.e30.",
            "x.y.z.w",
        ] {
            assert!(matches!(
                v.validate(token).await,
                Err(TokenRefusal::Invalid(_))
            ));
        }
    }
}
