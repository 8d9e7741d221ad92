//! The sandbox in one place: engine settings, the deadline ticker, per-instance limits, and a WASI
//! context that grants nothing but clocks and randomness, with guest stdout/stderr sent to
//! `tracing`.
//!
//! What a plugin can reach: its own linear memory (up to the stage's `max_memory_bytes`, counted
//! over all of the instance's memories), the host imports of its world (log, counters, keyed
//! state, its configuration), a clock and random bytes. No preopened directory, no environment
//! variable, no argument, no socket or name lookup, an empty stdin. Each call runs under an epoch
//! deadline (the stage's `call_timeout`).

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
    // One compiling thread: a new version compiles beside running partition workers, and on a
    // small machine a compile spread over every core slows their batches several-fold. It takes
    // longer, off the hot path, and only once per version (the compiled form is cached on disk).
    config.parallel_compilation(false);
    #[cfg(feature = "guest-profiling")]
    if std::env::var("WEIR_GUEST_PROFILER").as_deref() == Ok("perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
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

/// Runs `call`, which may block or run long, without holding up the asynchronous tasks of the
/// thread it is on: a call into a guest, or the writing of a large keyed state's base.
///
/// A guest that writes to stdout or stderr (a Rust panic message, a `println!`) makes WASI's
/// synchronous bindings `block_on` their tokio runtime, which panics on a thread that drives
/// asynchronous tasks; a base of millions of keys takes seconds to write, which other
/// partitions' tasks on the same runtime thread should not wait for. On a multi-threaded
/// runtime's worker the call therefore runs under `block_in_place`; on a current-thread runtime
/// (tests) it runs on a scoped thread of its own; outside any runtime (benchmarks) it runs as it
/// is.
pub fn run_blocking<R: Send>(call: impl FnOnce() -> R + Send) -> R {
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

/// Most tables, instances and memories one plugin instance may create; a component built by the
/// usual toolchains needs a handful of each.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
/// Most elements of one table (function references): far above what real guests use.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// A growth the limiter refused, kept to explain the trap in the plugin author's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRefusal {
    /// Bytes of linear memory the instance held, over all its memories.
    pub in_use: usize,
    /// Bytes the refused growth asked for.
    pub requested: usize,
    /// The limit.
    pub max: usize,
}

impl std::fmt::Display for MemoryRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit exceeded: the instance held {} bytes and asked for {} more, above its limit of {} bytes (the stage's `max_memory_bytes`)",
            self.in_use, self.requested, self.max
        )
    }
}

/// Limits one instance: linear memory in total over all its memories (a component may have
/// several), table sizes and the number of instances, tables and memories. A refused memory growth
/// traps at once (rather than returning -1 to the guest) and is remembered for the error message.
#[derive(Debug)]
pub struct InstanceLimiter {
    max_memory_bytes: usize,
    memory_in_use: usize,
    refused: Option<MemoryRefusal>,
    /// A memory growth below the limit failed (the host could not provide it).
    grow_failed: bool,
}

impl InstanceLimiter {
    /// A limiter allowing `max_memory_bytes` of linear memory in total.
    pub fn new(max_memory_bytes: u64) -> Self {
        InstanceLimiter {
            max_memory_bytes: usize::try_from(max_memory_bytes).unwrap_or(usize::MAX),
            memory_in_use: 0,
            refused: None,
            grow_failed: false,
        }
    }

    /// The last refused growth, if any, forgetting it.
    pub fn take_refusal(&mut self) -> Option<MemoryRefusal> {
        self.refused.take()
    }

    /// Whether a memory growth the limit allowed failed since the last call of this, forgetting
    /// it.
    pub fn take_grow_failure(&mut self) -> bool {
        std::mem::take(&mut self.grow_failed)
    }

    /// Bytes of linear memory the instance holds.
    pub fn memory_in_use(&self) -> usize {
        self.memory_in_use
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_in_use.saturating_add(growth);
        if total > self.max_memory_bytes {
            let refusal = MemoryRefusal {
                in_use: self.memory_in_use,
                requested: growth,
                max: self.max_memory_bytes,
            };
            self.refused = Some(refusal);
            return Err(wasmtime::Error::msg(refusal.to_string()));
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not provide memory the limit allowed: fail the call rather than let the
        // guest continue with a failed allocation.
        self.grow_failed = true;
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
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

/// The last lines a guest wrote to stderr, kept to explain its next trap: a Rust panic prints
/// `thread '..' panicked at FILE:LINE:COL:`, then its message, then a note about backtraces,
/// before aborting.
#[derive(Debug, Clone, Default)]
pub struct LastStderrLine(Arc<Mutex<std::collections::VecDeque<String>>>);

/// Lines of stderr kept.
const KEPT_STDERR_LINES: usize = 8;

impl LastStderrLine {
    /// What the recent lines say, leaving none: a panic's message with its location, or the last
    /// line.
    pub fn take(&self) -> String {
        let lines: Vec<String> = self
            .0
            .lock()
            .map(|mut lines| lines.drain(..).collect())
            .unwrap_or_default();
        explain_stderr(&lines)
    }

    fn set(&self, line: &str) {
        if let Ok(mut lines) = self.0.lock() {
            if lines.len() == KEPT_STDERR_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_owned());
        }
    }
}

/// The panic message (with its location) in `lines`, else the last line that is not a note.
fn explain_stderr(lines: &[String]) -> String {
    if let Some(index) = lines.iter().rposition(|l| l.contains(" panicked at ")) {
        let location = lines[index]
            .split(" panicked at ")
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches(':');
        let message: Vec<&str> = lines[index + 1..]
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.starts_with("note: "))
            .collect();
        return if message.is_empty() {
            format!("(at {location})")
        } else {
            format!("{} (at {location})", message.join(" "))
        };
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.starts_with("note: "))
        .cloned()
        .unwrap_or_default()
}

/// A WASI context with no preopened directory, no environment, no arguments and no network.
///
/// Each of these is also the builder's default; they are spelled out so that a change of default
/// in a wasmtime upgrade cannot widen the sandbox unnoticed (the hostile-plugin tests check them).
pub fn wasi_context(scope: &PluginScope, last_stderr: &LastStderrLine) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    // stdin stays closed (the default); every socket address is refused even if TCP or UDP were
    // ever allowed.
    builder.socket_addr_check(|_, _| Box::pin(async { false }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_explained_by_its_message_and_location() {
        let lines: Vec<String> = [
            "thread '<unnamed>' panicked at src/lib.rs:20:9:",
            "poison event at position 7",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            explain_stderr(&lines),
            "poison event at position 7 (at src/lib.rs:20:9)"
        );
        assert_eq!(explain_stderr(&lines[1..2]), "poison event at position 7");
    }

    #[test]
    fn the_limiter_counts_all_memories_together() {
        use wasmtime::ResourceLimiter;
        let mut limiter = InstanceLimiter::new(1000);
        assert!(limiter.memory_growing(0, 600, None).is_ok());
        assert!(limiter.memory_growing(0, 300, None).is_ok());
        let err = limiter
            .memory_growing(300, 500, None)
            .expect_err("above the limit");
        assert!(
            err.to_string()
                .contains("held 900 bytes and asked for 200 more"),
            "{err}"
        );
        assert!(limiter.take_refusal().is_some());
    }
}
