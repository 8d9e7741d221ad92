//! An HTTP/1.1 server for an axum router that bounds what clients can hold: connections beyond
//! `max_connections` are answered `503` with `Retry-After` and closed, a request head (and the
//! next one on a kept-alive connection) must arrive within `header_timeout`, and a TLS handshake
//! within the same time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::metrics::{Metrics, names};

/// How long a refused connection is read from before it is closed.
const LINGER: Duration = Duration::from_millis(250);
/// Refused plain connections answered at once, at most.
const MAX_REFUSALS: usize = 1024;

/// How a listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// The listener's name in logs and in the metrics' `listener` label (`admin`,
    /// `source:NAME`).
    pub name: String,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request head, and to finish a TLS handshake.
    pub header_timeout: Duration,
    /// Seconds in the `Retry-After` of a refused connection.
    pub retry_after_secs: u64,
    /// Where refusals are counted.
    pub metrics: Metrics,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .finish()
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight finish
/// for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) {
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    // Refusals cost a task each for a moment (and a handshake under TLS): bounded too.
    let refusals = Arc::new(Semaphore::new(if options.tls.is_some() {
        options.max_connections.max(1)
    } else {
        MAX_REFUSALS
    }));
    let graceful = GracefulShutdown::new();
    let labels = [("listener", options.name.as_str())];
    options
        .metrics
        .declare(names::HTTP_CONNECTIONS_REFUSED, &labels);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(listener = %options.name, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                let options = Arc::clone(&options);
                let router = router.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    connection(stream, router, &options, watcher).await;
                    drop(permit);
                });
            }
            Err(_) => {
                options
                    .metrics
                    .add(names::HTTP_CONNECTIONS_REFUSED, &labels, 1);
                match Arc::clone(&refusals).try_acquire_owned() {
                    Ok(permit) => {
                        let options = Arc::clone(&options);
                        tokio::spawn(async move {
                            refuse(stream, &options).await;
                            drop(permit);
                        });
                    }
                    // Past that, a plain connection still gets its answer if the socket takes it
                    // at once; a TLS one is closed.
                    Err(_) if options.tls.is_none() => refuse_now(stream, options.retry_after_secs),
                    Err(_) => {}
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %options.name, "requests still in flight at stop; closing them");
    }
}

/// Serves one connection: the TLS handshake if configured, then HTTP/1.1.
async fn connection(
    stream: TcpStream,
    router: Router,
    options: &ServeOptions,
    watcher: hyper_util::server::graceful::Watcher,
) {
    match &options.tls {
        None => http(stream, router, options, watcher).await,
        Some(acceptor) => {
            if let Some(tls) = handshake(acceptor, stream, options).await {
                http(tls, router, options, watcher).await;
            }
        }
    }
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    options: &ServeOptions,
) -> Option<tokio_rustls::server::TlsStream<S>> {
    match tokio::time::timeout(options.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            tracing::debug!(listener = %options.name, %reason, "TLS handshake failed");
            options.metrics.add(
                names::HTTP_TLS_FAILURES,
                &[("listener", options.name.as_str())],
                1,
            );
            None
        }
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    router: Router,
    options: &ServeOptions,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let served = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(served).await {
        tracing::debug!(listener = %options.name, error = %e, "connection ended with an error");
    }
}

/// The reply to a connection over the limit.
fn refusal(retry_after_secs: u64) -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {retry_after_secs}\r\nContent-Type: application/json\r\n\
         Content-Length: 33\r\nConnection: close\r\n\r\n{{\"error\":\"too many connections\"}}\n"
    )
}

/// Answers a plain connection over the limit without waiting: what the socket takes at once,
/// then what the client sent is read as far as it is there, and the connection is closed.
fn refuse_now(stream: TcpStream, retry_after_secs: u64) {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let _ = stream.write(refusal(retry_after_secs).as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Answers a connection over the limit with `503` and `Retry-After`, then closes it.
async fn refuse(stream: TcpStream, options: &ServeOptions) {
    let reply = refusal(options.retry_after_secs);
    let write = async {
        match &options.tls {
            None => answer_and_close(stream, reply.as_bytes()).await,
            Some(acceptor) => {
                if let Some(tls) = handshake(acceptor, stream, options).await {
                    answer_and_close(tls, reply.as_bytes()).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(options.header_timeout, write).await;
}

/// Writes `reply`, closes the writing side, and reads what the client had sent for a moment:
/// closing a socket with unread bytes resets the connection, and the client would lose the reply.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, reply: &[u8]) {
    if stream.write_all(reply).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let drain = async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
