//! Health alerts: thresholds on consumer lag, error rate and throughput drop, as the seeds set in
//! Azure Monitor and Fabric Activator. Every `interval` the monitor samples the status registry;
//! a threshold that becomes crossed emits a `firing` alert event to the configured sink, and one
//! that stops being crossed emits `resolved`. Nothing is emitted while the state does not change.
//!
//! The alert events are JSON objects:
//!
//! ```json
//! {"alert":"error_rate","state":"firing","pipeline":"telemetry","value":0.42,"threshold":0.1,
//!  "at":"2026-11-22T10:00:00.000Z","message":"..."}
//! ```
//!
//! They are written like any pipeline's records, through a writer of the sink for the pseudo
//! pipeline `_health` whose progress is checkpointed, so a sink with exactly-once delivery (file,
//! Delta) holds each alert once across restarts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::HealthConfig;
use crate::event::{Event, PartitionId, now_millis};
use crate::metrics::{Metrics, names};
use crate::sink::{Sink, WriterScope};
use crate::status::ServiceStatus;

/// The pseudo pipeline the alert writer and its checkpoint are named after.
pub const HEALTH_PIPELINE: &str = "_health";

/// The thresholds, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Alert above this consumer lag, per partition.
    pub max_lag: Option<u64>,
    /// Alert above this share of dead letters per event in, per pipeline and interval.
    pub max_error_ratio: Option<f64>,
    /// Alert below this fraction of the baseline throughput, per pipeline.
    pub min_throughput_ratio: Option<f64>,
    /// Intervals in the throughput baseline.
    pub baseline_intervals: usize,
}

impl From<&HealthConfig> for Thresholds {
    fn from(config: &HealthConfig) -> Self {
        Thresholds {
            max_lag: config.max_lag,
            max_error_ratio: config.max_error_ratio,
            min_throughput_ratio: config.min_throughput_ratio,
            baseline_intervals: config.baseline_intervals.max(1),
        }
    }
}

/// Cumulative counts of one pipeline at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineSample {
    /// Events read so far.
    pub events_in: u64,
    /// Dead letters so far.
    pub dead_letters: u64,
    /// Consumer lag per partition, where known.
    pub lag: BTreeMap<PartitionId, u64>,
}

/// Every pipeline at one instant.
pub type Sample = BTreeMap<String, PipelineSample>;

/// The sample of the status registry now.
pub fn sample(status: &ServiceStatus) -> Sample {
    status
        .pipelines()
        .into_iter()
        .map(|pipeline| {
            let mut sample = PipelineSample::default();
            for partition in &pipeline.partitions {
                sample.events_in += partition.events_in;
                sample.dead_letters += partition.dead_letters;
                if let Some(lag) = partition.lag {
                    sample.lag.insert(partition.partition, lag);
                }
            }
            (pipeline.pipeline, sample)
        })
        .collect()
}

/// Which threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A partition's consumer lag is above `max_lag`.
    ConsumerLag,
    /// A pipeline's dead letters per event in are above `max_error_ratio`.
    ErrorRate,
    /// A pipeline's throughput fell below `min_throughput_ratio` of its baseline.
    ThroughputDrop,
}

/// Whether an alert starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The threshold is crossed.
    Firing,
    /// It no longer is.
    Resolved,
}

/// One alert event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Which threshold.
    pub alert: AlertKind,
    /// Starts or ends.
    pub state: AlertState,
    /// The pipeline.
    pub pipeline: String,
    /// The partition, for lag alerts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionId>,
    /// The measured value (lag, ratio, or events per second).
    pub value: f64,
    /// The threshold it was compared with (for a throughput drop: the baseline times the ratio).
    pub threshold: f64,
    /// When (RFC 3339).
    pub at: String,
    /// For people.
    pub message: String,
}

type AlertKey = (AlertKind, String, Option<PartitionId>);

/// Evaluates samples against the thresholds; pure, so that it is tested without I/O.
#[derive(Debug)]
pub struct HealthMonitor {
    thresholds: Thresholds,
    previous: Option<Sample>,
    rates: BTreeMap<String, VecDeque<f64>>,
    firing: BTreeSet<AlertKey>,
}

impl HealthMonitor {
    /// A monitor with nothing seen yet.
    pub fn new(thresholds: Thresholds) -> Self {
        HealthMonitor {
            thresholds,
            previous: None,
            rates: BTreeMap::new(),
            firing: BTreeSet::new(),
        }
    }

    /// The alerts that start or end with `sample`, taken `seconds` after the previous one.
    pub fn evaluate(&mut self, sample: Sample, seconds: f64, at: &str) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let previous = self.previous.replace(sample.clone()).unwrap_or_default();
        for (pipeline, now) in &sample {
            if let Some(max_lag) = self.thresholds.max_lag {
                for (partition, lag) in &now.lag {
                    let crossed = *lag > max_lag;
                    let message = format!(
                        "consumer lag of pipeline `{pipeline}` partition {partition} is {lag} (threshold {max_lag})"
                    );
                    self.transition(
                        &mut alerts,
                        (AlertKind::ConsumerLag, pipeline.clone(), Some(*partition)),
                        crossed,
                        (*lag as f64, max_lag as f64),
                        message,
                        at,
                    );
                }
            }
            let before = previous.get(pipeline).cloned().unwrap_or_default();
            let events = now.events_in.saturating_sub(before.events_in);
            let dead = now.dead_letters.saturating_sub(before.dead_letters);
            if let Some(max_ratio) = self.thresholds.max_error_ratio
                && events > 0
            {
                let ratio = dead as f64 / events as f64;
                let message = format!(
                    "pipeline `{pipeline}`: {dead} of {events} events went to the dead letters in the last interval ({ratio:.3}, threshold {max_ratio})"
                );
                self.transition(
                    &mut alerts,
                    (AlertKind::ErrorRate, pipeline.clone(), None),
                    ratio > max_ratio,
                    (ratio, max_ratio),
                    message,
                    at,
                );
            }
            if let Some(min_ratio) = self.thresholds.min_throughput_ratio
                && seconds > 0.0
                && self.previous_had(pipeline, &previous)
            {
                let rate = events as f64 / seconds;
                let key = (AlertKind::ThroughputDrop, pipeline.clone(), None);
                let history = self.rates.entry(pipeline.clone()).or_default();
                let baseline = if history.is_empty() {
                    None
                } else {
                    Some(history.iter().sum::<f64>() / history.len() as f64)
                };
                if let Some(baseline) = baseline.filter(|b| *b > 0.0) {
                    let limit = baseline * min_ratio;
                    let message = format!(
                        "throughput of pipeline `{pipeline}` is {rate:.1} events/s, below {min_ratio} of its baseline of {baseline:.1} events/s"
                    );
                    self.transition(
                        &mut alerts,
                        key.clone(),
                        rate < limit,
                        (rate, limit),
                        message,
                        at,
                    );
                }
                // While the throughput is down, the baseline stays what it was before the drop.
                if !self.firing.contains(&key) {
                    let history = self.rates.entry(pipeline.clone()).or_default();
                    history.push_back(rate);
                    while history.len() > self.thresholds.baseline_intervals {
                        history.pop_front();
                    }
                }
            }
        }
        alerts
    }

    fn previous_had(&self, pipeline: &str, previous: &Sample) -> bool {
        previous.contains_key(pipeline)
    }

    fn transition(
        &mut self,
        alerts: &mut Vec<Alert>,
        key: AlertKey,
        crossed: bool,
        (value, threshold): (f64, f64),
        message: String,
        at: &str,
    ) {
        let was = self.firing.contains(&key);
        if crossed == was {
            return;
        }
        let state = if crossed {
            self.firing.insert(key.clone());
            AlertState::Firing
        } else {
            self.firing.remove(&key);
            AlertState::Resolved
        };
        alerts.push(Alert {
            alert: key.0,
            state,
            pipeline: key.1,
            partition: key.2,
            value,
            threshold,
            at: at.to_owned(),
            message,
        });
    }
}

/// Why the health monitor could not start.
#[derive(Debug, thiserror::Error)]
#[error("health alerts: {0}")]
pub struct HealthError(String);

/// Samples `status` every interval and writes the alerts to `sink`, until the task is aborted.
pub async fn run(
    config: HealthConfig,
    sink: Arc<dyn Sink>,
    checkpoints: Arc<dyn CheckpointStore>,
    status: ServiceStatus,
    metrics: Metrics,
) -> Result<(), HealthError> {
    let scope = WriterScope {
        pipeline: HEALTH_PIPELINE.into(),
        partition: 0,
    };
    let checkpoint = checkpoints
        .load(HEALTH_PIPELINE, 0)
        .await
        .map_err(|e| HealthError(e.to_string()))?
        .unwrap_or_default();
    let sink_name = config.sink.clone();
    let mut writer = sink
        .open_writer(&scope, checkpoint.sinks.get(&sink_name))
        .await
        .map_err(|e| HealthError(e.to_string()))?;
    let mut position = checkpoint.position.unwrap_or(0);
    let mut monitor = HealthMonitor::new(Thresholds::from(&config));
    let mut ticker = tokio::time::interval(config.interval.get());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // The first evaluation compares with zero: it covers everything since the pipelines started.
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let seconds = last.elapsed().as_secs_f64();
        last = Instant::now();
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let alerts = monitor.evaluate(sample(&status), seconds, &at);
        if alerts.is_empty() {
            continue;
        }
        let mut records = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            let state = match alert.state {
                AlertState::Firing => "firing",
                AlertState::Resolved => "resolved",
            };
            let kind = match alert.alert {
                AlertKind::ConsumerLag => "consumer_lag",
                AlertKind::ErrorRate => "error_rate",
                AlertKind::ThroughputDrop => "throughput_drop",
            };
            metrics.add(
                names::HEALTH_ALERTS,
                &[("alert", kind), ("state", state)],
                1,
            );
            tracing::warn!(alert = kind, state, pipeline = %alert.pipeline, "{}", alert.message);
            // Positions only increase, across restarts too (the Delta sink's transactions rely on
            // it): the clock, or one past the last.
            position = (position + 1).max(u64::try_from(now_millis()).unwrap_or(0));
            let body = serde_json::to_vec(alert).unwrap_or_default();
            let mut event = Event::new(0, position, body);
            event.key = Some(alert.pipeline.clone().into_bytes().into());
            records.push(event);
        }
        let outcome = async {
            let refused = writer.write(records).await?;
            for refusal in refused {
                tracing::error!(sink = %sink_name, reason = %refusal.reason, "the health sink refused an alert");
            }
            writer.flush().await
        }
        .await;
        match outcome {
            Ok(progress) => {
                let mut checkpoint = Checkpoint {
                    position: Some(position),
                    written_at: now_millis(),
                    ..Checkpoint::default()
                };
                checkpoint.sinks.insert(sink_name.clone(), progress);
                if let Err(e) = checkpoints.save(HEALTH_PIPELINE, 0, &checkpoint).await {
                    tracing::error!(error = %e, "cannot checkpoint the health alerts");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot write health alerts to their sink"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(pipeline: &str, events_in: u64, dead_letters: u64, lag: Option<u64>) -> Sample {
        let mut sample = PipelineSample {
            events_in,
            dead_letters,
            ..PipelineSample::default()
        };
        if let Some(lag) = lag {
            sample.lag.insert(0, lag);
        }
        BTreeMap::from([(pipeline.to_owned(), sample)])
    }

    fn kinds(alerts: &[Alert]) -> Vec<(AlertKind, AlertState)> {
        alerts.iter().map(|a| (a.alert, a.state)).collect()
    }

    #[test]
    fn lag_fires_once_and_resolves() {
        let mut monitor = HealthMonitor::new(Thresholds {
            max_lag: Some(100),
            max_error_ratio: None,
            min_throughput_ratio: None,
            baseline_intervals: 3,
        });
        assert!(
            monitor
                .evaluate(one("p", 0, 0, Some(5)), 1.0, "t")
                .is_empty()
        );
        let alerts = monitor.evaluate(one("p", 10, 0, Some(500)), 1.0, "t");
        assert_eq!(
            kinds(&alerts),
            [(AlertKind::ConsumerLag, AlertState::Firing)]
        );
        assert_eq!(alerts[0].value, 500.0);
        assert_eq!(alerts[0].partition, Some(0));
        assert!(
            monitor
                .evaluate(one("p", 20, 0, Some(900)), 1.0, "t")
                .is_empty(),
            "no repeat"
        );
        let alerts = monitor.evaluate(one("p", 30, 0, Some(100)), 1.0, "t");
        assert_eq!(
            kinds(&alerts),
            [(AlertKind::ConsumerLag, AlertState::Resolved)]
        );
    }

    #[test]
    fn error_rate_is_measured_per_interval() {
        let mut monitor = HealthMonitor::new(Thresholds {
            max_lag: None,
            max_error_ratio: Some(0.1),
            min_throughput_ratio: None,
            baseline_intervals: 3,
        });
        monitor.evaluate(one("p", 0, 0, None), 1.0, "t");
        // 5 of 100 (0.05): fine; then 30 of 100 in the next interval (0.3): fires.
        assert!(
            monitor
                .evaluate(one("p", 100, 5, None), 1.0, "t")
                .is_empty()
        );
        let alerts = monitor.evaluate(one("p", 200, 35, None), 1.0, "t");
        assert_eq!(kinds(&alerts), [(AlertKind::ErrorRate, AlertState::Firing)]);
        assert!((alerts[0].value - 0.3).abs() < 1e-9);
        let alerts = monitor.evaluate(one("p", 300, 35, None), 1.0, "t");
        assert_eq!(
            kinds(&alerts),
            [(AlertKind::ErrorRate, AlertState::Resolved)]
        );
    }

    #[test]
    fn throughput_drop_against_the_baseline_before_it() {
        let mut monitor = HealthMonitor::new(Thresholds {
            max_lag: None,
            max_error_ratio: None,
            min_throughput_ratio: Some(0.5),
            baseline_intervals: 3,
        });
        let mut total = 0;
        monitor.evaluate(one("p", total, 0, None), 1.0, "t");
        for _ in 0..3 {
            total += 1000;
            assert!(
                monitor
                    .evaluate(one("p", total, 0, None), 1.0, "t")
                    .is_empty()
            );
        }
        // 400/s against a baseline of 1000/s: below half.
        total += 400;
        let alerts = monitor.evaluate(one("p", total, 0, None), 1.0, "t");
        assert_eq!(
            kinds(&alerts),
            [(AlertKind::ThroughputDrop, AlertState::Firing)]
        );
        assert_eq!(alerts[0].threshold, 500.0);
        // Still down: no repeat, and the baseline does not sink with it.
        for _ in 0..5 {
            assert!(
                monitor
                    .evaluate(one("p", total, 0, None), 1.0, "t")
                    .is_empty()
            );
        }
        total += 900;
        let alerts = monitor.evaluate(one("p", total, 0, None), 1.0, "t");
        assert_eq!(
            kinds(&alerts),
            [(AlertKind::ThroughputDrop, AlertState::Resolved)]
        );
    }
}
