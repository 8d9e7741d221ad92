//! The per-event transform stage: a batch in, records to named outputs and rejections out.

use std::sync::Arc;

use bytes::Bytes;

use super::{Rejected, Stage, StageError, StageOutput};
use crate::event::Event;
use crate::plugin::bindings::{EventBatch, OutputBatch, Property};
use crate::plugin::{CallError, InstanceSettings, KeyedState, TransformInstance, TransformPlugin};

/// Runs a transform plugin over batches, isolating poison events when a batch traps.
pub struct WasmTransformStage {
    name: Arc<str>,
    settings: Arc<InstanceSettings>,
    instance: Option<TransformInstance>,
    /// The state while no instance holds it (after a failed instantiation).
    parked_state: KeyedState,
    plugin: Arc<TransformPlugin>,
    batch: EventBatch,
}

impl std::fmt::Debug for WasmTransformStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmTransformStage")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
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
            settings,
            instance: None,
            parked_state: state,
            plugin,
            batch: empty_batch(0),
        }
    }

    /// The plugin the stage runs.
    pub fn plugin(&self) -> &Arc<TransformPlugin> {
        &self.plugin
    }

    /// The stage's keyed state.
    pub fn keyed_state(&self) -> &KeyedState {
        match &self.instance {
            Some(instance) => instance.keyed_state(),
            None => &self.parked_state,
        }
    }

    fn error(&self, reason: String) -> StageError {
        StageError {
            pipeline: self.settings.scope.pipeline.clone(),
            stage: self.name.clone(),
            partition: self.settings.scope.partition,
            reason,
        }
    }

    fn instance(&mut self) -> Result<&mut TransformInstance, StageError> {
        if self.instance.is_none() {
            let state = std::mem::take(&mut self.parked_state);
            match TransformInstance::new(self.plugin.clone(), self.settings.clone(), state.clone())
            {
                Ok(instance) => self.instance = Some(instance),
                Err(e) => {
                    self.parked_state = state;
                    return Err(self.error(format!("cannot instantiate plugin: {e}")));
                }
            }
        }
        self.instance.as_mut().ok_or_else(|| StageError {
            pipeline: self.settings.scope.pipeline.clone(),
            stage: self.name.clone(),
            partition: self.settings.scope.partition,
            reason: "no plugin instance".to_owned(),
        })
    }

    /// Drops a trapped instance, keeping its committed state for the next one.
    fn discard_instance(&mut self) {
        if let Some(mut instance) = self.instance.take() {
            self.parked_state = instance.take_keyed_state();
        }
    }

    fn call(&mut self, events: &[Event]) -> Result<Result<OutputBatch, CallError>, StageError> {
        fill_batch(&mut self.batch, events);
        let batch = std::mem::replace(&mut self.batch, empty_batch(0));
        let result = self.instance()?.process(&batch);
        self.batch = batch;
        if result.is_err() {
            self.discard_instance();
        }
        Ok(result)
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
                if let Err(reason) = decode_output(output, events, self.plugin.version(), out) {
                    return Err(self.error(reason));
                }
                Ok(())
            }
            Err(trap) => {
                tracing::warn!(
                    pipeline = %self.settings.scope.pipeline, stage = %self.name,
                    partition = self.settings.scope.partition, events = events.len(),
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
                                decode_output(output, single, self.plugin.version(), out)
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
        match &mut self.instance {
            Some(instance) => instance.take_counters().into_iter().collect(),
            None => Vec::new(),
        }
    }
}

fn empty_batch(partition: u32) -> EventBatch {
    EventBatch {
        partition,
        bodies: Vec::new(),
        body_ends: Vec::new(),
        positions: Vec::new(),
        event_times: Vec::new(),
        enqueued_times: Vec::new(),
        keys: Vec::new(),
        key_ends: Vec::new(),
        properties: Vec::new(),
    }
}

/// Lays `events` out in the columnar batch, reusing its buffers.
fn fill_batch(batch: &mut EventBatch, events: &[Event]) {
    batch.partition = events.first().map_or(0, |e| e.partition);
    for list in [&mut batch.bodies, &mut batch.keys] {
        list.clear();
    }
    batch.body_ends.clear();
    batch.key_ends.clear();
    batch.positions.clear();
    batch.event_times.clear();
    batch.enqueued_times.clear();
    batch.properties.clear();
    batch
        .bodies
        .reserve(events.iter().map(|e| e.body.len()).sum());
    for (index, event) in events.iter().enumerate() {
        batch.bodies.extend_from_slice(&event.body);
        batch
            .body_ends
            .push(u32::try_from(batch.bodies.len()).unwrap_or(u32::MAX));
        if let Some(key) = &event.key {
            batch.keys.extend_from_slice(key);
        }
        batch
            .key_ends
            .push(u32::try_from(batch.keys.len()).unwrap_or(u32::MAX));
        batch.positions.push(event.position);
        batch.event_times.push(event.time());
        batch.enqueued_times.push(event.enqueued_time);
        for (name, value) in &event.properties {
            batch.properties.push(Property {
                event: u32::try_from(index).unwrap_or(u32::MAX),
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
}

/// Turns a plugin's output into records and rejections, checking every index it gave.
fn decode_output(
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
