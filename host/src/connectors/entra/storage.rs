//! Azure Storage signed in with Microsoft Entra ID: the Blob checkpoint store and Delta tables on
//! ADLS Gen2 and Fabric OneLake reach their object store with bearer tokens that the identity
//! crate's credential (the same one Event Hubs uses) hands out, through an `object_store`
//! credential provider.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use object_store::CredentialProvider;
use object_store::azure::{AzureCredential, AzureCredentialProvider};

use super::config::EntraCredential;
use super::credential;

/// The scope of Azure Storage tokens (Fabric OneLake accepts them too).
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// A configured Entra ID credential signing in to Azure Storage.
#[derive(Clone)]
pub struct StorageCredential {
    config: EntraCredential,
    credential: Arc<dyn TokenCredential>,
}

impl std::fmt::Debug for StorageCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageCredential")
            .field("kind", &self.config.kind())
            .finish_non_exhaustive()
    }
}

impl StorageCredential {
    /// The identity crate's credential for `config`.
    pub fn new(config: &EntraCredential) -> Result<Self, String> {
        Ok(StorageCredential {
            config: config.clone(),
            credential: credential::build(config)?,
        })
    }

    /// Signs in once, so that a wrong secret, id or certificate refuses the start with what to
    /// check instead of failing inside the object store's retries.
    pub async fn check(&self) -> Result<(), String> {
        credential::check(&self.config, &self.credential, STORAGE_SCOPE).await
    }

    /// The credential as an `object_store` Azure credential provider.
    pub fn provider(&self) -> AzureCredentialProvider {
        Arc::new(self.clone())
    }
}

#[async_trait]
impl CredentialProvider for StorageCredential {
    type Credential = AzureCredential;

    /// A bearer token for Azure Storage; the identity crate caches tokens until shortly before
    /// they expire, so this asks Entra ID only when a new one is needed.
    async fn get_credential(&self) -> object_store::Result<Arc<AzureCredential>> {
        let token = self
            .credential
            .get_token(&[STORAGE_SCOPE], None)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "MicrosoftAzure",
                source: format!(
                    "Entra ID sign-in ({}) failed: {e}; {}",
                    self.config.kind(),
                    self.config.hint()
                )
                .into(),
            })?;
        Ok(Arc::new(AzureCredential::BearerToken(
            token.token.secret().to_owned(),
        )))
    }
}
