//! The telemetry simulator: IoT devices reporting temperature, humidity, pressure, battery and
//! signal strength, as the streaming-at-scale samples generate them.
//!
//! Reading `r` (0, 1, 2, ...) comes from device `r % devices` at event time
//! `start_time + r * reading_interval / devices`, and everything in it is a pure function of the
//! seed and `r` (see [`model`]). Its position is `2r`; a reading chosen as a duplicate is sent a
//! second time, identical, at `2r + 1`. After a crash the generator restarts from the oldest
//! checkpointed position and regenerates exactly the same events.

pub mod config;
mod model;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};

use crate::checkpoint::CheckpointStore;
use crate::config::SimulatorSourceConfig;
use crate::event::{Event, Position, now_millis};
use crate::source::{Dispatcher, PartitionReader, PartitionStart, Source, SourceError};
use model::{Device, Model};

/// How often a paced simulator sends the readings that have come due.
const PACING_TICK: Duration = Duration::from_millis(10);

/// The checkpoint-store key under which the start time of simulator `name` is kept.
fn start_time_key(name: &str) -> String {
    format!("simulator-{name}-start-time")
}

/// The event time of the simulator's first reading, in milliseconds since the Unix epoch: the
/// configured `start_time`; else the one saved for this source in the checkpoint store; else now
/// (to the whole second), saved there so that a restart replays the same event times.
pub async fn resolve_start_time(
    name: &str,
    config: &SimulatorSourceConfig,
    checkpoints: &dyn CheckpointStore,
) -> Result<i64, String> {
    if let Some(text) = &config.start_time {
        return chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("start_time `{text}` is not an RFC 3339 timestamp: {e}"));
    }
    let key = start_time_key(name);
    let saved = checkpoints
        .load_meta(&key)
        .await
        .map_err(|e| format!("cannot read the saved start time: {e}"))?;
    if let Some(saved) = saved {
        return saved.trim().parse::<i64>().map_err(|e| {
            format!("the start time saved under `{key}` is `{saved}`, not epoch milliseconds: {e}")
        });
    }
    let now = now_millis().div_euclid(1000) * 1000;
    checkpoints
        .save_meta(&key, &now.to_string())
        .await
        .map_err(|e| format!("cannot save the start time: {e}"))?;
    tracing::info!(source = %name, start_time = now, "simulator start time chosen and saved");
    Ok(now)
}

/// Simulated devices.
#[derive(Debug)]
pub struct SimulatorSource {
    name: String,
    config: SimulatorSourceConfig,
    model: Arc<Model>,
}

impl SimulatorSource {
    /// A simulator whose first reading is at `start_time` (epoch milliseconds).
    pub fn new(name: &str, config: SimulatorSourceConfig, start_time: i64) -> Self {
        let devices = (0..config.devices)
            .map(|d| Device::new(config.seed, d, config.partitions))
            .collect();
        let model = Model {
            seed: config.seed,
            devices,
            start_time,
            reading_interval_ms: u64::try_from(config.reading_interval.get().as_millis())
                .unwrap_or(u64::MAX),
            jump_ratio: config.jump_ratio,
            duplicate_ratio: config.duplicate_ratio,
        };
        SimulatorSource {
            name: name.to_owned(),
            config,
            model: Arc::new(model),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.config.devices == 0 {
            return Err("`devices` must be at least 1".to_owned());
        }
        if self.config.partitions == 0 {
            return Err("`partitions` must be at least 1".to_owned());
        }
        for (field, ratio) in [
            ("jump_ratio", self.config.jump_ratio),
            ("duplicate_ratio", self.config.duplicate_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!("`{field}` must be between 0 and 1, found {ratio}"));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for SimulatorSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        self.check().map_err(|reason| SourceError::Start {
            source_name: self.name.clone(),
            reason,
        })?;
        let (dispatcher, readers) = Dispatcher::new(&self.name, self.config.partitions, &starts)?;
        let producer = Producer {
            model: Arc::clone(&self.model),
            rate: self.config.rate,
            max_events: self.config.max_events,
            after: dispatcher.resume_from(),
            dispatcher,
        };
        tracing::debug!(source = %self.name, resume_after = ?producer.after, "simulator starting");
        tokio::spawn(producer.run());
        Ok(readers)
    }
}

/// The task generating readings into the dispatcher.
struct Producer {
    model: Arc<Model>,
    rate: u32,
    max_events: Option<u64>,
    /// Positions up to this one are already covered by every partition's checkpoint.
    after: Option<Position>,
    dispatcher: Dispatcher,
}

impl Producer {
    async fn run(self) {
        // Reading r has positions 2r and 2r + 1: resuming after p starts again at reading p / 2.
        let mut r = self.after.map_or(0, |p| p / 2);
        let end = self.max_events.unwrap_or(u64::MAX);
        if self.rate == 0 {
            // As fast as the readers take them: the dispatcher's bounded channels hold us back.
            while r < end {
                if !self.emit(r).await {
                    return;
                }
                r += 1;
            }
            return;
        }
        let rate = u64::from(self.rate);
        let mut ticks = tokio::time::interval(PACING_TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let started = Instant::now();
        // Readings sent since `started`, as far as pacing is concerned.
        let mut paced: u64 = 0;
        while r < end {
            ticks.tick().await;
            if self.dispatcher.is_closed() {
                return;
            }
            let due =
                u64::try_from(started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000)
                    .unwrap_or(u64::MAX);
            // After a stall (slow readers), catch up by at most one second's worth.
            paced = paced.max(due.saturating_sub(rate));
            while paced < due && r < end {
                if !self.emit(r).await {
                    return;
                }
                paced += 1;
                r += 1;
            }
        }
    }

    /// Sends reading `r` (and its duplicate), skipping positions every checkpoint covers.
    /// False once nobody reads any more.
    async fn emit(&self, r: u64) -> bool {
        let reading = self.model.reading(r);
        let device = &self.model.devices[reading.device];
        let mut body = Vec::with_capacity(288);
        self.model.write_body(&reading, &mut body);
        let body = Bytes::from(body);
        let position = r.saturating_mul(2);
        let enqueued_time = now_millis();
        let event = |position| Event {
            partition: device.partition,
            position,
            key: Some(device.key.clone()),
            event_time: Some(reading.time),
            enqueued_time,
            properties: Vec::new(),
            body: body.clone(),
        };
        let wanted = |position: Position| self.after.is_none_or(|after| position > after);
        if wanted(position) && !self.send(event(position)).await {
            return false;
        }
        if reading.duplicate && wanted(position + 1) && !self.send(event(position + 1)).await {
            return false;
        }
        true
    }

    /// Sends one event; false once every reader is gone.
    async fn send(&self, event: Event) -> bool {
        self.dispatcher.send(event).await || !self.dispatcher.is_closed()
    }
}
