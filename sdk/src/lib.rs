//! Write Weir stream transforms as plain Rust functions, compiled to WebAssembly components.
//!
//! A Weir transform is a function from one input [`Event`] to zero or more records sent to the
//! stage's named outputs, or a rejection. Mark it with [`#[weir_sdk::transform]`](transform),
//! build the crate for `wasm32-wasip2`, and the result is a component that implements the
//! `weir:plugin/event-transform@0.1.0` world of the host's `wit/` contract.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "hot-devices"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! weir-sdk = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use weir_sdk::prelude::*;
//!
//! /// The stage's `config` table; every setting has a default.
//! #[derive(Clone, Deserialize)]
//! #[serde(default)]
//! struct Config {
//!     max_temperature: f64,
//! }
//!
//! impl Default for Config {
//!     fn default() -> Self {
//!         Config { max_temperature: 80.0 }
//!     }
//! }
//!
//! /// The part of the input the rule reads, borrowed from the batch.
//! #[derive(Deserialize)]
//! #[serde(rename_all = "PascalCase")]
//! struct Reading<'a> {
//!     #[serde(borrow)]
//!     device_id: Text<'a>,
//!     temperature: f64,
//! }
//!
//! #[derive(Serialize)]
//! #[serde(rename_all = "PascalCase")]
//! struct Alert<'a> {
//!     device_id: &'a str,
//!     temperature: f64,
//! }
//!
//! /// Sends every reading to `rows`, and an alert to `alerts` when it is too hot.
//! #[weir_sdk::transform]
//! fn process(event: &Event, ctx: &mut Context) -> Result<()> {
//!     let config: Config = ctx.config()?;
//!     let reading: Reading = event.json()?; // malformed or incomplete: rejected with the reason
//!     if reading.temperature > config.max_temperature {
//!         ctx.emit("alerts", &Alert { device_id: &reading.device_id, temperature: reading.temperature })?;
//!         ctx.counter("alerts", 1);
//!     }
//!     ctx.forward("rows"); // the input, unchanged and uncopied
//!     Ok(())
//! }
//!
//! #[cfg(test)]
//! mod tests {
//!     use super::*;
//!     use weir_sdk::testing::Harness;
//!
//!     #[test]
//!     fn alerts_when_too_hot() {
//!         let mut harness = Harness::new(process);
//!         let outcome = harness.run(r#"{"DeviceId": "d1", "Temperature": 91.5}"#);
//!         assert_eq!(outcome.json("alerts")[0]["Temperature"], 91.5);
//!         assert!(outcome.forwarded_to("rows"));
//!         let outcome = harness.run(r#"{"DeviceId": "d1"}"#);
//!         assert_eq!(outcome.rejection(), Some("missing field `Temperature`"));
//!     }
//! }
//! # fn main() {
//! #     use weir_sdk::testing::Harness;
//! #     let mut harness = Harness::new(process);
//! #     let outcome = harness.run(r#"{"DeviceId": "d1", "Temperature": 91.5}"#);
//! #     assert_eq!(outcome.json("alerts")[0]["Temperature"], 91.5);
//! #     assert!(outcome.forwarded_to("rows"));
//! #     let outcome = harness.run(r#"{"DeviceId": "d1"}"#);
//! #     assert_eq!(outcome.rejection(), Some("missing field `Temperature`"));
//! # }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/hot_devices.wasm`. Test it natively with `cargo test`:
//! [`testing::Harness`] runs the function through the same batch runner as the component.
//!
//! # How a batch runs
//!
//! The host sends a batch of events of one partition in one call, in a columnar layout (all
//! bodies in one buffer). The plugin walks it once; each [`Event`] borrows its body from that
//! buffer, and every record is written into one output buffer, so a batch costs a few large
//! copies across the boundary and no allocation per event.
//!
//! - `Ok(())`: the records the function emitted for the event go to the stage's outputs.
//! - `Err(error)`: the event is rejected; the host sends it to the dead-letter sink with the
//!   error's text as the reason. Records emitted and state written for this event before the
//!   error are discarded.
//! - A panic traps the whole batch: the host discards its state writes, replaces the instance and
//!   retries the batch one event at a time, to dead-letter only the event that panics.
//!
//! Keyed state ([`Context::get`], [`Context::put`]) belongs to the host, scoped to the stage and
//! the partition and checkpointed with the source position; values are stored as JSON. The
//! plugin caches it for one batch only, because the host may replace the instance (a new version,
//! a trap) between any two batches.
#![deny(missing_docs)]
// The crate example shows the test module a plugin has; its hidden `main` runs the same checks.
#![allow(clippy::test_attr_in_doctest)]

mod context;
mod error;
mod event;
mod runner;
pub mod testing;
mod text;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use context::{Context, Level};
pub use error::{Error, Result};
pub use event::Event;
pub use serde;
pub use serde_json;
pub use text::Text;

/// Marks the plugin's transform function: `fn(event: &Event, ctx: &mut Context) -> Result<()>`.
///
/// The function stays a plain Rust function, callable in native tests. When the crate is built
/// for Wasm, the attribute adds the export of the `weir:plugin/transform@0.1.0` interface, which
/// runs the function over every event of every batch the host sends. A crate has one transform
/// function; the function may have any name.
///
/// A signature that does not fit is reported at the function, with what is expected:
///
/// ```compile_fail
/// use weir_sdk::prelude::*;
///
/// #[weir_sdk::transform]
/// fn process(event: &Event) -> Result<()> { // error: expected two arguments
///     Ok(())
/// }
/// ```
pub use weir_sdk_macros::transform;

/// What a plugin usually needs: `use weir_sdk::prelude::*;`.
///
/// The serde derives come from the plugin's own `serde` dependency (with its `derive` feature),
/// which their generated code refers to.
pub mod prelude {
    pub use crate::{Context, Error, Event, Level, Result, Text, transform};
    pub use serde::{Deserialize, Serialize};
}

/// Shorter names for the generated types the SDK uses everywhere.
mod bindings {
    pub(crate) use crate::__private::wit::weir::plugin::state::Writes as StateWrites;
    pub(crate) use crate::__private::wit::weir::plugin::types::{
        Emitted, EventBatch, OutputBatch, Property, Rejection,
    };
}

/// What the [`transform`] attribute's expansion refers to. Not a public API: it changes without
/// notice.
#[doc(hidden)]
pub mod __private {
    /// The guest bindings of the `event-transform` world, generated from the host's `wit/`.
    #[allow(missing_docs)]
    pub mod wit {
        wit_bindgen::generate!({
            path: "../wit",
            world: "event-transform",
            pub_export_macro: true,
            export_macro_name: "export_event_transform",
            default_bindings_module: "::weir_sdk::__private::wit",
        });
    }

    pub use wit::export_event_transform;
    pub use wit::exports::weir::plugin::transform::Guest;
    pub use wit::weir::plugin::types::{EventBatch, OutputBatch};

    use crate::{Context, Event, Result};

    /// The type a transform function must have; the attribute checks the author's function
    /// against it, so that a mismatch is reported at the function.
    pub type TransformFn = fn(&Event<'_>, &mut Context) -> Result<()>;

    /// Runs `transform` over one batch from the host: the body of the exported `process`.
    #[cfg(target_arch = "wasm32")]
    pub fn process_batch<F>(batch: EventBatch, transform: F) -> OutputBatch
    where
        F: Fn(&Event<'_>, &mut Context) -> Result<()>,
    {
        crate::wasm::process_batch(batch, transform)
    }
}
