//! Every stage's plugin slot in the process, for the admin API and the file watcher.
//!
//! Stages register their slot when they are built (at start, or later when a partition is taken
//! over); the registry only hands out type-erased [`SlotControl`]s, so that every kind of stage
//! is listed, swapped and rolled back the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::slot::SlotControl;
use super::watch::Fingerprint;

/// The plugin slots of a process.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    slots: Arc<RwLock<Vec<Arc<dyn SlotControl>>>>,
    /// Each plugin file as it was when first read, so that the watcher also notices a file
    /// replaced between that read and its own first look.
    loaded: Arc<RwLock<HashMap<PathBuf, Option<Fingerprint>>>>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("slots", &self.all().len())
            .finish()
    }
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        PluginRegistry::default()
    }

    /// Adds a slot (a stage of a pipeline appears once: a second registration replaces the first).
    pub fn register(&self, slot: Arc<dyn SlotControl>) {
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.retain(|s| !(s.pipeline() == slot.pipeline() && s.stage() == slot.stage()));
        slots.push(slot);
    }

    /// Every slot, in registration order.
    pub fn all(&self) -> Vec<Arc<dyn SlotControl>> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The slot of `stage` in `pipeline`.
    pub fn find(&self, pipeline: &str, stage: &str) -> Option<Arc<dyn SlotControl>> {
        self.all()
            .into_iter()
            .find(|s| s.pipeline() == pipeline && s.stage() == stage)
    }

    /// The distinct plugin files of all slots.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .all()
            .iter()
            .map(|s| s.file().to_path_buf())
            .filter(|f| !f.as_os_str().is_empty())
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Notes how `file` looked just before it was read to load its first version (the first note
    /// per file counts).
    pub(crate) fn note_file_read(&self, file: &Path, seen: Option<Fingerprint>) {
        self.loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(file.to_path_buf())
            .or_insert(seen);
    }

    /// How `file` looked when it was read at load, if that was noted.
    pub(crate) fn fingerprint_at_load(&self, file: &Path) -> Option<Option<Fingerprint>> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(file)
            .copied()
    }

    /// The slots whose plugin file is `file`.
    pub fn by_file(&self, file: &Path) -> Vec<Arc<dyn SlotControl>> {
        self.all()
            .into_iter()
            .filter(|s| s.file() == file)
            .collect()
    }
}
