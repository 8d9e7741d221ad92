//! A local Microsoft Entra ID token service for sign-in tests: HTTPS on 127.0.0.1 (the identity
//! crate refuses a plain-HTTP authority host), answering `POST /<tenant>/oauth2/v2.0/token` with
//! the OAuth2 client-credentials grant, by client secret or by client assertion (a federated
//! token, or a JWT signed with the client's certificate), as `login.microsoftonline.com` does,
//! and `GET /msi/token` as an App Service managed identity endpoint does (`IDENTITY_ENDPOINT`,
//! with the `IDENTITY_HEADER` secret). Tokens go only to the configured client.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Who may sign in, and the token each gets.
#[derive(Debug, Clone)]
pub struct TokenServiceConfig {
    /// The tenant of the authority path.
    pub tenant_id: String,
    /// The one client id that may sign in.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: String,
    /// The federated token it may present as a client assertion instead.
    pub federated_token: String,
    /// The access token handed out.
    pub access_token: String,
    /// A PEM file with the client's certificate and its PKCS#8 RSA key: client assertions signed
    /// with it (RS256, its SHA-1 thumbprint as `x5t`) are accepted.
    pub certificate: Option<std::path::PathBuf>,
    /// The secret a managed identity request must carry in `X-IDENTITY-HEADER`.
    pub identity_header: Option<String>,
}

/// A running token service; it stops when dropped.
pub struct TokenService {
    /// `https://127.0.0.1:<port>`.
    pub authority_host: String,
    /// The grants issued and refused, in order: `secret`, `assertion`, `certificate`,
    /// `managed_identity <resource>`, `refused`.
    pub grants: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl TokenService {
    /// Starts the service with `cert`/`key` (see [`crate::tls::test_certificates`]).
    pub fn start(config: TokenServiceConfig, cert: &Path, key: &Path) -> TokenService {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read cert")
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("read key");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token service");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let grants = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = grants.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            let config = config.clone();
                            let seen = seen.clone();
                            tokio::spawn(async move {
                                if let Ok(stream) = acceptor.accept(socket).await {
                                    serve(stream, &config, &seen).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        TokenService {
            authority_host: format!("https://127.0.0.1:{port}"),
            grants,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// Reads one request (headers, then `Content-Length` bytes) and answers it.
async fn serve<S>(mut stream: S, config: &TokenServiceConfig, seen: &Mutex<Vec<String>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                break (head.to_owned(), body.to_owned());
            }
        }
    };
    let (status, answer) = if head.starts_with("GET /msi/token") {
        managed_identity(&head, config, seen)
    } else {
        answer(&head, &body, config, seen)
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn form(body: &str) -> std::collections::HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// `application/x-www-form-urlencoded` decoding.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(
    head: &str,
    body: &str,
    config: &TokenServiceConfig,
    seen: &Mutex<Vec<String>>,
) -> (&'static str, String) {
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let fields = form(body);
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or("");
    let expected_path = format!("/{}/oauth2/v2.0/token", config.tenant_id);
    let grant = if path != expected_path
        || field("grant_type") != "client_credentials"
        || field("client_id") != config.client_id
    {
        None
    } else if !field("client_secret").is_empty() {
        (field("client_secret") == config.client_secret).then_some("secret")
    } else if field("client_assertion_type")
        == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        if field("client_assertion") == config.federated_token {
            Some("assertion")
        } else {
            let audience = format!("{}{expected_path}", authority_of(head));
            certificate_assertion(field("client_assertion"), &audience, config)
                .then_some("certificate")
        }
    } else {
        None
    };
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    match grant {
        Some(kind) => {
            seen.push(kind.to_owned());
            (
                "200 OK",
                serde_json::json!({
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "ext_expires_in": 3600,
                    "access_token": config.access_token,
                })
                .to_string(),
            )
        }
        None => {
            seen.push("refused".to_owned());
            (
                "401 Unauthorized",
                serde_json::json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                })
                .to_string(),
            )
        }
    }
}

/// `https://<Host header>`: the authority the client addressed.
fn authority_of(head: &str) -> String {
    let host = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    format!("https://{host}")
}

/// Whether `jwt` is a client assertion signed with the configured certificate's key: RS256, the
/// certificate's SHA-1 thumbprint as `x5t`, issuer and subject the client, audience the token
/// endpoint, not expired.
fn certificate_assertion(jwt: &str, audience: &str, config: &TokenServiceConfig) -> bool {
    let Some(path) = &config.certificate else {
        return false;
    };
    let Ok(pem) = std::fs::read_to_string(path) else {
        return false;
    };
    let (Some(certificate), Some(key)) = (
        pem_block(&pem, "CERTIFICATE"),
        pem_block(&pem, "PRIVATE KEY"),
    ) else {
        return false;
    };
    let Ok(key) = ring::rsa::KeyPair::from_pkcs8(&key) else {
        return false;
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return false;
    };
    let json = |part: &str| -> serde_json::Value {
        decode_base64(part)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    };
    let (header_json, claims_json) = (json(header), json(claims));
    let thumbprint = base64url(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &certificate).as_ref(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signed = decode_base64(signature).is_some_and(|signature| {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public().as_ref(),
        )
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .is_ok()
    });
    signed
        && header_json["alg"] == "RS256"
        && header_json["x5t"] == thumbprint.as_str()
        && claims_json["iss"] == config.client_id.as_str()
        && claims_json["sub"] == config.client_id.as_str()
        && claims_json["aud"] == audience
        && claims_json["exp"].as_i64().is_some_and(|exp| exp > now)
}

/// The bytes of the first PEM block labelled `label`.
fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&format!("-----END {label}-----"))?;
    decode_base64(&pem[start..stop].split_whitespace().collect::<String>())
}

/// Base64, standard or URL-safe, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut bits, mut held) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    Some(out)
}

/// Answers an App Service managed identity token request: `GET
/// /msi/token?api-version=2019-08-01&resource=...[&client_id=...]` with the secret header.
fn managed_identity(
    head: &str,
    config: &TokenServiceConfig,
    seen: &Mutex<Vec<String>>,
) -> (&'static str, String) {
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let query = form(target.split_once('?').map_or("", |(_, q)| q));
    let header = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-identity-header")
            .then(|| v.trim().to_owned())
    });
    let client_ok = query
        .get("client_id")
        .is_none_or(|id| *id == config.client_id);
    let granted = config.identity_header.is_some()
        && header == config.identity_header
        && client_ok
        && query.get("api-version").is_some_and(|v| v == "2019-08-01")
        && query
            .get("resource")
            .is_some_and(|r| r.starts_with("https://"));
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if !granted {
        seen.push("refused".to_owned());
        return (
            "400 Bad Request",
            serde_json::json!({"error": "invalid_request"}).to_string(),
        );
    }
    seen.push(format!(
        "managed_identity {}",
        query.get("resource").map_or("", String::as_str)
    ));
    let expires_on = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    (
        "200 OK",
        serde_json::json!({
            "access_token": config.access_token,
            "expires_on": expires_on.to_string(),
            "resource": query.get("resource"),
            "token_type": "Bearer",
        })
        .to_string(),
    )
}

/// An access token shaped as Entra ID's for Azure Storage (a JWT with issuer
/// `https://sts.windows.net/<tenant>/`, audience `https://storage.azure.com`, valid for an hour),
/// unsigned: Azurite's `--oauth basic` checks everything but the signature.
pub fn storage_jwt(tenant_id: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    let claims = serde_json::json!({
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "aud": "https://storage.azure.com",
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "sub": "weir-test", "tid": tenant_id,
    });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// Base64url without padding.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}
