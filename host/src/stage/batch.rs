//! The columnar batch layout of `wit/plugin.wit`, filled from events with its buffers reused.

use crate::event::Event;
use crate::plugin::bindings::{EventBatch, Property};

/// An empty batch of `partition`.
pub fn empty_batch(partition: u32) -> EventBatch {
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
pub fn fill_batch(batch: &mut EventBatch, events: &[Event]) {
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
