//! Embeds the plugin SDK's sources (`sdk/` and `sdk/macros/`: their `src/` and `wit/`; the Python
//! SDK's `sdk/python/weir/*.py`; the JavaScript SDK's `sdk/js/*.js` and its `package.json`) in the
//! `weir` binary, so that `weir plugin new` can unpack them for a plugin crate anywhere on disk
//! (the SDK is not on crates.io). Writes `$OUT_DIR/sdk_files.rs`: a list of (path inside the
//! unpacked SDK, contents).

use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    // (directory in the repository, where it goes in the unpacked SDK)
    let trees = [
        ("sdk/src", "weir-sdk/src"),
        ("sdk/wit", "weir-sdk/wit"),
        ("sdk/macros/src", "weir-sdk-macros/src"),
        ("sdk/macros/wit", "weir-sdk-macros/wit"),
    ];
    // (directory, where it goes, which of its files: `None` for all, recursively)
    let trees = trees.into_iter().map(|(from, to)| (from, to, None)).chain([
        ("sdk/python/weir", "python/weir", Some(&[".py"][..])),
        ("sdk/js", "js", Some(&[".js", "package.json"][..])),
    ]);
    let mut entries = Vec::new();
    for (from, to, only) in trees {
        let dir = root.join(from);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files = Vec::new();
        match only {
            None => walk(&dir, &mut files),
            Some(suffixes) => files.extend(top_level(&dir, suffixes)),
        }
        files.sort();
        for file in files {
            // Directories are watched for added and removed files; each file for its contents.
            println!("cargo:rerun-if-changed={}", file.display());
            let relative = file
                .strip_prefix(&dir)
                .expect("walked under dir")
                .to_string_lossy()
                .replace('\\', "/");
            entries.push(format!(
                "    ({:?}, include_str!({:?})),\n",
                format!("{to}/{relative}"),
                file.display().to_string()
            ));
        }
    }
    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let code = format!(
        "/// The SDK's files: (path inside the unpacked SDK, contents).\n\
         pub(crate) const SDK_FILES: &[(&str, &str)] = &[\n{}];\n\n\
         /// The workspace's lockfile: a new plugin crate resolves the versions Weir is built and \
         tested with.\n\
         pub(crate) const WORKSPACE_LOCK: &str = include_str!({:?});\n",
        entries.concat(),
        lock.display().to_string()
    );
    let out = PathBuf::from(env_var("OUT_DIR")).join("sdk_files.rs");
    std::fs::write(&out, code).expect("cannot write sdk_files.rs");
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}

/// The files directly in `dir` whose names end with one of `suffixes` (not `node_modules`, not
/// tests, not the lockfile).
fn top_level(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            path.is_file()
                && name.is_some_and(|n| {
                    suffixes.iter().any(|s| n.ends_with(s)) && !n.contains(".test.")
                })
        })
        .collect()
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
