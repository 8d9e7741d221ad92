//! A plugin crate outside this repository builds against the SDK as packaged: `cargo package`
//! packs `weir-sdk` and `weir-sdk-macros` (each with the files of its own crate only), both are
//! unpacked into a temporary directory outside the repository, and the crate of the README's
//! example plugin there depends on the unpacked `weir-sdk` by path and is built for
//! `wasm32-wasip2` into a component. This fails if the SDK reads any file outside its own crates
//! (the WIT contract, say), which a path or git dependency on a checkout would not notice.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The exported interface of the `event-transform` world, as a component names it.
const TRANSFORM_EXPORT: &str = "weir:plugin/transform@0.3.0";

/// The version of both SDK crates (the workspace's).
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn a_plugin_outside_the_repository_builds_against_the_packaged_sdk() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = sdk.parent().expect("sdk/ sits in the workspace");
    let outside = tempfile::tempdir().expect("cannot create a temporary directory");
    assert!(
        !outside.path().starts_with(workspace),
        "the temporary directory {} must be outside the repository",
        outside.path().display()
    );
    let target_dir = shared_target_dir();
    let packages = package_sdk(workspace, &target_dir.join("sdk-package"));
    for name in ["weir-sdk", "weir-sdk-macros"] {
        let file = packages.join(format!("{name}-{VERSION}.crate"));
        run(Command::new("tar")
            .arg("xzf")
            .arg(&file)
            .arg("-C")
            .arg(outside.path()));
    }
    let plugin = outside.path().join("plugin");
    write_plugin_crate(&plugin, outside.path(), sdk, workspace);

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(&plugin)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir);
    // Flags meant for the host build must not leak into the guest build (as in tests/build.rs).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    let output = command.output().expect("cannot run cargo");
    assert!(
        output.status.success(),
        "building a plugin outside the repository failed (is the wasm32-wasip2 target installed? \
         run scripts/setup):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let wasm = target_dir.join("wasm32-wasip2/release/weir_outside_plugin.wasm");
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| panic!("cannot read the component {}: {e}", wasm.display()));
    // A component's preamble: the Wasm magic, then version 0x0d and layer 1 (a core module has
    // version 1 and layer 0).
    assert_eq!(
        bytes.get(..8),
        Some(&b"\0asm\x0d\x00\x01\x00"[..]),
        "{} is not a WebAssembly component",
        wasm.display()
    );
    assert!(
        bytes
            .windows(TRANSFORM_EXPORT.len())
            .any(|w| w == TRANSFORM_EXPORT.as_bytes()),
        "the component does not export {TRANSFORM_EXPORT}"
    );
}

/// Packs both SDK crates with `cargo package` (together, so that `weir-sdk`'s dependency on the
/// unpublished macros resolves to the one packed beside it) into `target_dir`; returns the
/// directory of the `.crate` files.
fn package_sdk(workspace: &Path, target_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let package = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .current_dir(workspace)
            .args(["package", "-p", "weir-sdk-macros", "-p", "weir-sdk"])
            // The build of the unpacked crates below is the verification.
            .args(["--no-verify", "--allow-dirty"])
            .env("CARGO_TARGET_DIR", target_dir);
        if offline {
            command.arg("--offline");
        }
        command.output().expect("cannot run cargo package")
    };
    // Offline first: the registry index the workspace's own build used is enough, and quicker.
    let mut output = package(true);
    if !output.status.success() {
        output = package(false);
    }
    assert!(
        output.status.success(),
        "cargo package of the SDK failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target_dir.join("package")
}

/// Runs `command`, which must succeed.
fn run(command: &mut Command) {
    let output = command.output().expect("cannot run a command");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes the crate of the README's plugin (`tests/readme/plugin.rs`) into `dir`: a workspace of
/// its own, depending on the SDK crates unpacked in `unpacked`, with the repository's lockfile so
/// that it resolves the versions the workspace builds (without asking the registry), and the
/// workspace's release profile so that it reuses the dependencies the workspace compiled for its
/// own plugins.
fn write_plugin_crate(dir: &Path, unpacked: &Path, sdk: &Path, workspace: &Path) {
    let root_manifest = read(&workspace.join("Cargo.toml"));
    let path_of = |name: &str| {
        unpacked
            .join(format!("{name}-{VERSION}"))
            .display()
            .to_string()
    };
    let manifest = format!(
        r#"[package]
name = "weir-outside-plugin"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# The packed weir-sdk depends on weir-sdk-macros from the registry, where it is not published.
[patch.crates-io]
weir-sdk-macros = {{ path = {macros:?} }}

[workspace]

{profile}
"#,
        sdk = path_of("weir-sdk"),
        macros = path_of("weir-sdk-macros"),
        profile = release_profile(&root_manifest),
    );
    std::fs::create_dir_all(dir.join("src")).expect("cannot create the plugin's src/");
    write(&dir.join("Cargo.toml"), &manifest);
    write(
        &dir.join("Cargo.lock"),
        &read(&workspace.join("Cargo.lock")),
    );
    write(
        &dir.join("src/lib.rs"),
        &read(&sdk.join("tests/readme/plugin.rs")),
    );
}

/// The `[profile.release]` table of a manifest, as text (empty if it has none).
fn release_profile(manifest: &str) -> String {
    let mut table = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            inside = line.trim() == "[profile.release]";
        }
        if inside {
            table.push_str(line);
            table.push('\n');
        }
    }
    table
}

/// Where the workspace's tests build their plugins (`tests/build.rs`): a directory of the test
/// run's own target directory, which this test binary sits in (`<target>/debug/deps/`). Not the
/// target directory itself: the cargo that runs the tests holds its lock.
fn shared_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test binary");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary sits in <target>/<profile>/deps/");
    target.join("wasm-plugins")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
