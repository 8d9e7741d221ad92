//! Delta Lake tables (placeholder until the Delta sink lands).

use async_trait::async_trait;

use super::{Sink, SinkError, SinkProgress, SinkWriter, WriterScope};
use crate::config::{DeltaSinkConfig, LoadedConfig};

/// A Delta Lake table.
#[derive(Debug)]
pub struct DeltaSink {
    name: String,
}

impl DeltaSink {
    /// Opens or creates the table.
    pub async fn open(name: &str, _config: &DeltaSinkConfig, _loaded: &LoadedConfig) -> Result<Self, SinkError> {
        Ok(DeltaSink { name: name.to_owned() })
    }
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open_writer(&self, scope: &WriterScope, _progress: Option<&SinkProgress>) -> Result<Box<dyn SinkWriter>, SinkError> {
        Err(scope.error(&self.name, "the Delta sink is not implemented yet"))
    }
}
