//! One isolated call of a window or join plugin (one event's fold, one window's finish, one
//! pair's enrichment) after its batch trapped: on the running version, and, when that traps too
//! while the version is on probation, the very same request on the version it replaced.
//!
//! The same request is safe to make twice: a call that traps commits nothing (the keyed-state
//! writes it made are discarded, see [`crate::plugin::KeyedState`]) and the host applies what a
//! call returns (new accumulators, outputs) only when it returns. So an event is folded into its
//! windows once, by whichever version succeeded, and a window fires once.

use std::sync::Arc;

use crate::metrics::{Metrics, names};
use crate::plugin::{CallError, InstanceSlot, PluginInstance};

/// What an isolated call gave.
pub(super) struct Attempt<R> {
    /// The output, or why the item goes to the dead letters.
    pub(super) result: Result<R, String>,
    /// The version that produced the output, or, for a dead letter, the running version (the one
    /// the item was meant for).
    pub(super) version: Arc<str>,
    /// Whether the running version trapped on it (counted against its probation).
    pub(super) trapped: bool,
}

/// Where a stage counts its plugin's traps (`weir_plugin_traps_total`, by version).
#[derive(Debug, Clone)]
pub(super) struct TrapCounter {
    pub(super) metrics: Metrics,
    pub(super) pipeline: Arc<str>,
    pub(super) stage: Arc<str>,
}

impl TrapCounter {
    /// Counts one failed call of `version`.
    pub(super) fn count(&self, version: &str) {
        self.metrics.add(
            names::PLUGIN_TRAPS,
            &[
                ("pipeline", &self.pipeline),
                ("stage", &self.stage),
                ("version", version),
            ],
            1,
        );
    }
}

/// Calls `call` on the running version and, if it traps and a fallback is at hand, on the
/// fallback. The error means the running version could not even be instantiated (the stage
/// fails: retrying cannot fix it).
pub(super) fn call_with_fallback<R>(
    slot: &mut InstanceSlot,
    traps: &TrapCounter,
    call: impl Fn(&mut PluginInstance) -> Result<R, CallError>,
) -> Result<Attempt<R>, CallError> {
    let trap = match slot.call(&call)? {
        Ok(output) => {
            return Ok(Attempt {
                result: Ok(output),
                version: slot.plugin().version().clone(),
                trapped: false,
            });
        }
        Err(trap) => trap,
    };
    traps.count(&trap.version);
    let result = match slot.call_fallback(&call) {
        None => Err(format!("plugin trapped: {}", trap.reason)),
        Some(Ok(Ok(output))) => {
            let version = slot
                .fallback_version()
                .cloned()
                .unwrap_or_else(|| trap.version.clone());
            return Ok(Attempt {
                result: Ok(output),
                version,
                trapped: true,
            });
        }
        Some(Ok(Err(second))) => {
            traps.count(&second.version);
            Err(format!(
                "plugin trapped: {}; the previous version {} trapped too: {}",
                trap.reason, second.version, second.reason
            ))
        }
        Some(Err(second)) => Err(format!(
            "plugin trapped: {}; the previous version {} could not be instantiated: {}",
            trap.reason, second.version, second.reason
        )),
    };
    Ok(Attempt {
        result,
        version: trap.version,
        trapped: true,
    })
}
