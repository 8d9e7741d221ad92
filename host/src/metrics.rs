//! Process-wide counters, labelled by pipeline, partition, stage or sink.
//!
//! Workers add to them once per batch, so a mutex-protected map is cheap enough and keeps the
//! registry simple to read and to render.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A metric name with its labels, in a fixed order.
pub type MetricKey = (&'static str, Vec<(&'static str, String)>);

/// Counters and gauges of one process.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<MetricKey, f64>>>,
}

impl Metrics {
    /// A new, empty registry.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Adds `delta` to counter `name` with `labels`.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], delta: u64) {
        if delta == 0 {
            return;
        }
        if let Ok(mut map) = self.inner.lock() {
            *map.entry(key(name, labels)).or_default() += delta as f64;
        }
    }

    /// Sets gauge `name` with `labels` to `value`.
    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(key(name, labels), value);
        }
    }

    /// The current value of `name` with exactly `labels` (0 when never set).
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
        self.inner
            .lock()
            .ok()
            .and_then(|map| map.get(&key(name, labels)).copied())
            .unwrap_or(0.0)
    }

    /// The sum of `name` over every label set.
    pub fn total(&self, name: &str) -> f64 {
        self.inner
            .lock()
            .map(|map| {
                map.iter()
                    .filter(|((n, _), _)| *n == name)
                    .map(|(_, v)| v)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// The sum of `name` over the label sets that have `label` = `value`.
    pub fn total_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.inner
            .lock()
            .map(|map| {
                map.iter()
                    .filter(|((n, labels), _)| {
                        *n == name && labels.iter().any(|(k, v)| *k == label && v == value)
                    })
                    .map(|(_, v)| v)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// Every metric, for rendering.
    pub fn snapshot(&self) -> Vec<(MetricKey, f64)> {
        self.inner
            .lock()
            .map(|map| map.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> MetricKey {
    (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
}

/// Names of the metrics Weir keeps.
pub mod names {
    /// Events read from a source (labels: pipeline, partition).
    pub const EVENTS_IN: &str = "weir_events_in_total";
    /// Records written to a sink (labels: pipeline, partition, sink).
    pub const RECORDS_OUT: &str = "weir_records_out_total";
    /// Events sent to the dead-letter sink (labels: pipeline, partition, reason kind).
    pub const DEAD_LETTERS: &str = "weir_dead_letters_total";
    /// Counters added by plugins (labels: pipeline, stage, name).
    pub const PLUGIN_COUNTER: &str = "weir_plugin_counter_total";
    /// Checkpoints written (labels: pipeline, partition).
    pub const CHECKPOINTS: &str = "weir_checkpoints_total";
    /// Last checkpointed position (labels: pipeline, partition).
    pub const CHECKPOINT_POSITION: &str = "weir_checkpoint_position";
    /// Events in the partition not read yet, when the source knows its end (labels: pipeline,
    /// partition), refreshed at each checkpoint: Event Hubs from the partition properties, Kafka
    /// from the high watermark.
    pub const SOURCE_LAG: &str = "weir_source_lag";
    /// Events beyond an event-time tolerance, adjusted or dropped (labels: pipeline, partition,
    /// tolerance = `out_of_order` | `late_arrival`, policy = `adjust` | `drop`).
    pub const LATE_EVENTS: &str = "weir_late_events_total";
    /// A partition's watermark, in milliseconds since the Unix epoch (labels: pipeline, partition).
    pub const WATERMARK: &str = "weir_watermark_ms";
    /// The pipeline watermark: the minimum over the partitions that are not idle (labels:
    /// pipeline).
    pub const PIPELINE_WATERMARK: &str = "weir_pipeline_watermark_ms";
    /// Events waiting in a partition's reorder buffer (labels: pipeline, partition).
    pub const REORDER_BUFFERED: &str = "weir_reorder_buffered_events";
    /// Times an idle partition advanced its watermark to the pipeline's (labels: pipeline,
    /// partition).
    pub const IDLE_ADVANCES: &str = "weir_idle_watermark_advances_total";
    /// Events a deduplication stage dropped (labels: pipeline, stage, partition).
    pub const DUPLICATES: &str = "weir_duplicates_total";
    /// Pairs a join made (labels: pipeline, stage, partition).
    pub const JOIN_PAIRS: &str = "weir_join_pairs_total";
    /// Events a join found no match for within its bound (labels: pipeline, stage, partition,
    /// side = `left` | `right`, policy = `emit` | `drop`).
    pub const JOIN_UNMATCHED: &str = "weir_join_unmatched_total";
    /// Reference tables loaded again after their source changed (labels: pipeline, stage, table).
    pub const REFERENCE_RELOADS: &str = "weir_reference_reloads_total";
    /// Windows closed and finished (labels: pipeline, stage, partition).
    pub const WINDOWS_CLOSED: &str = "weir_windows_closed_total";
    /// Records that came for a window that had already closed (labels: pipeline, stage,
    /// partition).
    pub const WINDOW_LATE_EVENTS: &str = "weir_window_late_events_total";
    /// Partitions this process owns, for sources shared through ownership claims (labels:
    /// pipeline).
    pub const OWNED_PARTITIONS: &str = "weir_owned_partitions";
    /// Partitions acquired, lost or released (labels: pipeline, change).
    pub const OWNERSHIP_CHANGES: &str = "weir_ownership_changes_total";
}
