//! Process-wide counters, gauges and histograms, labelled by pipeline, partition, stage or sink,
//! rendered in the Prometheus text format by [`Metrics::render`].
//!
//! Workers add to them once per batch, so a mutex-protected map is cheap enough and keeps the
//! registry simple to read and to render. Every metric Weir keeps is described in [`names`] (name,
//! kind, help); the renderer declares each family even before it has a sample, so that a scrape
//! shows what exists.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// A metric name with its labels, in a fixed order.
pub type MetricKey = (&'static str, Vec<(&'static str, String)>);

/// Upper bounds of the buckets of every histogram, in seconds: from 50 µs (a small batch through a
/// light plugin) to 10 s (past the default call deadline).
pub const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// One histogram's counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each of [`BUCKETS`] (not cumulative).
    pub buckets: [u64; BUCKETS.len()],
    /// Observations above the last bucket.
    pub overflow: u64,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        match BUCKETS.iter().position(|bound| value <= *bound) {
            Some(index) => self.buckets[index] += 1,
            None => self.overflow += 1,
        }
        self.sum += value;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Registry {
    values: BTreeMap<MetricKey, f64>,
    histograms: BTreeMap<MetricKey, Histogram>,
}

/// Counters, gauges and histograms of one process.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A new, empty registry.
    pub fn new() -> Self {
        Metrics::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut registry| f(&mut registry))
    }

    /// Adds `delta` to counter `name` with `labels`.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], delta: u64) {
        if delta == 0 {
            return;
        }
        self.with(|r| *r.values.entry(key(name, labels)).or_default() += delta as f64);
    }

    /// Makes counter `name` with `labels` appear at 0 until it counts something, so that a
    /// dashboard or an alert rule sees the series from the start (Prometheus' advice for
    /// label values known in advance).
    pub fn declare(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.with(|r| {
            r.values.entry(key(name, labels)).or_default();
        });
    }

    /// Sets gauge `name` with `labels` to `value`.
    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.with(|r| r.values.insert(key(name, labels), value));
    }

    /// Records one observation of histogram `name` (in seconds).
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.with(|r| {
            r.histograms
                .entry(key(name, labels))
                .or_default()
                .observe(value)
        });
    }

    /// The current value of `name` with exactly `labels` (0 when never set).
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
        self.with(|r| r.values.get(&key(name, labels)).copied())
            .flatten()
            .unwrap_or(0.0)
    }

    /// The histogram `name` with exactly `labels`, if it has observations.
    pub fn histogram(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Option<Histogram> {
        self.with(|r| r.histograms.get(&key(name, labels)).cloned())
            .flatten()
    }

    /// The sum of `name` over every label set.
    pub fn total(&self, name: &str) -> f64 {
        self.with(|r| {
            r.values
                .iter()
                .filter(|((n, _), _)| *n == name)
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0.0)
    }

    /// The sum of `name` over the label sets that include `label = value`.
    pub fn total_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.with(|r| {
            r.values
                .iter()
                .filter(|((n, labels), _)| {
                    *n == name && labels.iter().any(|(k, v)| *k == label && v == value)
                })
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0.0)
    }

    /// Every counter and gauge, for rendering.
    pub fn snapshot(&self) -> Vec<(MetricKey, f64)> {
        self.with(|r| r.values.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4), followed by the
    /// `extra` gauges computed at scrape time (such as checkpoint ages).
    pub fn render(&self, extra: &[(MetricKey, f64)]) -> String {
        let (values, histograms) = self
            .with(|r| (r.values.clone(), r.histograms.clone()))
            .unwrap_or_default();
        let mut families: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for descriptor in names::ALL {
            families.entry(descriptor.name).or_default();
        }
        let extra_values = extra.iter().map(|(k, v)| (k, v));
        for ((name, labels), value) in values.iter().chain(extra_values) {
            families.entry(name).or_default().push(format!(
                "{name}{} {}",
                label_text(labels, None),
                number(*value)
            ));
        }
        for ((name, labels), histogram) in &histograms {
            let lines = families.entry(name).or_default();
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                cumulative += count;
                lines.push(format!(
                    "{name}_bucket{} {cumulative}",
                    label_text(labels, Some(&number(*bound)))
                ));
            }
            lines.push(format!(
                "{name}_bucket{} {}",
                label_text(labels, Some("+Inf")),
                histogram.count
            ));
            lines.push(format!(
                "{name}_sum{} {}",
                label_text(labels, None),
                number(histogram.sum)
            ));
            lines.push(format!(
                "{name}_count{} {}",
                label_text(labels, None),
                histogram.count
            ));
        }
        let mut out = String::new();
        for (name, lines) in families {
            let descriptor = names::ALL.iter().find(|d| d.name == name);
            let (kind, help) =
                descriptor.map_or(("untyped", "A Weir metric."), |d| (d.kind.as_str(), d.help));
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> MetricKey {
    (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
}

fn label_text(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: name, kind and help text.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// Name.
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Help text.
    pub help: &'static str,
}

/// Names of the metrics Weir keeps.
pub mod names {
    use super::{Descriptor, Kind};

    /// Events read from a source (labels: pipeline, source, partition).
    pub const EVENTS_IN: &str = "weir_events_in_total";
    /// Records written to a sink (labels: pipeline, partition, sink).
    pub const RECORDS_OUT: &str = "weir_records_out_total";
    /// Events entering a stage (labels: pipeline, stage, partition).
    pub const STAGE_EVENTS_IN: &str = "weir_stage_events_in_total";
    /// Records a stage emitted (labels: pipeline, stage, partition).
    pub const STAGE_RECORDS_OUT: &str = "weir_stage_records_out_total";
    /// Events sent to the dead-letter sink (labels: pipeline, partition, reason kind).
    pub const DEAD_LETTERS: &str = "weir_dead_letters_total";
    /// Counters added by plugins (labels: pipeline, stage, name).
    pub const PLUGIN_COUNTER: &str = "weir_plugin_counter_total";
    /// Time of one call into a plugin, in seconds (labels: pipeline, stage).
    pub const PLUGIN_CALL_SECONDS: &str = "weir_plugin_call_seconds";
    /// Calls that trapped (labels: pipeline, stage, version).
    pub const PLUGIN_TRAPS: &str = "weir_plugin_traps_total";
    /// Activations of plugin versions (labels: pipeline, stage, cause).
    pub const PLUGIN_SWAPS: &str = "weir_plugin_swaps_total";
    /// Automatic rollbacks (labels: pipeline, stage).
    pub const PLUGIN_ROLLBACKS: &str = "weir_plugin_rollbacks_total";
    /// Refused plugin versions (labels: pipeline, stage, origin).
    pub const PLUGIN_REFUSED: &str = "weir_plugin_refused_total";
    /// 1 for the active version of each stage, 0 for versions that were (labels: pipeline, stage,
    /// version).
    pub const PLUGIN_ACTIVE: &str = "weir_plugin_active";
    /// Events whose time an `adjust` policy changed, out of order or arriving late (labels:
    /// pipeline, partition).
    pub const ADJUSTED_EVENTS: &str = "weir_adjusted_events_total";
    /// Wall-clock time minus the partition's watermark, in seconds (labels: pipeline, partition).
    pub const WATERMARK_DELAY: &str = "weir_watermark_delay_seconds";
    /// Checkpoints written (labels: pipeline, partition).
    pub const CHECKPOINTS: &str = "weir_checkpoints_total";
    /// Last checkpointed position (labels: pipeline, partition).
    pub const CHECKPOINT_POSITION: &str = "weir_checkpoint_position";
    /// Events beyond an event-time tolerance, adjusted or dropped (labels: pipeline, partition,
    /// tolerance = `out_of_order` | `late_arrival`, policy = `adjust` | `drop`).
    pub const LATE_EVENTS: &str = "weir_late_events_total";
    /// The share (0 to 1) of a partition's events since the worker started that arrived behind
    /// its watermark and were adjusted or dropped by the out-of-order policy (labels: pipeline,
    /// source, partition).
    pub const OUT_OF_ORDER_SHARE: &str = "weir_out_of_order_share";
    /// Times that share went over the pipeline's `event_time.max_out_of_order_share` (labels:
    /// pipeline, source, partition); each is logged as a warning.
    pub const OUT_OF_ORDER_WARNINGS: &str = "weir_out_of_order_warnings_total";
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
    /// Seconds since the partition's last checkpoint (labels: pipeline, partition).
    pub const CHECKPOINT_AGE: &str = "weir_checkpoint_age_seconds";
    /// What the source holds beyond the partition's position, in the source's units (labels:
    /// pipeline, partition); only for sources that know their end.
    pub const CONSUMER_LAG: &str = "weir_consumer_lag";
    /// Time to process one batch, from decode to the sinks, in seconds (labels: pipeline).
    pub const BATCH_SECONDS: &str = "weir_batch_seconds";
    /// Health alerts raised or resolved (labels: alert, state).
    pub const HEALTH_ALERTS: &str = "weir_health_alerts_total";
    /// Partitions this process owns, for sources shared through ownership claims (labels:
    /// pipeline).
    pub const OWNED_PARTITIONS: &str = "weir_owned_partitions";
    /// Partitions acquired, lost or released (labels: pipeline, change).
    pub const OWNERSHIP_CHANGES: &str = "weir_ownership_changes_total";
    /// Connections over a listener's `max_connections`, answered 503 and closed (labels:
    /// listener = `admin` | `source:NAME`).
    pub const HTTP_CONNECTIONS_REFUSED: &str = "weir_http_connections_refused_total";
    /// TLS handshakes that failed or timed out (labels: listener).
    pub const HTTP_TLS_FAILURES: &str = "weir_http_tls_failures_total";
    /// Requests refused for their credential (labels: listener, reason = `missing` | `invalid`).
    pub const HTTP_AUTH_REFUSED: &str = "weir_http_auth_refused_total";
    /// Ingest requests refused by a limit (labels: source, reason = `body_timeout` |
    /// `wal_busy` | `backlog`).
    pub const HTTP_REQUESTS_LIMITED: &str = "weir_http_requests_limited_total";
    /// What a Delta sink did to its table besides appending rows (labels: sink, action:
    /// `compactions`, `files_compacted`, `files_written`, `compaction_conflicts`, `checkpoints`,
    /// `files_vacuumed`, `columns_added`, `extra_fields_ignored`).
    pub const DELTA_MAINTENANCE: &str = "weir_delta_maintenance_total";

    /// Every family, with its kind and help.
    pub const ALL: &[Descriptor] = &[
        d(EVENTS_IN, Kind::Counter, "Events read from a source."),
        d(RECORDS_OUT, Kind::Counter, "Records written to a sink."),
        d(STAGE_EVENTS_IN, Kind::Counter, "Events entering a stage."),
        d(
            STAGE_RECORDS_OUT,
            Kind::Counter,
            "Records emitted by a stage.",
        ),
        d(
            DEAD_LETTERS,
            Kind::Counter,
            "Events sent to the dead-letter sink, by kind.",
        ),
        d(PLUGIN_COUNTER, Kind::Counter, "Counters added by plugins."),
        d(
            PLUGIN_CALL_SECONDS,
            Kind::Histogram,
            "Time of one call into a plugin (one batch or, when isolating a trap, one event).",
        ),
        d(
            PLUGIN_TRAPS,
            Kind::Counter,
            "Plugin calls that trapped (panic, deadline, memory limit, invalid output).",
        ),
        d(
            PLUGIN_SWAPS,
            Kind::Counter,
            "Activations of plugin versions, by cause.",
        ),
        d(
            PLUGIN_ROLLBACKS,
            Kind::Counter,
            "Automatic rollbacks of plugin versions that failed their probation.",
        ),
        d(
            PLUGIN_REFUSED,
            Kind::Counter,
            "Plugin versions refused (invalid component, wrong world).",
        ),
        d(
            PLUGIN_ACTIVE,
            Kind::Gauge,
            "1 for the active plugin version of a stage, 0 for versions that were active.",
        ),
        d(
            LATE_EVENTS,
            Kind::Counter,
            "Events beyond an event-time tolerance, adjusted or dropped.",
        ),
        d(
            ADJUSTED_EVENTS,
            Kind::Counter,
            "Events whose event time an adjust policy changed (out of order or arriving late).",
        ),
        d(
            WATERMARK_DELAY,
            Kind::Gauge,
            "Wall-clock time minus the partition's watermark (the latest event time seen), in seconds.",
        ),
        d(CHECKPOINTS, Kind::Counter, "Checkpoints written."),
        d(
            CHECKPOINT_POSITION,
            Kind::Gauge,
            "Last checkpointed source position.",
        ),
        d(
            OUT_OF_ORDER_SHARE,
            Kind::Gauge,
            "Share of a partition's events that arrived behind its watermark (adjusted or dropped).",
        ),
        d(
            OUT_OF_ORDER_WARNINGS,
            Kind::Counter,
            "Times a partition's share of events behind its watermark went over event_time.max_out_of_order_share.",
        ),
        d(
            WATERMARK,
            Kind::Gauge,
            "A partition's watermark, in milliseconds since the Unix epoch.",
        ),
        d(
            PIPELINE_WATERMARK,
            Kind::Gauge,
            "The pipeline watermark (minimum over the partitions that are not idle), in ms.",
        ),
        d(
            REORDER_BUFFERED,
            Kind::Gauge,
            "Events waiting in a partition's reorder buffer.",
        ),
        d(
            IDLE_ADVANCES,
            Kind::Counter,
            "Times an idle partition advanced its watermark to the pipeline's.",
        ),
        d(
            DUPLICATES,
            Kind::Counter,
            "Events a deduplication stage dropped.",
        ),
        d(JOIN_PAIRS, Kind::Counter, "Pairs a join made."),
        d(
            JOIN_UNMATCHED,
            Kind::Counter,
            "Events a join found no match for within its bound.",
        ),
        d(
            REFERENCE_RELOADS,
            Kind::Counter,
            "Reference tables loaded again after their source changed.",
        ),
        d(
            WINDOWS_CLOSED,
            Kind::Counter,
            "Windows closed and finished.",
        ),
        d(
            WINDOW_LATE_EVENTS,
            Kind::Counter,
            "Records that came for a window that had already closed.",
        ),
        d(
            CHECKPOINT_AGE,
            Kind::Gauge,
            "Seconds since the partition's last checkpoint.",
        ),
        d(
            CONSUMER_LAG,
            Kind::Gauge,
            "What the source holds beyond the partition's position, in the source's units.",
        ),
        d(
            BATCH_SECONDS,
            Kind::Histogram,
            "Time to process one batch, from decode to the sinks.",
        ),
        d(
            HEALTH_ALERTS,
            Kind::Counter,
            "Health alerts raised or resolved.",
        ),
        d(
            OWNED_PARTITIONS,
            Kind::Gauge,
            "Partitions this process owns, for sources shared through ownership claims.",
        ),
        d(
            OWNERSHIP_CHANGES,
            Kind::Counter,
            "Partitions acquired, lost or released.",
        ),
        d(
            HTTP_CONNECTIONS_REFUSED,
            Kind::Counter,
            "Connections over a listener's max_connections, answered 503 with Retry-After.",
        ),
        d(
            HTTP_TLS_FAILURES,
            Kind::Counter,
            "TLS handshakes that failed or timed out (plain HTTP sent to a TLS port, for one).",
        ),
        d(
            HTTP_AUTH_REFUSED,
            Kind::Counter,
            "Requests refused 401 for a missing or invalid credential.",
        ),
        d(
            HTTP_REQUESTS_LIMITED,
            Kind::Counter,
            "Ingest requests refused by a limit: a slow body (408), the log writer busy (503), the log full (429).",
        ),
        d(
            DELTA_MAINTENANCE,
            Kind::Counter,
            "What a Delta sink did to its table besides appending rows.",
        ),
    ];

    const fn d(name: &'static str, kind: Kind, help: &'static str) -> Descriptor {
        Descriptor { name, kind, help }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_in_text_format() {
        let metrics = Metrics::new();
        metrics.add(
            names::EVENTS_IN,
            &[("pipeline", "p"), ("partition", "0")],
            3,
        );
        metrics.set(
            names::CONSUMER_LAG,
            &[("pipeline", "p\"q"), ("partition", "1")],
            7.5,
        );
        metrics.observe(
            names::PLUGIN_CALL_SECONDS,
            &[("pipeline", "p"), ("stage", "s")],
            0.0003,
        );
        metrics.observe(
            names::PLUGIN_CALL_SECONDS,
            &[("pipeline", "p"), ("stage", "s")],
            20.0,
        );
        let text = metrics.render(&[(
            (names::CHECKPOINT_AGE, vec![("pipeline", "p".to_owned())]),
            1.5,
        )]);
        assert!(
            text.contains("# TYPE weir_events_in_total counter\n"),
            "{text}"
        );
        assert!(text.contains("weir_events_in_total{pipeline=\"p\",partition=\"0\"} 3\n"));
        assert!(text.contains("weir_consumer_lag{pipeline=\"p\\\"q\",partition=\"1\"} 7.5\n"));
        assert!(text.contains("# TYPE weir_plugin_call_seconds histogram\n"));
        assert!(text.contains(
            "weir_plugin_call_seconds_bucket{pipeline=\"p\",stage=\"s\",le=\"0.00025\"} 0\n"
        ));
        assert!(text.contains(
            "weir_plugin_call_seconds_bucket{pipeline=\"p\",stage=\"s\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "weir_plugin_call_seconds_bucket{pipeline=\"p\",stage=\"s\",le=\"+Inf\"} 2\n"
        ));
        assert!(text.contains("weir_plugin_call_seconds_count{pipeline=\"p\",stage=\"s\"} 2\n"));
        assert!(text.contains("weir_checkpoint_age_seconds{pipeline=\"p\"} 1.5\n"));
        // Families without samples are declared too.
        assert!(text.contains("# TYPE weir_late_events_total counter\n"));
    }
}
