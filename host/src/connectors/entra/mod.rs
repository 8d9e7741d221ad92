//! Microsoft Entra ID sign-in for the Azure connectors (Event Hubs, the Blob checkpoint store,
//! Delta tables on ADLS Gen2 and Fabric OneLake): the `credential` table they share, and the
//! credential it builds through the Azure SDK's identity crate.

pub mod config;
#[cfg(any(feature = "eventhubs", feature = "azure"))]
pub mod credential;
#[cfg(feature = "azure")]
pub mod storage;

pub use config::EntraCredential;
