//! The plugin SDK as the `weir` binary carries it: the sources of `weir-sdk` and
//! `weir-sdk-macros` (embedded by `host/build.rs`), unpacked once per SDK content into a shared
//! directory, with manifests of their own so that they build outside this repository.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::PluginCliError;

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// The SDK's version (the workspace's, which the host shares).
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The manifest of the unpacked `weir-sdk`: the dependencies of `sdk/Cargo.toml`, with the
/// workspace's versions and features written out (a test checks that the names match).
const SDK_MANIFEST: &str = r#"[package]
name = "weir-sdk"
description = "Write Weir stream transforms as plain Rust functions, compiled to WebAssembly components."
version = "{version}"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
weir-sdk-macros = { path = "../weir-sdk-macros", version = "{version}" }
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

# Accumulators and keyed state are stored as JSON: parse floats back exactly inside the component.
[target.'cfg(target_arch = "wasm32")'.dependencies]
serde_json = { version = "1", features = ["float_roundtrip"] }
"#;

/// The manifest of the unpacked `weir-sdk-macros`.
const MACROS_MANIFEST: &str = r#"[package]
name = "weir-sdk-macros"
description = "Attribute macros of the Weir plugin SDK."
version = "{version}"
edition = "2024"
license = "Apache-2.0"
publish = false

[lib]
proc-macro = true

[dependencies]
syn = { version = "2", features = ["full"] }
quote = "1"
proc-macro2 = "1"
"#;

/// Every file of the unpacked SDK: (path inside it, contents).
fn files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = SDK_FILES
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect();
    files.push((
        "weir-sdk/Cargo.toml".into(),
        SDK_MANIFEST.replace("{version}", VERSION),
    ));
    files.push((
        "weir-sdk-macros/Cargo.toml".into(),
        MACROS_MANIFEST.replace("{version}", VERSION),
    ));
    files
}

/// Where unpacked SDKs go: `$WEIR_HOME/sdk`, else `~/.weir/sdk`.
pub(crate) fn default_root() -> Result<PathBuf, PluginCliError> {
    if let Some(home) = std::env::var_os("WEIR_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("sdk"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".weir").join("sdk")),
        None => Err(PluginCliError::NoHome),
    }
}

/// Unpacks the SDK under `root` (once: a directory named after its version and content hash is
/// reused) and returns the directory of the unpacked `weir-sdk` crate.
pub(crate) fn unpack(root: &Path) -> Result<PathBuf, PluginCliError> {
    Ok(unpack_all(root)?.join("weir-sdk"))
}

/// Unpacks the SDKs under `root` (see [`unpack`]) and returns the directory holding them all:
/// `weir-sdk/` and `weir-sdk-macros/` (Rust, with the contract in `weir-sdk/wit/`), `python/`
/// (the package `weir`) and `js/` (the module `weir.js` and its harness).
pub(crate) fn unpack_all(root: &Path) -> Result<PathBuf, PluginCliError> {
    let files = files();
    let mut digest = Sha256::new();
    for (path, text) in &files {
        digest.update(path.as_bytes());
        digest.update([0]);
        digest.update(text.as_bytes());
        digest.update([0]);
    }
    let hash: String = digest
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = root.join(format!("{VERSION}-{hash}"));
    if dir.join("weir-sdk").join("Cargo.toml").is_file() {
        return Ok(dir);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PluginCliError::Write { path, source }
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    // Written beside, then renamed into place: a crate never sees a half-written SDK, and two
    // `weir plugin new` at once do not interleave.
    let staging = root.join(format!(".{VERSION}-{hash}.{}", std::process::id()));
    for (path, text) in &files {
        let file = staging.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&file, text).map_err(io(&file))?;
    }
    if let Err(source) = std::fs::rename(&staging, &dir) {
        // Another process unpacked the same SDK first: theirs is as good.
        let _ = std::fs::remove_dir_all(&staging);
        if !dir.join("weir-sdk").join("Cargo.toml").is_file() {
            return Err(PluginCliError::Write { path: dir, source });
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names under `[dependencies]` of a manifest.
    fn dependencies(manifest: &str) -> Vec<String> {
        let table: toml::Table = manifest.parse().expect("a manifest");
        let mut names: Vec<String> = table
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn the_unpacked_manifests_have_the_dependencies_of_the_sdk_crates() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (repository, unpacked) in [
            ("sdk/Cargo.toml", SDK_MANIFEST),
            ("sdk/macros/Cargo.toml", MACROS_MANIFEST),
        ] {
            let text = std::fs::read_to_string(root.join(repository)).expect("the SDK manifest");
            assert_eq!(
                dependencies(&text),
                dependencies(unpacked),
                "{repository}: keep the manifest in host/src/plugin_cli/sdk.rs in step"
            );
        }
    }

    #[test]
    fn the_sdk_unpacks_once_with_its_sources_and_contract() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let sdk = unpack(root.path()).expect("unpacks");
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "src/testing.rs",
            "src/time.rs",
            "wit/plugin.wit",
        ] {
            assert!(sdk.join(file).is_file(), "{file}");
        }
        let macros = sdk.parent().expect("a parent").join("weir-sdk-macros");
        assert!(macros.join("src/lib.rs").is_file());
        assert!(macros.join("wit/plugin.wit").is_file());
        assert_eq!(unpack(root.path()).expect("unpacks again"), sdk);
        let entries = std::fs::read_dir(root.path()).expect("lists").count();
        assert_eq!(entries, 1, "one directory per SDK, no staging left");
    }
}
