//! Where a table lives and how its storage is reached: the one place that knows about paths, URLs
//! and storage options. Local directories only for now; remote stores (`az://`, `abfss://`) plug
//! in here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use deltalake::kernel::Add;
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, ensure_table_uri};

use crate::config::LoadedConfig;

/// The location of one table.
#[derive(Debug, Clone)]
pub(super) struct Location {
    /// The local directory of the table.
    dir: PathBuf,
}

impl Location {
    /// Parses a configured `path`: a local directory (relative to the configuration file) or a
    /// `file://` URL.
    pub(super) fn parse(path: &str, loaded: &LoadedConfig) -> Result<Self, String> {
        if let Some((scheme, rest)) = path.split_once("://") {
            if scheme.eq_ignore_ascii_case("file") && rest.starts_with('/') {
                return Ok(Location {
                    dir: PathBuf::from(rest),
                });
            }
            return Err(format!(
                "table path `{path}`: only local directories are supported for now, not `{scheme}://` locations"
            ));
        }
        if path.trim().is_empty() {
            return Err("the table path is empty".to_owned());
        }
        Ok(Location {
            dir: loaded.resolve(Path::new(path)),
        })
    }

    /// A local directory (tests).
    #[cfg(test)]
    pub(super) fn local(dir: &Path) -> Self {
        Location {
            dir: dir.to_path_buf(),
        }
    }

    /// The location as users read it.
    pub(super) fn display(&self) -> String {
        self.dir.display().to_string()
    }

    /// The table at this location, not loaded yet (its directory is created if absent).
    pub(super) async fn table(&self) -> Result<DeltaTable, String> {
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
        let log = self.dir.join("_delta_log");
        run_blocking(move || {
            sync_path(&log.join(format!("{version:020}.json")))?;
            sync_path(&log)
        })
        .await
    }
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
    fn refuses_remote_locations_for_now() {
        let loaded = LoadedConfig {
            config: toml::from_str("").expect("an empty configuration"),
            path: PathBuf::from("/etc/weir/weir.toml"),
            base_dir: PathBuf::from("/etc/weir"),
        };
        assert!(Location::parse("az://container/table", &loaded).is_err());
        assert_eq!(
            Location::parse("file:///tmp/t", &loaded).map(|l| l.display()),
            Ok("/tmp/t".to_owned())
        );
        assert_eq!(
            Location::parse("t", &loaded).map(|l| l.display()),
            Ok("/etc/weir/t".to_owned())
        );
    }
}
