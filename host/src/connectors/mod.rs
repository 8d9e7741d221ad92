//! Connectors: one folder per external system, each holding its configuration types and their
//! validation, its client code, its source and its sink.
//!
//! - [`kafka`]: a Kafka topic (or Event Hubs' Kafka endpoint), source and sink;
//! - [`eventhubs`]: an Azure Event Hub (or IoT Hub's compatible endpoint), source and sink;
//! - [`http`]: an HTTP endpoint that accepts events (source);
//! - [`file`](mod@file): JSON Lines files, source and sink;
//! - [`stdout`]: standard output (sink);
//! - [`delta`]: a Delta Lake table, local or on Azure (sink);
//! - [`webhook`]: JSON POSTs to an HTTP endpoint (sink);
//! - [`azure_blob`]: the Azure Blob Storage checkpoint store;
//! - [`entra`]: Microsoft Entra ID sign-in, shared by the Azure connectors.
//!
//! [`crate::source`] and [`crate::sink`] hold the traits every connector implements and pick one
//! by configuration; the demo generators live apart, in [`crate::generators`].

pub mod azure_blob;
pub mod delta;
pub mod entra;
pub mod eventhubs;
pub mod file;
pub mod http;
pub mod kafka;
pub mod stdout;
pub mod webhook;

use std::sync::Arc;

use crate::checkpoint::{CheckpointError, CheckpointStore, LocalCheckpointStore};
use crate::config::LoadedConfig;

/// [`checkpoint_store`], having signed in once with its Entra ID credential (if any), so that a
/// wrong one refuses the start with what to check.
pub async fn open_checkpoint_store(
    loaded: &LoadedConfig,
) -> Result<Arc<dyn CheckpointStore>, CheckpointError> {
    #[cfg(feature = "azure")]
    if let Some(blob) = &loaded.config.checkpoint.azure_blob {
        let store = azure_blob::checkpoint::BlobCheckpointStore::open(
            blob,
            loaded.config.consumer_scopes(),
        )?;
        store.check_sign_in().await?;
        return Ok(Arc::new(store));
    }
    checkpoint_store(loaded)
}

/// The checkpoint store `loaded` configures: the local directory by default, Azure Blob Storage
/// with `[checkpoint.azure_blob]`.
pub fn checkpoint_store(
    loaded: &LoadedConfig,
) -> Result<Arc<dyn CheckpointStore>, CheckpointError> {
    let config = &loaded.config.checkpoint;
    match &config.azure_blob {
        None => Ok(Arc::new(LocalCheckpointStore::new(
            loaded.resolve(&config.dir),
        ))),
        #[cfg(feature = "azure")]
        Some(blob) => Ok(Arc::new(azure_blob::checkpoint::BlobCheckpointStore::open(
            blob,
            loaded.config.consumer_scopes(),
        )?)),
        #[cfg(not(feature = "azure"))]
        Some(blob) => Err(CheckpointError::new(
            crate::checkpoint::CheckpointErrorKind::Unsupported,
            blob.container.clone(),
            "this build of weir has no Azure support: rebuild with `--features azure`",
        )),
    }
}
