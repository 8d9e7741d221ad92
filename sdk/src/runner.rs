//! The batch runner: one pass over a columnar batch, calling the transform function per event.
//!
//! The Wasm export ([`crate::__private::process_batch`]) and the native test harness
//! ([`crate::testing`]) both run batches through [`Runner::run`], so what the harness shows is
//! what the plugin does inside the host.

use crate::bindings::{EventBatch, OutputBatch, Property};
use crate::columns::{self, s64_at, u16_at, u32_at, u64_at};
use crate::context::{Backend, Context};
use crate::error::Result;
use crate::event::Event;
use crate::projection::{self, BatchProjection};

/// Runs batches for one plugin instance, keeping its [`Context`] (configuration cache, buffers)
/// from batch to batch.
pub(crate) struct Runner {
    pub(crate) ctx: Context,
    /// The batch's properties sorted by event, when the host did not send them sorted.
    sorted_properties: Vec<Property>,
}

impl Runner {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Self {
        Runner {
            ctx: Context::new(backend),
            sorted_properties: Vec::new(),
        }
    }

    /// Runs `transform` over every event of `batch`, in order. The outputs are left in
    /// `self.ctx.out`; keyed-state writes and counters have been handed to the backend.
    pub(crate) fn run<F>(&mut self, batch: &EventBatch, transform: &F)
    where
        F: Fn(&Event<'_>, &mut Context) -> Result<()>,
    {
        let ctx = &mut self.ctx;
        ctx.begin_batch();
        // Properties come sorted by event from Weir's host; sort a copy when they are not.
        let properties: &[Property] = if batch.properties.is_sorted_by_key(|p| p.event) {
            &batch.properties
        } else {
            self.sorted_properties.clear();
            self.sorted_properties.extend_from_slice(&batch.properties);
            self.sorted_properties.sort_by_key(|p| p.event);
            &self.sorted_properties
        };
        let projection = BatchProjection::of(batch);
        let mut next_property = 0;
        let mut body_start = 0;
        let mut key_start = 0;
        for (index, body_end) in columns::u32s(&batch.body_ends).enumerate() {
            // The batch crossed the WIT boundary, whose lists have u32 lengths.
            let event_index = u32::try_from(index).unwrap_or(u32::MAX);
            let body_end = body_end as usize;
            let body = batch.bodies.get(body_start..body_end);
            body_start = body_end;
            let key_end = u32_at(&batch.key_ends, index).map_or(key_start, |end| end as usize);
            let key = batch.keys.get(key_start..key_end).unwrap_or_default();
            key_start = key_end;
            while properties
                .get(next_property)
                .is_some_and(|p| p.event < event_index)
            {
                next_property += 1;
            }
            let first_property = next_property;
            while properties
                .get(next_property)
                .is_some_and(|p| p.event == event_index)
            {
                next_property += 1;
            }
            let position = u64_at(&batch.positions, index).unwrap_or_default();
            ctx.begin_event(event_index, position);
            let Some(body) = body else {
                ctx.reject(format!(
                    "invalid batch: event {index} has body end {body_end}, outside the body buffer"
                ));
                continue;
            };
            let event = Event {
                body,
                key,
                properties: &properties[first_property..next_property],
                time: s64_at(&batch.event_times, index).unwrap_or_default(),
                enqueued_time: s64_at(&batch.enqueued_times, index).unwrap_or_default(),
                position,
                partition: batch.partition,
                source: source_of(batch, index),
                projected: projection.and_then(|p| p.event(index)),
            };
            let result = transform(&event, ctx);
            ctx.end_event(result);
        }
        ctx.end_batch();
        // Every batch says which fields the structs read so far need (the host keeps the last).
        ctx.out.wanted_fields = projection::wanted_fields();
    }

    /// The outputs of the last batch.
    pub(crate) fn output(&self) -> &OutputBatch {
        &self.ctx.out
    }

    /// Moves the outputs of the last batch out.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn take_output(&mut self) -> OutputBatch {
        self.ctx.take_output()
    }
}

/// Random access to the events of a columnar batch (a window's members, a join's pairs), with the
/// offsets computed once per batch and the buffers reused from batch to batch.
#[derive(Debug, Default)]
pub(crate) struct BatchIndex {
    body_starts: Vec<usize>,
    key_starts: Vec<usize>,
    /// Per event, its range in `properties` (or in the sorted copy).
    property_ranges: Vec<(usize, usize)>,
    /// The batch's properties sorted by event, when the host did not send them sorted.
    sorted_properties: Vec<Property>,
    sorted: bool,
}

impl BatchIndex {
    /// Indexes `batch`.
    pub(crate) fn build(&mut self, batch: &EventBatch) {
        let count = columns::u32_count(&batch.body_ends);
        self.body_starts.clear();
        self.key_starts.clear();
        self.property_ranges.clear();
        let mut start = 0usize;
        for end in columns::u32s(&batch.body_ends) {
            self.body_starts.push(start);
            start = end as usize;
        }
        let mut start = 0usize;
        for index in 0..count {
            self.key_starts.push(start);
            start = u32_at(&batch.key_ends, index).map_or(start, |end| end as usize);
        }
        self.sorted = batch.properties.is_sorted_by_key(|p| p.event);
        if !self.sorted {
            self.sorted_properties.clear();
            self.sorted_properties.extend_from_slice(&batch.properties);
            self.sorted_properties.sort_by_key(|p| p.event);
        }
        let properties = if self.sorted {
            &batch.properties
        } else {
            &self.sorted_properties
        };
        self.property_ranges.resize(count, (0, 0));
        let mut next = 0;
        for (index, range) in self.property_ranges.iter_mut().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            while properties.get(next).is_some_and(|p| p.event < index) {
                next += 1;
            }
            let first = next;
            while properties.get(next).is_some_and(|p| p.event == index) {
                next += 1;
            }
            *range = (first, next);
        }
    }

    /// Event `index` of `batch` (which must be the batch last given to [`BatchIndex::build`]);
    /// `None` when the index or its offsets are out of range.
    pub(crate) fn event<'a>(&'a self, batch: &'a EventBatch, index: u32) -> Option<Event<'a>> {
        let i = index as usize;
        let body = batch
            .bodies
            .get(*self.body_starts.get(i)?..u32_at(&batch.body_ends, i)? as usize)?;
        let key_end =
            u32_at(&batch.key_ends, i).map_or(*self.key_starts.get(i)?, |end| end as usize);
        let key = batch
            .keys
            .get(*self.key_starts.get(i)?..key_end)
            .unwrap_or_default();
        let (first, end) = *self.property_ranges.get(i)?;
        let properties = if self.sorted {
            &batch.properties
        } else {
            &self.sorted_properties
        };
        Some(Event {
            body,
            key,
            properties: properties.get(first..end).unwrap_or_default(),
            time: s64_at(&batch.event_times, i).unwrap_or_default(),
            enqueued_time: s64_at(&batch.enqueued_times, i).unwrap_or_default(),
            position: u64_at(&batch.positions, i).unwrap_or_default(),
            partition: batch.partition,
            source: source_of(batch, i),
            // `None` when the host sent no projection the SDK can use.
            projected: BatchProjection::of(batch).and_then(|p| p.event(i)),
        })
    }
}

/// The source name of event `index` of `batch`; empty when the batch does not say (a host older
/// than the `sources` lists, or an index out of range).
fn source_of(batch: &EventBatch, index: usize) -> &str {
    u16_at(&batch.event_sources, index)
        .and_then(|source| batch.sources.get(usize::from(source)))
        .map_or("", String::as_str)
}
