//! Builds the example plugins as WebAssembly components before the tests run, so that no test
//! depends on a hand-run build step, and tells the tests where they are (`WEIR_PLUGIN_DIR`).

use std::path::PathBuf;
use std::process::Command;

/// Plugin packages the tests load: the examples, and the test plugins of `tests/plugins/` (other
/// versions of the anomaly rule, versions that always trap, and hostile plugins).
const PLUGINS: &[&str] = &[
    "telemetry-anomaly",
    "passthrough",
    "telemetry-aggregates",
    "device-health",
    "window-collect",
    "booking-categorize",
    "booking-join",
    "anomaly-v2",
    "anomaly-v3",
    "trap-always",
    "window-trap-always",
    "join-trap-always",
    "tally",
    "tally-trap-marked",
    "source-tag",
    "hostile-loop",
    "hostile-memory",
    "hostile-panic",
    "hostile-file",
    "hostile-socket",
    "hostile-env",
];

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf();
    for watched in ["sdk", "plugins", "wit", "tests/plugins"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    // A target directory of its own: the outer cargo holds the lock on the main one.
    let outer_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target_dir = outer_target.join("wasm-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir);
    for plugin in PLUGINS {
        command.args(["-p", plugin]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .expect("cannot run cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed (is the target installed? run scripts/setup)"
    );
    let plugin_dir = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=WEIR_PLUGIN_DIR={}", plugin_dir.display());
    println!("cargo:rustc-env=WEIR_WORKSPACE_DIR={}", workspace.display());
}
