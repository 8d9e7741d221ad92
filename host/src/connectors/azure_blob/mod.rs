//! Azure Blob Storage: the checkpoint store that several processes (and the Azure SDKs' event
//! processors) share, with ownership claims.

#[cfg(feature = "azure")]
pub mod checkpoint;
pub mod config;
