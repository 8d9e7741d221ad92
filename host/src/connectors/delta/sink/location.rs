//! Where a table lives and how its storage is reached: the one place that knows about paths, URLs
//! and storage options. A table is a local directory (made durable with fsync), or, with the
//! `azure` feature, a URL on Azure Data Lake Storage Gen2 or Blob Storage (`abfss://`, `abfs://`,
//! `az://`, `azure://`, `adl://`), reached through deltalake's Azure object store with the sink's
//! `storage_options` (an object store's PUT is durable when it returns).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use deltalake::kernel::Add;
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, ensure_table_uri};

use crate::config::{LoadedConfig, expand_env};

/// URL schemes of Azure storage that deltalake's Azure support registers.
const AZURE_SCHEMES: [&str; 5] = ["abfss", "abfs", "az", "azure", "adl"];

/// The location of one table.
#[derive(Debug, Clone)]
pub(super) struct Location {
    /// The local directory of the table, or none for a remote one.
    dir: PathBuf,
    /// A remote table's URL and object-store options.
    remote: Option<(url::Url, HashMap<String, String>)>,
    /// The Entra ID credential a remote table is reached with, if configured.
    #[cfg(feature = "azure")]
    credential: Option<crate::connectors::entra::storage::StorageCredential>,
}

impl Location {
    /// Parses a configured `path`: a local directory (relative to the configuration file), a
    /// `file://` URL, or an Azure storage URL opened with `storage_options`.
    pub(super) fn parse(
        path: &str,
        storage_options: &BTreeMap<String, String>,
        loaded: &LoadedConfig,
    ) -> Result<Self, String> {
        if let Some((scheme, rest)) = path.split_once("://") {
            if scheme.eq_ignore_ascii_case("file") && rest.starts_with('/') {
                return Ok(Location::local(Path::new(rest)));
            }
            if AZURE_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
                return Self::azure(path, storage_options);
            }
            return Err(format!(
                "table path `{path}`: `{scheme}://` is not a supported location (local directories, `file://`, and Azure's {})",
                AZURE_SCHEMES.map(|s| format!("`{s}://`")).join(", ")
            ));
        }
        if path.trim().is_empty() {
            return Err("the table path is empty".to_owned());
        }
        Ok(Location::local(&loaded.resolve(Path::new(path))))
    }

    #[cfg(feature = "azure")]
    fn azure(path: &str, storage_options: &BTreeMap<String, String>) -> Result<Self, String> {
        let url = url::Url::parse(path).map_err(|e| format!("table path `{path}`: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "table path `{path}`: expected `abfss://<container>@<account>.dfs.core.windows.net/<path>` or `az://<container>/<path>`"
            ));
        }
        let options = storage_options
            .iter()
            .map(|(k, v)| (k.clone(), expand_env(v)))
            .collect();
        Ok(Location {
            dir: PathBuf::new(),
            remote: Some((url, options)),
            credential: None,
        })
    }

    #[cfg(not(feature = "azure"))]
    fn azure(path: &str, _storage_options: &BTreeMap<String, String>) -> Result<Self, String> {
        Err(format!(
            "table path `{path}`: this build of weir has no Azure support: rebuild with `--features azure`"
        ))
    }

    /// A local directory.
    pub(super) fn local(dir: &Path) -> Self {
        Location {
            dir: dir.to_path_buf(),
            remote: None,
            #[cfg(feature = "azure")]
            credential: None,
        }
    }

    /// The location signing in with the Entra ID `credential` (through the identity crate),
    /// if one is configured; only a remote table takes one.
    pub(super) fn with_credential(
        self,
        credential: Option<&crate::connectors::entra::EntraCredential>,
    ) -> Result<Self, String> {
        let Some(credential) = credential else {
            return Ok(self);
        };
        if self.remote.is_none() {
            return Err(format!(
                "a `credential` signs in to Azure storage, but the table at {} is a local directory",
                self.display()
            ));
        }
        self.signed_in(credential)
    }

    #[cfg(feature = "azure")]
    fn signed_in(
        mut self,
        credential: &crate::connectors::entra::EntraCredential,
    ) -> Result<Self, String> {
        self.credential = Some(crate::connectors::entra::storage::StorageCredential::new(
            credential,
        )?);
        Ok(self)
    }

    /// Without Azure support there are no remote tables to sign in to.
    #[cfg(not(feature = "azure"))]
    fn signed_in(
        self,
        _credential: &crate::connectors::entra::EntraCredential,
    ) -> Result<Self, String> {
        Ok(self)
    }

    /// Signs in once with the configured credential, so that a wrong one refuses the start
    /// with what to check.
    pub(super) async fn check_sign_in(&self) -> Result<(), String> {
        #[cfg(feature = "azure")]
        if let Some(credential) = &self.credential {
            return credential
                .check()
                .await
                .map_err(|e| format!("cannot reach the table at {}: {e}", self.display()));
        }
        Ok(())
    }

    /// The location as users read it.
    pub(super) fn display(&self) -> String {
        match &self.remote {
            Some((url, _)) => url.to_string(),
            None => self.dir.display().to_string(),
        }
    }

    /// The table at this location, not loaded yet (a local directory is created if absent).
    pub(super) async fn table(&self) -> Result<DeltaTable, String> {
        if let Some((url, options)) = &self.remote {
            #[cfg(feature = "azure")]
            if let Some(credential) = &self.credential {
                return signed_in_table(url, options, credential)
                    .map_err(|e| format!("cannot open the table at {url}: {e}"));
            }
            return DeltaTableBuilder::from_url(url.clone())
                .map(|builder| builder.with_storage_options(options.clone()))
                .and_then(|builder| builder.build())
                .map_err(|e| format!("cannot open the table at {url}: {e}"));
        }
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
            format!(
                "cannot create the table directory {}: {e}",
                self.dir.display()
            )
        })?;
        let build = || -> DeltaResult<DeltaTable> {
            let url = ensure_table_uri(self.dir.to_string_lossy())?;
            DeltaTableBuilder::from_url(url)?.build()
        };
        build().map_err(|e| format!("cannot open the table at {}: {e}", self.dir.display()))
    }

    /// Makes the data files of `adds` durable before they are committed (local files are written
    /// through the page cache; an object store's PUT is durable when it returns).
    pub(super) async fn sync_data_files(&self, adds: &[Add]) -> Result<(), String> {
        if self.remote.is_some() {
            return Ok(());
        }
        let files: Vec<PathBuf> = adds
            .iter()
            .map(|add| self.dir.join(percent_decode(&add.path)))
            .collect();
        let dir = self.dir.clone();
        run_blocking(move || {
            let mut dirs = BTreeSet::new();
            for file in &files {
                sync_path(file)?;
                let mut parent = file.parent();
                while let Some(p) = parent {
                    if !p.starts_with(&dir) {
                        break;
                    }
                    dirs.insert(p.to_path_buf());
                    parent = p.parent();
                }
            }
            for d in &dirs {
                sync_path(d)?;
            }
            Ok(())
        })
        .await
    }

    /// Makes the log entry of `version` durable.
    pub(super) async fn sync_commit(&self, version: u64) -> Result<(), String> {
        if self.remote.is_some() {
            return Ok(());
        }
        let log = self.dir.join("_delta_log");
        run_blocking(move || {
            sync_path(&log.join(format!("{version:020}.json")))?;
            sync_path(&log)
        })
        .await
    }
}

/// The table at `url` on an Azure object store that signs in with `credential` (its other
/// `options`, such as the account or the endpoint, apply as usual).
#[cfg(feature = "azure")]
fn signed_in_table(
    url: &url::Url,
    options: &HashMap<String, String>,
    credential: &crate::connectors::entra::storage::StorageCredential,
) -> Result<DeltaTable, String> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let mut builder = MicrosoftAzureBuilder::new()
        .with_url(url.to_string())
        .with_credentials(credential.provider());
    for (key, value) in options {
        // Options that are not the Azure store's (deltalake's own) are left to deltalake.
        if let Ok(key) = key.to_ascii_lowercase().parse::<AzureConfigKey>() {
            builder = builder.with_config(key, value.clone());
        }
    }
    let store = builder.build().map_err(|e| e.to_string())?;
    DeltaTableBuilder::from_url(url.clone())
        .map(|builder| {
            builder
                .with_storage_backend(std::sync::Arc::new(store), url.clone())
                .with_storage_options(options.clone())
        })
        .and_then(|builder| builder.build())
        .map_err(|e| e.to_string())
}

async fn run_blocking(
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("sync task failed: {e}"))?
}

fn sync_path(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", path.display()))
}

/// Decodes the `%XX` escapes of a relative path in an `add` action.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            // Two hex digits make one byte.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes() {
        assert_eq!(
            percent_decode("Day=2024-01-02/part-1.parquet"),
            "Day=2024-01-02/part-1.parquet"
        );
        assert_eq!(percent_decode("City=New%20York/x%2"), "City=New York/x%2");
    }

    #[test]
    fn parses_local_and_azure_locations() {
        let loaded = LoadedConfig {
            config: toml::from_str("").expect("an empty configuration"),
            path: PathBuf::from("/etc/weir/weir.toml"),
            base_dir: PathBuf::from("/etc/weir"),
            text: "".into(),
        };
        let none = BTreeMap::new();
        assert_eq!(
            Location::parse("file:///tmp/t", &none, &loaded).map(|l| l.display()),
            Ok("/tmp/t".to_owned())
        );
        assert_eq!(
            Location::parse("t", &none, &loaded).map(|l| l.display()),
            Ok("/etc/weir/t".to_owned())
        );
        let err = Location::parse("s3://bucket/t", &none, &loaded).expect_err("s3");
        assert!(err.contains("`abfss://`"), "{err}");
        #[cfg(feature = "azure")]
        {
            let adls = "abfss://lake@acct.dfs.core.windows.net/delta/raw";
            assert_eq!(
                Location::parse(adls, &none, &loaded).map(|l| l.display()),
                Ok(adls.to_owned())
            );
            assert!(Location::parse("az:///no-container", &none, &loaded).is_err());
        }
    }
}
