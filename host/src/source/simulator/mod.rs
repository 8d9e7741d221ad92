//! The telemetry simulator (placeholder).

use async_trait::async_trait;

use super::{PartitionReader, PartitionStart, Source, SourceError};
use crate::checkpoint::CheckpointStore;
use crate::config::SimulatorSourceConfig;

/// The event time of the simulator's first reading, in milliseconds since the Unix epoch.
pub async fn resolve_start_time(
    _name: &str,
    _config: &SimulatorSourceConfig,
    _checkpoints: &dyn CheckpointStore,
) -> Result<i64, String> {
    Ok(0)
}

/// Simulated devices.
#[derive(Debug)]
pub struct SimulatorSource {
    name: String,
    config: SimulatorSourceConfig,
}

impl SimulatorSource {
    /// A simulator whose first reading is at `start_time`.
    pub fn new(name: &str, config: SimulatorSourceConfig, _start_time: i64) -> Self {
        SimulatorSource {
            name: name.to_owned(),
            config,
        }
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
        _starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        Err(SourceError::Start {
            source_name: self.name.clone(),
            reason: "not implemented yet".into(),
        })
    }
}
