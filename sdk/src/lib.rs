//! Write Weir stream transforms as plain Rust functions, compiled to WebAssembly components.
//!
//! A Weir transform is a function from one input [`Event`] to zero or more records sent to the
//! stage's named outputs, or a rejection. Mark it with [`#[weir_sdk::transform]`](transform),
//! build the crate for `wasm32-wasip2`, and the result is a component that implements the
//! `weir:plugin/event-transform@0.3.0` world of the host's `wit/` contract.
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

pub mod columns;
mod context;
mod error;
mod event;
mod join;
pub mod lag;
mod projection;
mod runner;
pub mod testing;
mod text;
pub mod time;
#[cfg(target_arch = "wasm32")]
mod wasm;
mod window;

pub use context::{Context, Level};
pub use error::{Error, Result};
pub use event::Event;
pub use serde;
pub use serde_json;
pub use text::Text;
pub use window::{Aggregate, Window};

/// Marks the plugin's transform function: `fn(event: &Event, ctx: &mut Context) -> Result<()>`.
///
/// The function stays a plain Rust function, callable in native tests. When the crate is built
/// for Wasm, the attribute adds the export of the `weir:plugin/transform@0.3.0` interface, which
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

/// Marks the `impl` of [`Aggregate`] for a plugin's accumulator type: the plugin is then a window
/// aggregate (`weir:plugin/window-aggregate@0.3.0`).
///
/// ```
/// use weir_sdk::prelude::*;
///
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// struct Count(u64);
///
/// #[weir_sdk::window]
/// impl Aggregate for Count {
///     fn fold(&mut self, _event: &Event, _ctx: &mut Context) -> Result<()> {
///         self.0 += 1;
///         Ok(())
///     }
///     fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
///         ctx.emit("counts", &serde_json::json!({ "Count": self.0 }))
///     }
/// }
/// # fn main() {}
/// ```
///
/// It goes on `impl Aggregate for YourType` (not generic). A crate has one plugin function or
/// `impl`, of any kind. A method with the wrong signature is reported at your `impl` by the
/// compiler, as for any trait:
///
/// ```compile_fail
/// use weir_sdk::prelude::*;
///
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// struct Count(u64);
///
/// #[weir_sdk::window]
/// impl Aggregate for Count {
///     fn fold(&mut self, _event: &Event) -> Result<()> { // error: the context is missing
///         Ok(())
///     }
///     fn finish(self, _window: &Window, _ctx: &mut Context) -> Result<()> {
///         Ok(())
///     }
/// }
/// ```
pub use weir_sdk_macros::window;

/// Marks a join enrichment's function:
/// `fn(left: Option<&Event>, right: Option<&Event>, ctx: &mut Context) -> Result<()>`.
///
/// The host joins a pipeline's two inputs on a key within a time bound and calls the function for
/// every pair, with both events; an event that found no match within the bound comes alone (the
/// other side `None`) when the pipeline's policy for its side is `emit`. Records go out through
/// `ctx.emit`; an `Err` sends the pair (its left event, or the lone event) to the dead letters.
///
/// ```
/// use weir_sdk::prelude::*;
///
/// #[weir_sdk::join]
/// fn enrich(left: Option<&Event>, right: Option<&Event>, ctx: &mut Context) -> Result<()> {
///     let mut row: serde_json::Value = match left {
///         Some(booking) => booking.value()?,
///         None => return Ok(()), // a payment without its booking: nothing to write
///     };
///     row["Paid"] = right.is_some().into();
///     ctx.emit("rows", &row)
/// }
/// # fn main() {}
/// ```
pub use weir_sdk_macros::join;

/// What a plugin usually needs: `use weir_sdk::prelude::*;`.
///
/// The serde derives come from the plugin's own `serde` dependency (with its `derive` feature),
/// which their generated code refers to.
pub mod prelude {
    pub use crate::time::{DatePart, Timestamp, Weekday};
    pub use crate::{
        Aggregate, Context, Error, Event, Level, Result, Text, Window, join, transform,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Shorter names for the generated types the SDK uses everywhere.
mod bindings {
    pub(crate) use crate::__private::wit::weir::plugin::state::{
        CacheStart, Writes as StateWrites,
    };
    pub(crate) use crate::__private::wit::weir::plugin::types::{
        EventBatch, FinishRequest, FoldRequest, FoldResponse, JoinPair, JoinRequest, OutputBatch,
        Property, Rejection,
    };
}

/// What the attribute macros' expansions refer to. Not a public API: it changes without notice.
///
/// The SDK generates bindings for the `sdk-imports` world only (the host's imports and the shared
/// types). Each attribute macro generates, in the plugin's own crate, the bindings of its kind's
/// world (`event-transform`, `window-aggregate`, `join-enrichment`), reusing these modules for
/// everything but its export: a component then describes exactly the one world it implements.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// The guest bindings of the `sdk-imports` world, generated from this crate's copy of the
    /// host's `wit/plugin.wit` (`sdk/wit/`, kept equal to it by `scripts/sync-wit` and the test
    /// `wit_copies`), so that the crate builds outside this repository too.
    #[allow(missing_docs)]
    pub mod wit {
        wit_bindgen::generate!({
            path: "wit",
            world: "sdk-imports",
            generate_unused_types: true,
        });
    }

    pub use wit::weir::plugin::types::{EventBatch, OutputBatch};

    /// The bindings of one plugin world and their export, in the plugin's crate: what each
    /// attribute macro expands to (with the WIT text embedded in the macro crate). Expanded from
    /// this crate's macro, the generated glue (which needs `unsafe`) is not the plugin's own code.
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __weir_sdk_guest {
        (world: $world:literal, wit: $wit:literal, export: { $($export:tt)* }) => {
            #[cfg(target_arch = "wasm32")]
            #[doc(hidden)]
            mod __weir_sdk_guest {
                ::weir_sdk::__private::wit_bindgen::generate!({
                    inline: $wit,
                    world: $world,
                    runtime_path: "::weir_sdk::__private::wit_bindgen::rt",
                    with: {
                        "weir:plugin/types@0.3.0": ::weir_sdk::__private::wit::weir::plugin::types,
                        "weir:plugin/log@0.3.0": ::weir_sdk::__private::wit::weir::plugin::log,
                        "weir:plugin/metrics@0.3.0": ::weir_sdk::__private::wit::weir::plugin::metrics,
                        "weir:plugin/state@0.3.0": ::weir_sdk::__private::wit::weir::plugin::state,
                        "weir:plugin/config@0.3.0": ::weir_sdk::__private::wit::weir::plugin::config,
                        "weir:plugin/reference@0.3.0": ::weir_sdk::__private::wit::weir::plugin::reference,
                    },
                    generate_all,
                });

                struct WeirSdkPlugin;

                $($export)*

                export!(WeirSdkPlugin);
            }
        };
    }
    pub use __weir_sdk_guest as guest;

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

    /// Folds a batch into window accumulators: the body of the exported `fold`.
    #[cfg(target_arch = "wasm32")]
    pub fn fold_windows<A: crate::Aggregate>(request: FoldRequest) -> FoldResponse {
        crate::wasm::fold_windows::<A>(request)
    }

    /// Produces the outputs of closed windows: the body of the exported `finish`.
    #[cfg(target_arch = "wasm32")]
    pub fn finish_windows<A: crate::Aggregate>(request: FinishRequest) -> OutputBatch {
        crate::wasm::finish_windows::<A>(request)
    }

    pub use wit::weir::plugin::types::{FinishRequest, FoldRequest, FoldResponse, JoinRequest};

    /// The type a join function must have; the attribute checks the author's function against
    /// it, so that a mismatch is reported at the function.
    pub type JoinFn = fn(Option<&Event<'_>>, Option<&Event<'_>>, &mut Context) -> Result<()>;

    /// Enriches the pairs of one request: the body of the exported `enrich`.
    #[cfg(target_arch = "wasm32")]
    pub fn join_pairs(request: JoinRequest, join: JoinFn) -> OutputBatch {
        crate::wasm::join_pairs(request, join)
    }
}
