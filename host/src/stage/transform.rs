//! The per-event transform stage: a batch in, records to named outputs and rejections out.

use std::sync::Arc;

use bytes::Bytes;

use super::batch::{empty_batch, fill_batch};
use super::{Rejected, Stage, StageError, StageOutput};
use crate::event::Event;
use crate::plugin::bindings::{EventBatch, OutputBatch};
use crate::plugin::{CallError, InstanceSettings, KeyedState, PluginSlot, TransformPlugin};

/// Runs a transform plugin over batches, isolating poison events when a batch traps.
pub struct WasmTransformStage {
    name: Arc<str>,
    slot: PluginSlot,
    batch: EventBatch,
}

impl std::fmt::Debug for WasmTransformStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmTransformStage")
            .field("name", &self.name)
            .field("plugin", self.slot.plugin())
            .finish_non_exhaustive()
    }
}

impl WasmTransformStage {
    /// A stage running `plugin`, starting from `state` (restored from a checkpoint, or empty).
    pub fn new(
        name: Arc<str>,
        plugin: Arc<TransformPlugin>,
        settings: Arc<InstanceSettings>,
        state: KeyedState,
    ) -> Self {
        WasmTransformStage {
            name,
            slot: PluginSlot::new(plugin, settings, state),
            batch: empty_batch(0),
        }
    }

    /// The plugin the stage runs.
    pub fn plugin(&self) -> &Arc<TransformPlugin> {
        self.slot.plugin()
    }

    /// The stage's keyed state.
    pub fn keyed_state(&self) -> &KeyedState {
        self.slot.keyed_state()
    }

    fn error(&self, reason: String) -> StageError {
        let scope = &self.slot.settings().scope;
        StageError {
            pipeline: scope.pipeline.clone(),
            stage: self.name.clone(),
            partition: scope.partition,
            reason,
        }
    }

    fn call(&mut self, events: &[Event]) -> Result<Result<OutputBatch, CallError>, StageError> {
        fill_batch(&mut self.batch, events);
        let batch = &self.batch;
        match self.slot.call(|instance| instance.process(batch)) {
            Ok(result) => Ok(result),
            Err(e) => Err(self.error(format!("cannot instantiate plugin: {e}"))),
        }
    }
}

impl Stage for WasmTransformStage {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn process(&mut self, events: &[Event], out: &mut StageOutput) -> Result<(), StageError> {
        if events.is_empty() {
            return Ok(());
        }
        match self.call(events)? {
            Ok(output) => {
                if let Err(reason) = decode_output(output, events, self.plugin().version(), out) {
                    return Err(self.error(reason));
                }
                Ok(())
            }
            Err(trap) => {
                let scope = &self.slot.settings().scope;
                tracing::warn!(
                    pipeline = %scope.pipeline, stage = %self.name,
                    partition = scope.partition, events = events.len(),
                    first_position = events[0].position, reason = %trap.reason,
                    "plugin trapped on a batch; retrying it event by event"
                );
                // Retry one event at a time: the poison event goes to the dead letters, the others
                // proceed as if the batch had not failed.
                for event in events {
                    let single = std::slice::from_ref(event);
                    match self.call(single)? {
                        Ok(output) => {
                            if let Err(reason) =
                                decode_output(output, single, self.plugin().version(), out)
                            {
                                return Err(self.error(reason));
                            }
                        }
                        Err(trap) => out.rejected.push(Rejected {
                            event: event.clone(),
                            reason: format!("plugin trapped: {}", trap.reason),
                            plugin_version: Some(trap.version.clone()),
                        }),
                    }
                }
                Ok(())
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.keyed_state().snapshot()
    }

    fn take_counters(&mut self) -> Vec<(String, u64)> {
        self.slot.take_counters().into_iter().collect()
    }
}

/// Turns a plugin's output into records and rejections, checking every index it gave.
pub(super) fn decode_output(
    output: OutputBatch,
    events: &[Event],
    version: &Arc<str>,
    out: &mut StageOutput,
) -> Result<(), String> {
    let targets: Vec<Arc<str>> = output.targets.into_iter().map(Arc::from).collect();
    let payloads = Bytes::from(output.payloads);
    let mut start = 0usize;
    for emitted in output.emitted {
        let event = events.get(emitted.event as usize).ok_or_else(|| {
            format!(
                "plugin emitted a record for event {} of a batch of {}",
                emitted.event,
                events.len()
            )
        })?;
        let target = targets.get(emitted.target as usize).ok_or_else(|| {
            format!(
                "plugin emitted to target {} of {}",
                emitted.target,
                targets.len()
            )
        })?;
        let end = emitted.payload_end as usize;
        if end < start || end > payloads.len() {
            return Err(format!(
                "plugin gave payload end {end} after {start} in a buffer of {}",
                payloads.len()
            ));
        }
        let body = if emitted.forward {
            event.body.clone()
        } else {
            payloads.slice(start..end)
        };
        start = end;
        out.emitted.push((
            target.clone(),
            Event {
                partition: event.partition,
                position: event.position,
                key: event.key.clone(),
                event_time: event.event_time,
                enqueued_time: event.enqueued_time,
                properties: event.properties.clone(),
                body,
            },
        ));
    }
    for rejection in output.rejected {
        let event = events.get(rejection.event as usize).ok_or_else(|| {
            format!(
                "plugin rejected event {} of a batch of {}",
                rejection.event,
                events.len()
            )
        })?;
        out.rejected.push(Rejected {
            event: event.clone(),
            reason: rejection.reason,
            plugin_version: Some(version.clone()),
        });
    }
    Ok(())
}
