//! The HTTP ingest endpoint (placeholder).

use async_trait::async_trait;

use super::{PartitionReader, PartitionStart, Source, SourceError};
use crate::config::HttpSourceConfig;

/// Events POSTed over HTTP.
#[derive(Debug)]
pub struct HttpSource {
    name: String,
    config: HttpSourceConfig,
}

impl HttpSource {
    /// Starts listening.
    pub async fn start(name: &str, config: HttpSourceConfig) -> Result<Self, String> {
        Ok(HttpSource {
            name: name.to_owned(),
            config,
        })
    }
}

#[async_trait]
impl Source for HttpSource {
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
