//! Compiled components cached on disk, so that a restart (or a rollback to an old version) does
//! not compile again: Cranelift takes 70–110 ms for a small Rust guest and seconds for a Python or
//! JavaScript one, loading the cached form well under a millisecond.
//!
//! A compiled form only loads into an engine with the same wasmtime version and settings, so the
//! cache directory is keyed on both: `<dir>/wasmtime-<version>-<engine hash>/<sha256>.cwasm`.
//! Each file starts with the SHA-256 of the rest, checked before loading, so that a truncated or
//! damaged file is compiled again instead of being loaded. Loading a compiled form runs its
//! machine code: the cache directory must be as well protected as the `weir` binary itself.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

/// The wasmtime version Weir is built with (pinned once in the workspace).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Compiled components by the SHA-256 of their source bytes.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Where a lookup found its component, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the cache.
    Hit,
    /// Compiled, and stored.
    Miss,
}

impl CompileCache {
    /// A cache under `root`, in the subdirectory of `engine`'s version and settings.
    pub fn new(engine: &Engine, root: &Path) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let key = format!("wasmtime-{WASMTIME_VERSION}-{:016x}", hasher.finish());
        CompileCache {
            dir: root.join(key),
        }
    }

    /// The directory of this engine's compiled forms.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached file of the component whose source is `bytes`.
    pub fn path_for(&self, bytes: &[u8]) -> PathBuf {
        self.dir
            .join(format!("{}.cwasm", hex(&Sha256::digest(bytes))))
    }

    /// The component of `bytes`: from the cache, or from `compile` (then stored).
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Component, PluginError>,
    ) -> Result<Component, PluginError> {
        self.lookup(engine, bytes, compile).map(|(c, _)| c)
    }

    /// Like [`CompileCache::get_or_compile`], saying whether the cache had it.
    pub fn lookup(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> Result<Component, PluginError>,
    ) -> Result<(Component, CacheOutcome), PluginError> {
        let path = self.path_for(bytes);
        if let Some(component) = load(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let component = compile()?;
        match component.serialize() {
            Ok(serialized) => {
                if let Err(e) = store(&path, &serialized) {
                    // The cache only saves time: go on without it, and say why.
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the compiled plugin to the cache");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise a compiled plugin for the cache")
            }
        }
        Ok((component, CacheOutcome::Miss))
    }
}

/// The cached component at `path`, if there is one whose checksum holds and that this engine
/// accepts.
fn load(engine: &Engine, path: &Path) -> Option<Component> {
    let file = std::fs::read(path).ok()?;
    if file.len() < 32 {
        return None;
    }
    let (digest, serialized) = file.split_at(32);
    if Sha256::digest(serialized).as_slice() != digest {
        tracing::warn!(path = %path.display(), "cached compiled plugin is damaged; compiling again");
        return None;
    }
    match deserialize(engine, serialized) {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cached compiled plugin does not load; compiling again");
            None
        }
    }
}

/// Loads a compiled component that this module wrote.
#[allow(
    unsafe_code,
    reason = "loading a compiled component is unsafe in wasmtime because its machine code is trusted"
)]
fn deserialize(engine: &Engine, serialized: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `serialized` was produced by `Component::serialize` in `lookup` and written by
    // `store` below into Weir's own cache directory; its SHA-256 was checked by the caller, so a
    // partial or damaged file never gets here. wasmtime itself checks that the bytes were compiled
    // by this wasmtime version with compatible settings and refuses them otherwise. The remaining
    // trust is in whoever can write the cache directory, which the README says to protect like
    // the binary.
    unsafe { Component::deserialize(engine, serialized) }
}

/// Writes `serialized`, preceded by its SHA-256, atomically (temporary file, then rename).
fn store(path: &Path, serialized: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension(format!("cwasm.{}.tmp", std::process::id()));
    let mut file = Vec::with_capacity(32 + serialized.len());
    file.extend_from_slice(&Sha256::digest(serialized));
    file.extend_from_slice(serialized);
    std::fs::write(&temporary, &file)?;
    std::fs::rename(&temporary, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = "(component (core module (func (export \"f\"))))";

    #[test]
    fn second_lookup_hits_and_a_damaged_file_is_compiled_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = super::super::sandbox::engine().expect("engine");
        let cache = CompileCache::new(&engine, dir.path());
        assert!(
            cache
                .dir()
                .to_string_lossy()
                .contains(&format!("wasmtime-{WASMTIME_VERSION}-")),
            "keyed on the wasmtime version: {}",
            cache.dir().display()
        );
        let bytes = wat_bytes();
        let compile = || {
            Component::new(&engine, &bytes).map_err(|e| PluginError::Compile {
                path: PathBuf::from("t.wasm"),
                reason: e.to_string(),
            })
        };
        let (_, first) = cache.lookup(&engine, &bytes, compile).expect("compile");
        assert_eq!(first, CacheOutcome::Miss);
        assert!(cache.path_for(&bytes).is_file());
        let (_, second) = cache.lookup(&engine, &bytes, compile).expect("load");
        assert_eq!(second, CacheOutcome::Hit);

        // Damage the file: the checksum catches it and the component is compiled again.
        let path = cache.path_for(&bytes);
        let mut file = std::fs::read(&path).expect("read");
        let last = file.len() - 1;
        file[last] ^= 0xff;
        std::fs::write(&path, &file).expect("write");
        let (_, third) = cache.lookup(&engine, &bytes, compile).expect("recompile");
        assert_eq!(third, CacheOutcome::Miss);
        let (_, fourth) = cache.lookup(&engine, &bytes, compile).expect("load");
        assert_eq!(fourth, CacheOutcome::Hit);
    }

    #[test]
    fn engines_with_other_settings_use_another_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = super::super::sandbox::engine().expect("engine");
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let other = Engine::new(&config).expect("engine");
        assert_ne!(
            CompileCache::new(&engine, dir.path()).dir(),
            CompileCache::new(&other, dir.path()).dir()
        );
    }

    fn wat_bytes() -> Vec<u8> {
        WAT.as_bytes().to_vec()
    }
}
