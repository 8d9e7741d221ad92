//! Builds the configured Entra ID credential through the Azure SDK's identity crate, and checks
//! at start that it signs in.

use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientMethodOptions, ClientOptions};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertion, ClientAssertionCredential,
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::config::{EntraCredential, read_secret};

/// How long signing in at start may take.
const SIGN_IN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The identity crate's credential for `config`.
pub(crate) fn build(config: &EntraCredential) -> Result<Arc<dyn TokenCredential>, String> {
    let failed = |e: azure_core::Error| format!("{} credential: {e}", config.kind());
    let credential: Arc<dyn TokenCredential> = match config {
        EntraCredential::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                ..Default::default()
            };
            ManagedIdentityCredential::new(Some(options)).map_err(failed)?
        }
        EntraCredential::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
            authority_host,
        } => {
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions {
                    client_options: client_options(authority_host.as_deref()),
                },
                tenant_id: tenant_id.clone(),
                client_id: client_id.clone(),
                token_file_path: token_file.as_ref().map(Into::into),
                ..Default::default()
            };
            WorkloadIdentityCredential::new(Some(options)).map_err(failed)?
        }
        EntraCredential::ClientSecret {
            tenant_id,
            client_id,
            client_secret_env,
            authority_host,
        } => {
            let secret = read_secret(client_secret_env)?;
            let options = ClientSecretCredentialOptions {
                client_options: client_options(authority_host.as_deref()),
            };
            ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret),
                Some(options),
            )
            .map_err(failed)?
        }
        EntraCredential::ClientCertificate {
            tenant_id,
            client_id,
            certificate_path,
            authority_host,
        } => {
            let assertion = CertificateAssertion::load(
                certificate_path,
                tenant_id,
                client_id,
                authority_host.as_deref(),
            )?;
            let options = ClientAssertionCredentialOptions {
                client_options: client_options(authority_host.as_deref()),
            };
            ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                assertion,
                Some(options),
            )
            .map_err(failed)?
        }
        EntraCredential::AzureCli { tenant_id } => {
            let options = AzureCliCredentialOptions {
                tenant_id: tenant_id.clone(),
                ..Default::default()
            };
            AzureCliCredential::new(Some(options)).map_err(failed)?
        }
    };
    Ok(credential)
}

/// Signs in once for `scope`, so that a wrong secret or id refuses the start with what to check
/// instead of failing later inside a client's retries.
pub(crate) async fn check(
    config: &EntraCredential,
    credential: &Arc<dyn TokenCredential>,
    scope: &str,
) -> Result<(), String> {
    let kind = config.kind();
    match tokio::time::timeout(SIGN_IN_TIMEOUT, credential.get_token(&[scope], None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "Entra ID sign-in ({kind}) for `{scope}` failed: {e}; {}",
            config.hint()
        )),
        Err(_) => Err(format!(
            "Entra ID sign-in ({kind}) for `{scope}` took longer than {SIGN_IN_TIMEOUT:?}; {}",
            config.hint()
        )),
    }
}

/// Client options naming the authority host, when one is configured.
fn client_options(authority_host: Option<&str>) -> ClientOptions {
    let mut options = ClientOptions::default();
    if let Some(host) = authority_host {
        let mut custom = CustomConfiguration::default();
        custom.authority_host = host.trim_end_matches('/').to_owned();
        options.cloud = Some(Arc::new(CloudConfiguration::Custom(custom)));
    }
    options
}

/// A service principal's certificate, signing each client assertion (a JWT, RS256, with the
/// certificate's thumbprints) as Entra ID expects it.
struct CertificateAssertion {
    key: ring::rsa::KeyPair,
    x5t: String,
    x5t_s256: String,
    client_id: String,
    audience: String,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    fn load(
        path: &str,
        tenant_id: &str,
        client_id: &str,
        authority_host: Option<&str>,
    ) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the certificate `{path}`: {e}"))?;
        let block = |label: &str| -> Option<Vec<u8>> {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            let start = text.find(&begin)? + begin.len();
            let stop = start + text[start..].find(&end)?;
            let body: String = text[start..stop].split_whitespace().collect();
            base64::engine::general_purpose::STANDARD.decode(body).ok()
        };
        let certificate = block("CERTIFICATE")
            .ok_or_else(|| format!("`{path}` holds no PEM `CERTIFICATE` block"))?;
        let key = block("PRIVATE KEY")
            .ok_or_else(|| format!("`{path}` holds no unencrypted PKCS#8 `PRIVATE KEY` block"))?;
        let key = ring::rsa::KeyPair::from_pkcs8(&key)
            .map_err(|e| format!("`{path}`: the private key is not a usable RSA key: {e}"))?;
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &certificate);
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &certificate);
        let host = authority_host
            .unwrap_or("https://login.microsoftonline.com")
            .trim_end_matches('/');
        Ok(CertificateAssertion {
            key,
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            client_id: client_id.to_owned(),
            audience: format!("{host}/{tenant_id}/oauth2/v2.0/token"),
        })
    }

    fn sign(&self) -> Result<String, String> {
        let now = chrono::Utc::now().timestamp();
        let header = serde_json::json!({
            "alg": "RS256", "typ": "JWT", "x5t": self.x5t, "x5t#S256": self.x5t_s256,
        });
        let claims = serde_json::json!({
            "aud": self.audience, "iss": self.client_id, "sub": self.client_id,
            "jti": format!("{:x}", rand_id()), "nbf": now, "iat": now, "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the client assertion".to_owned())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// A random assertion id.
fn rand_id() -> u128 {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros: the id only needs to differ between assertions in
    // practice, and the timestamp already does.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u128::from_le_bytes(bytes)
}

#[async_trait::async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.sign().map_err(|e| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throw-away RSA certificate and PKCS#8 key made with `openssl`, in one PEM file.
    fn certificate(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        let path = dir.join("sp.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=weir-test-sp",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let key = std::fs::read_to_string(dir.join("key.pem")).ok()?;
        let cert = std::fs::read_to_string(dir.join("cert.pem")).ok()?;
        std::fs::write(&path, format!("{cert}{key}")).ok()?;
        Some(path)
    }

    #[test]
    fn a_certificate_signs_a_client_assertion_entra_id_accepts_the_shape_of() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(path) = certificate(dir.path()) else {
            eprintln!("openssl is not available: skipped");
            return;
        };
        let assertion = CertificateAssertion::load(
            &path.display().to_string(),
            "tenant",
            "client",
            Some("https://login.example/"),
        )
        .expect("load");
        let jwt = assertion.sign().expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let decode = |part: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
        };
        let header = decode(parts[0]);
        let claims = decode(parts[1]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"].as_str().map(str::len), Some(27));
        assert_eq!(
            claims["aud"],
            "https://login.example/tenant/oauth2/v2.0/token"
        );
        assert_eq!(claims["iss"], "client");
        assert_eq!(claims["sub"], "client");
        // The signature verifies with the certificate's public key.
        let public = assertion.key.public().as_ref().to_vec();
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            public,
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("a valid RS256 signature");
    }

    #[test]
    fn a_certificate_file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nokey.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = CertificateAssertion::load(&path.display().to_string(), "t", "c", None)
            .expect_err("refused");
        assert!(err.contains("PRIVATE KEY"), "{err}");
    }
}
