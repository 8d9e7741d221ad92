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
        sources: Vec::new(),
        event_sources: Vec::new(),
        field_names: Vec::new(),
        field_values: Vec::new(),
        field_ends: Vec::new(),
        projected: Vec::new(),
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
    batch.sources.clear();
    batch.event_sources.clear();
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
        let source = source_index(&mut batch.sources, &event.source);
        batch.event_sources.push(source);
        for (name, value) in &event.properties {
            batch.properties.push(Property {
                event: u32::try_from(index).unwrap_or(u32::MAX),
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
}

/// The index of `source` in `sources`, added when it is not there yet. A pipeline has a handful
/// of sources, so a scan beats a map; past `u16::MAX` names (never, in practice) the last index is
/// reused rather than overflowing.
fn source_index(sources: &mut Vec<String>, source: &str) -> u16 {
    let found = sources.iter().position(|name| name == source);
    let index = found.unwrap_or_else(|| {
        sources.push(source.to_owned());
        sources.len() - 1
    });
    u16::try_from(index).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_names_its_source_through_the_batch() {
        let mut events = vec![
            Event::new(0, 1, "a"),
            Event::new(0, 2, "b"),
            Event::new(0, 3, "c"),
        ];
        events[0].source = "bookings".into();
        events[1].source = "payments".into();
        events[2].source = "bookings".into();
        let mut batch = empty_batch(0);
        fill_batch(&mut batch, &events);
        assert_eq!(batch.sources, vec!["bookings", "payments"]);
        assert_eq!(batch.event_sources, vec![0, 1, 0]);
        // Buffers are reused: a second fill starts from an empty list of names.
        fill_batch(&mut batch, &events[1..2]);
        assert_eq!(batch.sources, vec!["payments"]);
        assert_eq!(batch.event_sources, vec![0]);
    }
}
