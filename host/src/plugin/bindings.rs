//! The one place where the host generates its side of the plugin contract from `wit/`.
//!
//! The `weir-host` world is the union of every plugin world, so each kind of stage looks up only
//! the export it needs (see [`super::Plugin`]) and every stage shares the same import
//! implementations.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "weir-host",
});

pub use self::exports::weir::plugin::aggregate;
pub use self::exports::weir::plugin::join;
pub use self::exports::weir::plugin::transform;
pub use self::weir::plugin::types::{
    Emitted, EventBatch, FinishRequest, FoldRequest, FoldResponse, JoinPair, JoinRequest,
    OutputBatch, Property, Rejection, Window,
};
pub use self::weir::plugin::{config, log, metrics, reference, state, types};

/// The WIT package and version this host implements.
pub const PACKAGE: &str = "weir:plugin@0.3.0";

/// The world a per-event transform implements.
pub const TRANSFORM_WORLD: &str = "weir:plugin/event-transform@0.3.0";

/// The export a per-event transform must provide.
pub const TRANSFORM_EXPORT: &str = "weir:plugin/transform@0.3.0";

/// The world a window aggregate implements.
pub const AGGREGATE_WORLD: &str = "weir:plugin/window-aggregate@0.3.0";

/// The export a window aggregate must provide.
pub const AGGREGATE_EXPORT: &str = "weir:plugin/aggregate@0.3.0";

/// The world a join enrichment implements.
pub const JOIN_WORLD: &str = "weir:plugin/join-enrichment@0.3.0";

/// The export a join enrichment must provide.
pub const JOIN_EXPORT: &str = "weir:plugin/join@0.3.0";
