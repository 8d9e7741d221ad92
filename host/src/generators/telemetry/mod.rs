//! The telemetry simulator: IoT devices reporting temperature, humidity, pressure, battery and
//! signal strength, as the streaming-at-scale samples generate them.
//!
//! Reading `r` (0, 1, 2, ...) comes from device `r % devices` at event time
//! `start_time + r * reading_interval / devices`, and everything in it is a pure function of the
//! seed and `r` (see `model`). Its position is `2r`; a reading chosen as a duplicate is sent a
//! second time, identical, at `2r + 1`. After a crash the generator restarts from the oldest
//! checkpointed position and regenerates exactly the same events.

pub mod config;
mod model;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::checkpoint::CheckpointStore;
use crate::config::SimulatorSourceConfig;
use crate::event::{Event, Position, now_millis};
use crate::generators::pacing::{self, GeneratorSource, Output, Steps};
use crate::source::SourceErrorKind;
use model::{Device, Model};

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
) -> Result<i64, (SourceErrorKind, String)> {
    let start = pacing::resolve_start_time(
        &start_time_key(name),
        config.start_time.as_deref(),
        checkpoints,
    )
    .await?;
    if start.chosen {
        tracing::info!(source = %name, start_time = start.millis, "simulator start time chosen and saved");
    }
    Ok(start.millis)
}

/// Simulated devices.
pub type SimulatorSource = GeneratorSource<Model>;

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
        GeneratorSource {
            name: name.to_owned(),
            partitions: config.partitions,
            rate: config.rate,
            limit: config.max_events,
            model: Arc::new(model),
        }
    }
}

impl Steps for Model {
    fn check(&self, partitions: u32) -> Result<(), String> {
        if self.devices.is_empty() {
            return Err("`devices` must be at least 1".to_owned());
        }
        if partitions == 0 {
            return Err("`partitions` must be at least 1".to_owned());
        }
        for (field, ratio) in [
            ("jump_ratio", self.jump_ratio),
            ("duplicate_ratio", self.duplicate_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(format!("`{field}` must be between 0 and 1, found {ratio}"));
            }
        }
        Ok(())
    }

    fn steps(&self, after: Option<Position>, limit: Option<u64>) -> Range<u64> {
        // Reading r has positions 2r and 2r + 1: resuming after p starts again at reading p / 2.
        after.map_or(0, |p| p / 2)..limit.unwrap_or(u64::MAX)
    }

    fn starting(&self, source: &str, after: Option<Position>) {
        tracing::debug!(source = %source, resume_after = ?after, "simulator starting");
    }

    /// Sends reading `r` (and its duplicate), skipping positions every checkpoint covers.
    /// False once nobody reads any more.
    async fn emit(&self, r: u64, _limit: Option<u64>, out: &Output) -> bool {
        let reading = self.reading(r);
        let device = &self.devices[reading.device];
        let mut body = Vec::with_capacity(288);
        self.write_body(&reading, &mut body);
        let body = Bytes::from(body);
        let position = r.saturating_mul(2);
        let enqueued_time = now_millis();
        let event = |position| Event {
            partition: device.partition,
            source: crate::event::no_source(),
            position,
            key: Some(device.key.clone()),
            event_time: Some(reading.time),
            enqueued_time,
            properties: Vec::new(),
            body: body.clone(),
        };
        if out.wanted(position) && !out.send(event(position)).await {
            return false;
        }
        if reading.duplicate && out.wanted(position + 1) && !out.send(event(position + 1)).await {
            return false;
        }
        true
    }
}
