//! Azure Event Hubs source (and IoT Hub's Event Hubs-compatible endpoint): every Event Hubs
//! partition is a Weir partition, read by its own receiver; an event's position is its sequence
//! number.
//!
//! Each partition reader can be opened and dropped at any time, independently of the others, so
//! that partition ownership can move between processes. A reader owns one AMQP connection; a
//! task receives events into a small queue, reconnects on any failure and resumes after the last
//! event it queued, so a detached link or a dropped connection loses nothing and duplicates
//! nothing.

mod reader;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::EventHubsSourceConfig;
use crate::connectors::eventhubs::connection::{self, Connection};
use crate::source::{PartitionReader, PartitionStart, Source, SourceError, SourceErrorKind};
pub use reader::OFFSET_PROPERTY;

/// An Event Hub, read partition by partition.
#[derive(Debug)]
pub struct EventHubsSource {
    name: String,
    settings: Arc<reader::ReaderSettings>,
    partition_ids: Vec<String>,
}

impl EventHubsSource {
    /// Connects to the hub and reads its partitions.
    pub async fn start(name: &str, config: &EventHubsSourceConfig) -> Result<Self, SourceError> {
        let start_error =
            |reason: String| SourceError::start(SourceErrorKind::Unavailable, name, reason);
        // The connection string and hub name come from the configuration alone.
        let connection = Connection::resolve(&config.connection())
            .map_err(|reason| SourceError::start(SourceErrorKind::Misconfigured, name, reason))?;
        let client = connection
            .consumer(&config.consumer_group)
            .await
            .map_err(start_error)?;
        let properties =
            tokio::time::timeout(connection::OPEN_TIMEOUT, client.get_eventhub_properties()).await;
        // Closing waits for the service's answers: nothing here needs them.
        tokio::spawn(connection::close_consumer(client));
        let properties = match properties {
            Ok(Ok(properties)) => properties,
            Ok(Err(e)) => {
                return Err(start_error(format!(
                    "cannot read the properties of {}: {e}",
                    connection.describe()
                )));
            }
            Err(_) => {
                return Err(start_error(format!(
                    "no answer from {} within {:?}",
                    connection.describe(),
                    connection::OPEN_TIMEOUT
                )));
            }
        };
        let partition_ids = properties.partition_ids;
        if partition_ids.is_empty() {
            return Err(start_error(format!(
                "{} reports no partitions",
                connection.describe()
            )));
        }
        if let Some(expected) = config.partitions
            && expected as usize != partition_ids.len()
        {
            return Err(start_error(format!(
                "{} has {} partitions but the configuration says `partitions = {expected}`",
                connection.describe(),
                partition_ids.len()
            )));
        }
        tracing::info!(
            source = name, hub = %connection.describe(), partitions = partition_ids.len(),
            consumer_group = %config.consumer_group, "Event Hubs source ready"
        );
        Ok(EventHubsSource {
            name: name.to_owned(),
            settings: Arc::new(reader::ReaderSettings {
                source_name: name.to_owned(),
                properties: reader::PropertiesClient::new(
                    connection.clone(),
                    config.consumer_group.clone(),
                ),
                connection,
                config: config.clone(),
            }),
            partition_ids,
        })
    }
}

#[async_trait]
impl Source for EventHubsSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        u32::try_from(self.partition_ids.len()).unwrap_or(u32::MAX)
    }

    fn partitions_open_independently(&self) -> bool {
        true
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let mut readers: Vec<Box<dyn PartitionReader>> = Vec::with_capacity(starts.len());
        for start in starts {
            let Some(id) = self.partition_ids.get(start.partition as usize) else {
                return Err(SourceError::start(
                    SourceErrorKind::Misconfigured,
                    &self.name,
                    format!(
                        "partition {} does not exist (the hub has {})",
                        start.partition,
                        self.partition_ids.len()
                    ),
                ));
            };
            readers.push(Box::new(reader::EventHubsReader::open(
                self.settings.clone(),
                start,
                id.clone(),
            )));
        }
        Ok(readers)
    }
}

#[cfg(test)]
mod tests;
