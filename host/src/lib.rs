//! Weir: a stream host whose business logic runs as sandboxed WebAssembly components.
//!
//! Sources deliver partitioned events; one task per partition runs them, in order, through Wasm
//! stages; sinks make the results durable; checkpoints record how far each partition got, written
//! only after the sinks have made durable what they cover.

pub mod admin;
pub mod checkpoint;
pub mod cli;
pub mod codec;
pub mod config;
pub mod connectors;
pub mod event;
pub mod generators;
pub mod health;
pub mod json;
mod mapped;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod plugin;
pub mod plugin_cli;
#[cfg(test)]
mod proptests;
pub mod reference;
pub mod sink;
pub mod source;
pub mod stage;
pub mod status;
pub mod time;

/// The process's allocator: mimalloc (feature `mimalloc`, on by default). Events, batches and
/// arrow buffers are many short-lived allocations shared between the partition workers' threads,
/// where it measured faster than the system allocator (see the README's Performance section).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
