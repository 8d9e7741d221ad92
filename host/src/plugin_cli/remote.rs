//! A small client of a running host's admin API (see [`crate::admin`]), for `weir plugin deploy`,
//! `list`, `status` and `rollback`: HTTP/1.1, over TLS for an `https://` URL (the admin API's
//! `tls` table), one request per connection, the token as a bearer header on every request (reads
//! too, for a host that guards them). Over https the server's certificate is checked against a CA
//! file when one is given (a private CA), else against the system's roots.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::PluginCliError;

/// How long one request may take (an upload compiles the component before it answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A running host's admin API.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `host:port`.
    authority: String,
    /// Over https: the TLS settings and the name the certificate must have.
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// A path prefix (empty, or starting with `/` without a trailing one).
    prefix: String,
    /// The bearer token.
    token: Option<String>,
}

/// An answer of the admin API: its status and its JSON body (`null` when it has none).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as JSON.
    pub body: serde_json::Value,
}

impl Answer {
    /// The `error` the admin API gives with a refusal, or the body itself.
    pub fn error(&self) -> String {
        match self.body["error"].as_str() {
            Some(error) => error.to_owned(),
            None => self.body.to_string(),
        }
    }
}

impl Remote {
    /// The admin API at `url` (`http://host:port`, `https://host:port`, or `host:port`), with
    /// `token`; over https, the server's certificate is checked against `ca_file` (PEM) when
    /// given, else against the system's roots.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Remote, PluginCliError> {
        let bad = |reason: &str| PluginCliError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (https, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme `{scheme}`"))),
            None => (false, url),
        };
        if ca_file.is_some() && !https {
            return Err(bad("a CA file is for https URLs"));
        }
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(bad("expected host and port, such as http://127.0.0.1:9464"));
        }
        let tls = match https {
            false => None,
            true => {
                let host = host_of(authority);
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| bad(&format!("`{host}` is not a host name: {e}")))?;
                Some((Arc::new(tls_config(ca_file).map_err(|e| bad(&e))?), name))
            }
        };
        Ok(Remote {
            authority: authority.to_owned(),
            tls,
            prefix: prefix.to_owned(),
            token: token.filter(|t| !t.trim().is_empty()),
        })
    }

    /// The base URL, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.prefix)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Answer, PluginCliError> {
        self.request("GET", path, "application/json", &[])
    }

    /// `POST path` with a JSON body.
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, PluginCliError> {
        self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    /// `POST path` with bytes.
    pub fn post_bytes(&self, path: &str, body: &[u8]) -> Result<Answer, PluginCliError> {
        self.request("POST", path, "application/wasm", body)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer, PluginCliError> {
        let failed = |reason: String| PluginCliError::Remote {
            url: format!("{}{path}", self.url()),
            reason,
        };
        let tcp = TcpStream::connect(&self.authority)
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        tcp.set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(|e| failed(e.to_string()))?;
        let mut stream: Box<dyn ReadWrite> = match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let connection = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| failed(format!("TLS: {e}")))?;
                Box::new(rustls::StreamOwned::new(connection, tcp))
            }
        };
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.prefix,
            self.authority,
            body.len()
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|e| failed(format!("cannot send: {e}")))?;
        let mut response = Vec::new();
        match stream.read_to_end(&mut response) {
            Ok(_) => {}
            // A TLS peer that closes without a close_notify, after its whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(e) => return Err(failed(format!("cannot read the answer: {e}"))),
        }
        parse_response(&response).map_err(failed)
    }
}

/// A connection, plain or over TLS.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

/// The host of `host:port` (`[::1]:80` gives `::1`).
fn host_of(authority: &str) -> &str {
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// TLS settings trusting the certificates of `ca_file` (PEM), or the system's roots.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err(match ca_file {
            Some(path) => format!("no certificate in the CA file {}", path.display()),
            None => {
                "no system root certificate found (give the server's CA with --ca-file)".to_owned()
            }
        });
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// Status and JSON body of an HTTP/1.1 response (with a length, chunked, or to the end).
fn parse_response(response: &[u8]) -> Result<Answer, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of headers")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let mut body = response[split + 4..].to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {}", head.lines().next().unwrap_or("")))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(
            |_| serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_owned() }),
        )
    };
    Ok(Answer { status, body })
}

/// The body of a chunked transfer.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without a size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("a chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_or_refused_with_the_reason() {
        let remote = Remote::new("http://127.0.0.1:9464/", None, None).expect("plain");
        assert_eq!(remote.url(), "http://127.0.0.1:9464");
        let remote = Remote::new("localhost:80/weir", Some(" ".into()), None).expect("no scheme");
        assert_eq!(remote.url(), "http://localhost:80/weir");
        assert!(remote.token.is_none());
        let missing = Path::new("/nonexistent/ca.pem");
        for (bad, ca_file, why) in [
            ("ftp://x:1", None, "unknown scheme"),
            ("http://x", None, "expected host and port"),
            ("http://x:1", Some(missing), "a CA file is for https URLs"),
            ("https://x:1", Some(missing), "cannot read the CA file"),
        ] {
            let error = Remote::new(bad, None, ca_file).expect_err(bad).to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert_eq!(host_of("[::1]:9464"), "::1");
        assert_eq!(host_of("127.0.0.1:9464"), "127.0.0.1");
    }

    #[test]
    fn responses_with_a_length_or_chunked_are_read() {
        let plain = b"HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 17\r\n\r\n{\"error\":\"nope\"}\n";
        let answer = parse_response(plain).expect("plain");
        assert_eq!((answer.status, answer.error()), (422, "nope".to_owned()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
        let answer = parse_response(chunked).expect("chunked");
        assert_eq!(answer.body["a"], 1);
        assert!(parse_response(b"garbage").is_err());
    }
}
