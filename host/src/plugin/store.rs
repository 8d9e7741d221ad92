//! The plugin version store on disk: every version ever loaded, by content hash, and per stage
//! which versions it knew, which one was active and why.
//!
//! ```text
//! <store>/versions/<version>.wasm          the component bytes, content-addressed
//! <store>/stages/<pipeline>.<stage>.json   per stage: versions, activations, the active version
//! <store>/compiled/wasmtime-<v>-<hash>/    compiled forms (see `cache`)
//! ```
//!
//! A restart runs the version that was active when the process stopped (an upload or a rollback
//! survives it), unless the stage's configured plugin file changed meanwhile: then the file wins,
//! because an operator who edits it means it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::slot::{ActivationInfo, VersionInfo};

/// What the store remembers of one stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    /// Version (content hash) of the stage's plugin file when it was last read.
    pub configured: String,
    /// The version that was running.
    pub active: String,
    /// Every version the stage has known, in the order they were first loaded.
    pub versions: Vec<VersionInfo>,
    /// The latest activations, oldest first (at most [`MAX_ACTIVATIONS`]).
    pub activations: Vec<ActivationInfo>,
    /// Versions rolled back automatically.
    #[serde(default)]
    pub rolled_back: Vec<String>,
}

/// Activations kept per stage.
pub const MAX_ACTIVATIONS: usize = 200;

/// The store under one directory.
#[derive(Debug, Clone)]
pub struct VersionStore {
    dir: PathBuf,
}

impl VersionStore {
    /// A store under `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        VersionStore { dir }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where compiled forms are cached.
    pub fn compiled_dir(&self) -> PathBuf {
        self.dir.join("compiled")
    }

    /// The file holding the bytes of `version`.
    pub fn bytes_path(&self, version: &str) -> PathBuf {
        self.dir.join("versions").join(format!("{version}.wasm"))
    }

    /// Keeps the bytes of `version` (once).
    pub fn put_bytes(&self, version: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.bytes_path(version);
        if path.is_file() {
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    /// The bytes of `version`.
    pub fn get_bytes(&self, version: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.bytes_path(version))
    }

    fn stage_path(&self, pipeline: &str, stage: &str) -> PathBuf {
        self.dir
            .join("stages")
            .join(format!("{}.{}.json", file_part(pipeline), file_part(stage)))
    }

    /// What the store remembers of a stage; `None` if nothing (or an unreadable record, which is
    /// logged and then replaced).
    pub fn load_stage(&self, pipeline: &str, stage: &str) -> Option<StageRecord> {
        let path = self.stage_path(pipeline, stage);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable plugin version record; starting a new one");
                None
            }
        }
    }

    /// Replaces what the store remembers of a stage.
    pub fn save_stage(
        &self,
        pipeline: &str,
        stage: &str,
        record: &StageRecord,
    ) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomically(&self.stage_path(pipeline, stage), &text)
    }
}

/// A name made safe as part of a file name; names that had to change get a hash of the original
/// so that two of them cannot collide.
fn file_part(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == name && !name.is_empty() {
        safe
    } else {
        format!("{safe}-{}", super::content_version(name.as_bytes()))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a reader never sees a
/// partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_records_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = VersionStore::new(dir.path().to_path_buf());
        store.put_bytes("abc", b"one").expect("put");
        store
            .put_bytes("abc", b"two")
            .expect("second put keeps the first");
        assert_eq!(store.get_bytes("abc").expect("get"), b"one");
        assert!(store.load_stage("p", "s").is_none());
        let record = StageRecord {
            configured: "abc".into(),
            active: "abc".into(),
            ..StageRecord::default()
        };
        store.save_stage("p", "s/x", &record).expect("save");
        let back = store.load_stage("p", "s/x").expect("load");
        assert_eq!(back.active, "abc");
        assert_ne!(file_part("s/x"), file_part("s_x"));
    }
}
