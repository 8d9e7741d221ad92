//! The sandbox in one place: engine settings, the deadline ticker, per-store limits, and a WASI
//! context that grants nothing but clocks and randomness, with guest stdout/stderr sent to
//! `tracing`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{Config, Engine, OptLevel};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// How often the engine's epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine every plugin is compiled for.
pub fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    let engine = Engine::new(&config)?;
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("weir-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(err) = spawned {
        // Without the ticker no deadline ever fires; say so loudly rather than fail every call.
        tracing::error!(error = %err, "cannot start the plugin deadline ticker: calls will not time out");
    }
}

/// Ticks of [`EPOCH_TICK`] that make up `timeout` (at least one).
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_millis() / EPOCH_TICK.as_millis();
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// Runs `call` (a call into a guest) where the guest may block.
///
/// A guest that writes to stdout or stderr (a Rust panic message, a `println!`) makes WASI's
/// synchronous bindings `block_on` their tokio runtime, which panics on a thread that drives
/// asynchronous tasks. On a multi-threaded runtime's worker the call therefore runs under
/// `block_in_place`; on a current-thread runtime (tests) it runs on a scoped thread of its own;
/// outside any runtime (benchmarks) it runs as it is.
pub fn run_guest<R: Send>(call: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        Ok(_) => std::thread::scope(|scope| match scope.spawn(call).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => call(),
    }
}

/// Who a plugin instance runs for, attached to everything it logs.
#[derive(Debug, Clone)]
pub struct PluginScope {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// Partition of the worker that owns the instance.
    pub partition: u32,
    /// Plugin name (from its file name).
    pub plugin: Arc<str>,
    /// Plugin version (its content hash).
    pub version: Arc<str>,
}

/// The last line a guest wrote to stderr, kept to explain its next trap (a Rust panic prints its
/// message there before aborting).
#[derive(Debug, Clone, Default)]
pub struct LastStderrLine(Arc<Mutex<String>>);

impl LastStderrLine {
    /// Takes the line, leaving it empty.
    pub fn take(&self) -> String {
        self.0
            .lock()
            .map(|mut line| std::mem::take(&mut *line))
            .unwrap_or_default()
    }

    fn set(&self, line: &str) {
        if let Ok(mut last) = self.0.lock() {
            line.clone_into(&mut last);
        }
    }
}

/// A WASI context with no preopened directory, no environment, no arguments and no network.
pub fn wasi_context(scope: &PluginScope, last_stderr: &LastStderrLine) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(GuestOutput::new(
            scope.clone(),
            Stream::Stdout,
            last_stderr.clone(),
        ))
        .stderr(GuestOutput::new(
            scope.clone(),
            Stream::Stderr,
            last_stderr.clone(),
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder.build()
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Guest stdout or stderr, forwarded to `tracing` line by line.
#[derive(Clone)]
struct GuestOutput {
    scope: PluginScope,
    stream: Stream,
    last_stderr: LastStderrLine,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    fn new(scope: PluginScope, stream: Stream, last_stderr: LastStderrLine) -> Self {
        GuestOutput {
            scope,
            stream,
            last_stderr,
            partial: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let Ok(mut partial) = self.partial.lock() else {
            return;
        };
        partial.extend_from_slice(bytes);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            self.emit(&String::from_utf8_lossy(&line[..line.len() - 1]));
        }
        // Bound what a guest that never writes a newline can make us hold.
        if partial.len() > 64 * 1024 {
            let line: Vec<u8> = partial.drain(..).collect();
            self.emit(&String::from_utf8_lossy(&line));
        }
    }

    fn emit(&self, line: &str) {
        let s = &self.scope;
        match self.stream {
            Stream::Stdout => tracing::info!(
                target: "weir::plugin::stdout",
                pipeline = %s.pipeline, stage = %s.stage, partition = s.partition,
                plugin = %s.plugin, version = %s.version, "{line}"
            ),
            Stream::Stderr => {
                if !line.trim().is_empty() {
                    self.last_stderr.set(line);
                }
                tracing::warn!(
                    target: "weir::plugin::stderr",
                    pipeline = %s.pipeline, stage = %s.stage, partition = s.partition,
                    plugin = %s.plugin, version = %s.version, "{line}"
                );
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
