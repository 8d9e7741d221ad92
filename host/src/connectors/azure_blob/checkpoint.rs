//! Checkpoints and ownership claims in Azure Blob Storage, in the layout of the Azure SDKs' event
//! processors (`BlobCheckpointStore`), so that a consumer group can move between an
//! EventProcessorClient and Weir in either direction:
//!
//! - `<namespace>/<hub>/<group>/ownership/<partition>`: an empty blob with metadata `ownerid`;
//!   its ETag is the claim's version and its Last-Modified time the claim's time. Claims are
//!   conditional writes (`If-Match` on the ETag seen, `If-None-Match: *` for a new blob).
//! - `<namespace>/<hub>/<group>/checkpoint/<partition>`: metadata `sequencenumber` (Weir's
//!   position: the Event Hubs sequence number or Kafka offset of the last event covered) and
//!   `offset` (the source's offset of that event, left out when unknown); the body holds Weir's
//!   own checkpoint (stage state, sink progress), which the SDKs ignore. A checkpoint an SDK wrote
//!   (no Weir body, or a body behind the metadata) resumes after its `sequencenumber`.
//! - `weir/meta/<key>`: small values sources keep across restarts.
//!
//! Namespace, hub and group are folded to lower case as the SDKs do.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, UpdateVersion,
};

use crate::checkpoint::{
    Checkpoint, CheckpointError, CheckpointErrorKind, CheckpointStore, ConsumerScope, Ownership,
};
use crate::checkpoint::{
    MAGIC, MAGIC_V2, decode, drop_files, encode, read_files, safe_name, write_files,
};
use crate::config::{AzureBlobCheckpointConfig, expand_env};
use crate::connectors::entra::storage::StorageCredential;
use crate::event::{PartitionId, Position, now_millis};

const OWNER_ID: &str = "ownerid";
const SEQUENCE_NUMBER: &str = "sequencenumber";
const OFFSET: &str = "offset";

/// A checkpoint store in one Blob Storage container.
pub struct BlobCheckpointStore {
    store: Arc<dyn ObjectStore>,
    container: String,
    scopes: HashMap<String, ConsumerScope>,
    /// The Entra ID credential the store signs in with, if configured.
    credential: Option<StorageCredential>,
}

impl std::fmt::Debug for BlobCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCheckpointStore")
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

impl BlobCheckpointStore {
    /// A store in the configured container, keeping each pipeline under its consumer scope.
    pub fn open(
        config: &AzureBlobCheckpointConfig,
        scopes: HashMap<String, ConsumerScope>,
    ) -> Result<Self, CheckpointError> {
        let fail = |reason: String| {
            CheckpointError::new(
                CheckpointErrorKind::Misconfigured,
                format!("container `{}`", config.container),
                reason,
            )
        };
        let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(&config.container);
        if let Some(account) = &config.account {
            builder = builder.with_account(account);
        }
        if let Some(endpoint) = &config.endpoint {
            if endpoint.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
        }
        let credential = match &config.credential {
            Some(credential) => {
                let credential = StorageCredential::new(credential).map_err(fail)?;
                builder = builder.with_credentials(credential.provider());
                Some(credential)
            }
            None => None,
        };
        for (key, value) in &config.options {
            let key: AzureConfigKey = key
                .parse()
                .map_err(|e| fail(format!("unknown option `{key}`: {e}")))?;
            builder = builder.with_config(key, expand_env(value));
        }
        let store = builder
            .build()
            .map_err(|e| fail(format!("cannot configure Blob Storage: {e}")))?;
        Ok(BlobCheckpointStore {
            store: Arc::new(store),
            container: config.container.clone(),
            scopes,
            credential,
        })
    }

    /// Signs in once with the configured Entra ID credential, if any, so that a wrong one
    /// refuses the start with what to check.
    pub async fn check_sign_in(&self) -> Result<(), CheckpointError> {
        match &self.credential {
            Some(credential) => credential.check().await.map_err(|reason| {
                CheckpointError::new(
                    CheckpointErrorKind::Misconfigured,
                    format!("container `{}`", self.container),
                    reason,
                )
            }),
            None => Ok(()),
        }
    }

    fn scope(&self, pipeline: &str) -> ConsumerScope {
        self.scopes
            .get(pipeline)
            .cloned()
            .unwrap_or_else(|| ConsumerScope {
                namespace: "weir".to_owned(),
                hub: pipeline.to_owned(),
                consumer_group: pipeline.to_owned(),
            })
    }

    /// The blob of `pipeline`'s `kind` (`checkpoint` or `ownership`) record of `partition`.
    pub fn blob_name(&self, pipeline: &str, kind: &str, partition: PartitionId) -> String {
        format!("{}/{kind}/{partition}", self.scope(pipeline).prefix())
    }

    /// The blob of one state file of `pipeline`'s `partition` (see
    /// [`crate::checkpoint::IncrementalState`]).
    pub fn state_blob(&self, pipeline: &str, partition: PartitionId, name: &str) -> String {
        format!(
            "{}/state/{partition}/{}",
            self.scope(pipeline).prefix(),
            safe_name_keep_dots(name)
        )
    }

    /// Every blob under `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<object_store::ObjectMeta>, CheckpointError> {
        use futures::TryStreamExt as _;
        self.store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, e))
    }

    fn error(&self, blob: &str, reason: impl std::fmt::Display) -> CheckpointError {
        self.error_of(CheckpointErrorKind::Unavailable, blob, reason)
    }

    fn error_of(
        &self,
        kind: CheckpointErrorKind,
        blob: &str,
        reason: impl std::fmt::Display,
    ) -> CheckpointError {
        CheckpointError::new(kind, format!("blob {}/{blob}", self.container), reason)
    }

    /// The blob's metadata, ETag and Last-Modified time, or `None` when it does not exist.
    async fn head(
        &self,
        blob: &str,
    ) -> Result<Option<(Attributes, Option<String>, i64)>, CheckpointError> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&Path::from(blob), options).await {
            Ok(result) => Ok(Some((
                result.attributes,
                result.meta.e_tag,
                result.meta.last_modified.timestamp_millis(),
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(blob, e)),
        }
    }
}

/// A state file's name as written by the checkpoint module (letters, digits, `-`, `_`, `.`).
fn safe_name_keep_dots(name: &str) -> String {
    name.split('.').map(safe_name).collect::<Vec<_>>().join(".")
}

fn metadata<'a>(attributes: &'a Attributes, key: &str) -> Option<&'a str> {
    attributes.iter().find_map(|(k, v)| match k {
        Attribute::Metadata(name) if name.eq_ignore_ascii_case(key) => Some(v.as_ref()),
        _ => None,
    })
}

#[async_trait]
impl CheckpointStore for BlobCheckpointStore {
    async fn load(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let blob = self.blob_name(pipeline, "checkpoint", partition);
        let result = match self.store.get(&Path::from(blob.as_str())).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(&blob, e)),
        };
        let attributes = result.attributes.clone();
        let body = result.bytes().await.map_err(|e| self.error(&blob, e))?;
        let sequence_number = metadata(&attributes, SEQUENCE_NUMBER)
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|n| Position::try_from(n).ok());
        let offset = metadata(&attributes, OFFSET).map(str::to_owned);
        let weir =
            if body.starts_with(MAGIC) || body.starts_with(MAGIC_V2) {
                Some(decode(&body).map_err(|reason| {
                    self.error_of(CheckpointErrorKind::Unreadable, &blob, reason)
                })?)
            } else {
                None
            };
        Ok(match (weir, sequence_number) {
            (Some(checkpoint), Some(n)) if checkpoint.position != Some(n) => {
                // An Azure SDK processor checkpointed after Weir did (it keeps the body).
                tracing::warn!(
                    blob, weir_position = ?checkpoint.position, sequence_number = n,
                    "the checkpoint's metadata was written by another processor; resuming from it without Weir's stage state"
                );
                Some(Checkpoint {
                    position: Some(n),
                    source_offset: offset,
                    ..Checkpoint::default()
                })
            }
            (Some(mut checkpoint), _) => {
                read_files(self, pipeline, partition, &mut checkpoint).await?;
                Some(checkpoint)
            }
            (None, Some(n)) => Some(Checkpoint {
                position: Some(n),
                source_offset: offset,
                ..Checkpoint::default()
            }),
            (None, None) => None,
        })
    }

    async fn save(
        &self,
        pipeline: &str,
        partition: PartitionId,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let blob = self.blob_name(pipeline, "checkpoint", partition);
        let body = encode(checkpoint).map_err(|e| self.error(&blob, e))?;
        let mut attributes = Attributes::new();
        // A pipeline of several sources has no one sequence number an SDK processor could resume
        // from (its position is the merged sequence; each hub's is in the body): none is written.
        if checkpoint.sources.is_empty()
            && let Some(position) = checkpoint.position
        {
            attributes.insert(
                Attribute::Metadata(SEQUENCE_NUMBER.into()),
                position.to_string().into(),
            );
        }
        // Only the source's own offset: a sequence number in its place would send an SDK
        // processor resuming from `offset` to the wrong event. The worker carries the offset of a
        // resumed position forward, so it is unknown only when no event or checkpoint named it.
        if let Some(offset) = &checkpoint.source_offset {
            attributes.insert(Attribute::Metadata(OFFSET.into()), offset.clone().into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        write_files(self, pipeline, partition, checkpoint).await?;
        self.store
            .put_opts(&Path::from(blob.as_str()), PutPayload::from(body), options)
            .await
            .map_err(|e| self.error(&blob, e))?;
        drop_files(self, pipeline, partition, checkpoint).await;
        Ok(())
    }

    async fn write_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), CheckpointError> {
        let blob = self.state_blob(pipeline, partition, name);
        let seal = bytes::Bytes::from(crate::checkpoint::seal(&bytes));
        let sealed: PutPayload = [bytes, seal].into_iter().collect();
        self.store
            .put(&Path::from(blob.as_str()), sealed)
            .await
            .map_err(|e| self.error(&blob, e))?;
        Ok(())
    }

    async fn read_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
    ) -> Result<bytes::Bytes, CheckpointError> {
        let blob = self.state_blob(pipeline, partition, name);
        let result = self
            .store
            .get(&Path::from(blob.as_str()))
            .await
            .map_err(|e| self.error(&blob, e))?;
        let bytes = result.bytes().await.map_err(|e| self.error(&blob, e))?;
        crate::checkpoint::unseal(bytes)
            .map_err(|reason| self.error_of(CheckpointErrorKind::Unreadable, &blob, reason))
    }

    async fn list_state_files(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Vec<String>, CheckpointError> {
        let prefix = format!("{}/state/{partition}/", self.scope(pipeline).prefix());
        Ok(self
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .collect())
    }

    async fn delete_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
    ) -> Result<(), CheckpointError> {
        let blob = self.state_blob(pipeline, partition, name);
        match self.store.delete(&Path::from(blob.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(&blob, e)),
        }
    }

    async fn load_meta(&self, key: &str) -> Result<Option<String>, CheckpointError> {
        let blob = format!("weir/meta/{key}");
        match self.store.get(&Path::from(blob.as_str())).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|e| self.error(&blob, e))?;
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&blob, e)),
        }
    }

    async fn save_meta(&self, key: &str, value: &str) -> Result<(), CheckpointError> {
        let blob = format!("weir/meta/{key}");
        self.store
            .put(
                &Path::from(blob.as_str()),
                PutPayload::from(value.as_bytes().to_vec()),
            )
            .await
            .map_err(|e| self.error(&blob, e))?;
        Ok(())
    }

    async fn list_ownership(&self, pipeline: &str) -> Result<Vec<Ownership>, CheckpointError> {
        let prefix = format!("{}/ownership/", self.scope(pipeline).prefix());
        let listed = self.list(&prefix).await?;
        let mut out = Vec::with_capacity(listed.len());
        for meta in listed {
            let name = meta.location.to_string();
            let Some(partition) = name
                .rsplit('/')
                .next()
                .and_then(|p| p.parse::<PartitionId>().ok())
            else {
                continue;
            };
            // A listing carries no metadata here: read the owner (and a fresh ETag) per blob.
            let Some((attributes, e_tag, last_modified)) = self.head(&name).await? else {
                continue;
            };
            out.push(Ownership {
                partition,
                owner: metadata(&attributes, OWNER_ID)
                    .unwrap_or_default()
                    .to_owned(),
                last_modified,
                version: e_tag,
            });
        }
        out.sort_by_key(|o| o.partition);
        Ok(out)
    }

    async fn claim_ownership(
        &self,
        pipeline: &str,
        claims: &[Ownership],
    ) -> Result<Vec<Ownership>, CheckpointError> {
        let mut won = Vec::with_capacity(claims.len());
        for claim in claims {
            let blob = self.blob_name(pipeline, "ownership", claim.partition);
            let mode = match &claim.version {
                Some(e_tag) => PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag.clone()),
                    version: None,
                }),
                None => PutMode::Create,
            };
            let mut attributes = Attributes::new();
            attributes.insert(
                Attribute::Metadata(OWNER_ID.into()),
                claim.owner.clone().into(),
            );
            let options = PutOptions {
                mode,
                attributes,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&Path::from(blob.as_str()), PutPayload::new(), options)
                .await
            {
                Ok(result) => won.push(Ownership {
                    partition: claim.partition,
                    owner: claim.owner.clone(),
                    last_modified: now_millis(),
                    version: result.e_tag,
                }),
                Err(
                    object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::NotFound { .. },
                ) => {
                    tracing::debug!(blob, owner = %claim.owner, "ownership claim lost to another process");
                }
                Err(e) => return Err(self.error(&blob, e)),
            }
        }
        Ok(won)
    }

    fn describe(&self) -> String {
        format!("Azure Blob container `{}`", self.container)
    }
}
