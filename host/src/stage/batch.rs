//! The columnar batch layout of `wit/plugin.wit`, filled from events with its buffers reused.

use std::sync::Arc;

use crate::event::Event;
use crate::json::fields::FieldFinder;
use crate::json::scan;
use crate::plugin::bindings::{EventBatch, Property};
use crate::plugin::columns::{self, push_bool, push_s64, push_u16, push_u32, push_u64};

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

/// How many events `batch` holds.
pub fn event_count(batch: &EventBatch) -> usize {
    columns::u32_count(&batch.body_ends)
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
    clear_projection(batch);
    batch
        .bodies
        .reserve(events.iter().map(|e| e.body.len()).sum());
    // The events of a source share its name's allocation: one pointer comparison finds it.
    let mut last_source: Option<(&Arc<str>, u16)> = None;
    for (index, event) in events.iter().enumerate() {
        batch.bodies.extend_from_slice(&event.body);
        push_u32(
            &mut batch.body_ends,
            u32::try_from(batch.bodies.len()).unwrap_or(u32::MAX),
        );
        if let Some(key) = &event.key {
            batch.keys.extend_from_slice(key);
        }
        push_u32(
            &mut batch.key_ends,
            u32::try_from(batch.keys.len()).unwrap_or(u32::MAX),
        );
        push_u64(&mut batch.positions, event.position);
        push_s64(&mut batch.event_times, event.time());
        push_s64(&mut batch.enqueued_times, event.enqueued_time);
        let source = match last_source {
            Some((name, source)) if Arc::ptr_eq(name, &event.source) => source,
            _ => {
                let source = source_index(&mut batch.sources, &event.source);
                last_source = Some((&event.source, source));
                source
            }
        };
        push_u16(&mut batch.event_sources, source);
        for (name, value) in &event.properties {
            batch.properties.push(Property {
                event: u32::try_from(index).unwrap_or(u32::MAX),
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
}

/// Projects the top-level fields `wanted` of every event's body into `batch` (the layout of
/// `event-batch.field-names` in `wit/plugin.wit`: the values separated by commas, as the elements
/// of one JSON array), replacing the projection it had; with `wanted` empty, the batch has none.
///
/// A body gets `projected = false` (and empty values) when the fast scanner does not read it as a
/// plain JSON object (see [`scan`]: malformed, an escape anywhere, nested too deep) or when one of
/// the wanted names appears twice in it: the plugin then reads the body itself, so what it
/// answers never depends on the projection.
pub fn project(batch: &mut EventBatch, wanted: &[String]) {
    clear_projection(batch);
    if wanted.is_empty() {
        return;
    }
    let EventBatch {
        bodies,
        body_ends,
        field_names,
        field_values,
        field_ends,
        projected,
        ..
    } = batch;
    field_names.extend_from_slice(wanted);
    let events = columns::u32_count(body_ends);
    field_ends.reserve(events * wanted.len() * 4);
    projected.reserve(events);
    let mut found: Vec<Option<&[u8]>> = vec![None; wanted.len()];
    let mut finder = FieldFinder::new(wanted);
    let mut start = 0usize;
    for end in columns::u32s(body_ends) {
        let end = end as usize;
        let body = bodies.get(start..end).unwrap_or_default();
        start = end;
        found.fill(None);
        let mut repeated = false;
        finder.object();
        let plain = scan::members_with_text(body, |key, _, text| {
            if let Some(field) = finder.find(key) {
                repeated |= found[field].replace(text).is_some();
            }
        });
        let readable = plain && !repeated;
        push_bool(projected, readable);
        for value in &found {
            // Entries are separated by one comma: the guest parses them as one JSON array.
            if !field_ends.is_empty() {
                field_values.push(b',');
            }
            if readable && let Some(text) = value {
                field_values.extend_from_slice(text);
            }
            push_u32(
                field_ends,
                u32::try_from(field_values.len()).unwrap_or(u32::MAX),
            );
        }
    }
}

/// Leaves `batch` without a projection.
fn clear_projection(batch: &mut EventBatch) {
    batch.field_names.clear();
    batch.field_values.clear();
    batch.field_ends.clear();
    batch.projected.clear();
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
            Event::new(0, 4, "d"),
            Event::new(0, 5, "e"),
        ];
        // Events of one source share its name; another allocation of a name is the same source.
        let bookings: Arc<str> = "bookings".into();
        events[0].source = Arc::clone(&bookings);
        events[1].source = "payments".into();
        events[2].source = "bookings".into();
        events[3].source = Arc::clone(&bookings);
        events[4].source = Arc::clone(&bookings);
        let mut batch = empty_batch(0);
        fill_batch(&mut batch, &events);
        assert_eq!(batch.sources, vec!["bookings", "payments"]);
        assert_eq!(batch.event_sources, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        // Buffers are reused: a second fill starts from an empty list of names.
        fill_batch(&mut batch, &events[1..2]);
        assert_eq!(batch.sources, vec!["payments"]);
        assert_eq!(batch.event_sources, [0, 0]);
    }

    /// Value `field` of event `event` in the batch's projection.
    fn projected_value(batch: &EventBatch, event: usize, field: usize) -> &str {
        let index = event * batch.field_names.len() + field;
        let end = |at| columns::u32_at(&batch.field_ends, at).expect("an end") as usize;
        let start = index.checked_sub(1).map_or(0, |previous| end(previous) + 1);
        std::str::from_utf8(&batch.field_values[start..end(index)]).expect("UTF-8")
    }

    #[test]
    fn projects_the_wanted_fields_as_written_and_leaves_unreadable_bodies_to_the_plugin() {
        let bodies = [
            r#"{"b": [1, {"c":2}] ,"a":"x","z":-1.5e3}"#,
            r#"{"a":null}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":"esc"aped","b":1}"#,
            r#"{"a":1"#,
            r#"[1]"#,
            r#"{"z":1,"z":2,"b":true}"#,
        ];
        let events: Vec<Event> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Event::new(0, i as u64, *body))
            .collect();
        let mut batch = empty_batch(0);
        fill_batch(&mut batch, &events);
        let wanted = vec!["a".to_owned(), "b".to_owned()];
        project(&mut batch, &wanted);
        assert_eq!(batch.field_names, wanted);
        assert_eq!(batch.projected, [1, 1, 0, 0, 0, 0, 1]);
        assert_eq!(columns::u32_count(&batch.field_ends), bodies.len() * 2);
        let values: Vec<(&str, &str)> = (0..bodies.len())
            .map(|e| (projected_value(&batch, e, 0), projected_value(&batch, e, 1)))
            .collect();
        assert_eq!(
            values,
            [
                (r#""x""#, r#"[1, {"c":2}]"#),
                ("null", ""),
                ("", ""),
                ("", ""),
                ("", ""),
                ("", ""),
                ("", "true"),
            ]
        );
        // The entries are the elements of one JSON array: the values read by one parser.
        let array = format!(
            "[{}]",
            std::str::from_utf8(&batch.field_values).expect("UTF-8")
        );
        assert_eq!(
            array, r#"["x",[1, {"c":2}],null,,,,,,,,,,,true]"#,
            "entries separated by one comma each"
        );
        // A new layout starts without a projection; an empty wanted list clears one.
        project(&mut batch, &[]);
        assert!(batch.field_names.is_empty() && batch.projected.is_empty());
        project(&mut batch, &wanted);
        fill_batch(&mut batch, &events[..1]);
        assert!(batch.field_names.is_empty() && batch.field_ends.is_empty());
    }
}
