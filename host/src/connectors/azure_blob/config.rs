//! Configuration of the Azure Blob Storage checkpoint store.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Checkpoints and ownership claims in an Azure Blob Storage container, in the Azure SDKs'
/// event-processor layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobCheckpointConfig {
    /// The storage account (also read from `AZURE_STORAGE_ACCOUNT_NAME`).
    #[serde(default)]
    pub account: Option<String>,
    /// The container (it must exist).
    pub container: String,
    /// The Blob service URL, for emulators and sovereign clouds (for Azurite:
    /// `http://127.0.0.1:10000/devstoreaccount1`); defaults to the public cloud's.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Further `object_store` Azure options (`azure_storage_account_key`, `azure_client_id`,
    /// `azure_storage_sas_key`, `azure_allow_http`, …); `${NAME}` in a value is replaced by the
    /// environment variable `NAME`. Without credentials here, the `AZURE_*` environment variables
    /// and managed identity are used.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Sign in with Microsoft Entra ID: `{ kind = "managed_identity" | "workload_identity" |
    /// "client_secret" | "client_certificate" | "azure_cli", ... }`, through the Azure SDK's
    /// identity crate, checked at start (the identity needs the role "Storage Blob Data
    /// Contributor" on the container).
    #[serde(default)]
    pub credential: Option<crate::connectors::entra::EntraCredential>,
}
