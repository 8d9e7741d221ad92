//! Python and JavaScript plugins for the tests: built with `scripts/build-plugin` (which keeps
//! each component by the hash of what it is built from, under the target directory, so a rerun
//! skips componentizing), then compiled once into a compile cache that every test's plugin store
//! links to (a Python or JavaScript component takes tens of seconds to compile in a debug build).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use weir::plugin::{PluginEngine, PluginKind};

/// One build and compile of each plugin at a time in a test process: the tests that share a
/// plugin wait for the first to build it rather than build it again beside it (different plugins
/// build side by side).
static BUILDING: Mutex<Option<HashMap<String, Arc<Mutex<()>>>>> = Mutex::new(None);

/// The lock of plugin `dir`.
fn build_lock(dir: &str) -> Arc<Mutex<()>> {
    let mut locks = BUILDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks
        .get_or_insert_with(HashMap::new)
        .entry(dir.to_owned())
        .or_default()
        .clone()
}

/// Where built components, their cache and the shared compile cache live: beside the Rust test
/// plugins, under the target directory.
fn root() -> PathBuf {
    let rust_plugins = PathBuf::from(env!("WEIR_PLUGIN_DIR"));
    rust_plugins
        .ancestors()
        .nth(2)
        .expect("the plugin dir is <target>/wasm-plugins/wasm32-wasip2/release")
        .join("componentized")
}

/// The shared compile cache (`[plugins] store_dir`'s `compiled` directory of every test).
fn compiled_dir() -> PathBuf {
    root().join("compiled")
}

/// The component of the Python or JavaScript plugin in `dir` (relative to the workspace, such as
/// `plugins/python/telemetry-anomaly`), built if its inputs changed, and compiled into the shared
/// compile cache as a plugin of `kind`.
pub fn script_plugin(dir: &str, kind: PluginKind) -> PathBuf {
    let lock = build_lock(dir);
    let _one_at_a_time = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let name = dir.trim_end_matches('/').replace(['/', '-'], "_");
    let out = root().join(format!("{name}.wasm"));
    let workspace = crate::workspace_dir();
    let status = Command::new(crate::python())
        .arg(workspace.join("scripts/build-plugin"))
        .arg(workspace.join(dir))
        .arg("-o")
        .arg(&out)
        .arg("--cache")
        .arg(root().join("cache"))
        .status()
        .expect("run scripts/build-plugin");
    assert!(
        status.success(),
        "scripts/build-plugin {dir} failed (are componentize-py and componentize-js installed? run scripts/setup)"
    );
    let engine = PluginEngine::new()
        .expect("plugin engine")
        .with_cache(&compiled_dir());
    engine
        .load(&out, kind)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", out.display()));
    out
}

/// A plugin store directory under `dir` whose compile cache is the shared one: put it in the
/// configuration's `[plugins] store_dir`.
pub fn plugin_store(dir: &Path) -> PathBuf {
    let store = dir.join("plugin-store");
    link_compile_cache(&store);
    store
}

/// Makes the plugin store `store` (a configuration's `[plugins] store_dir`, created if needed)
/// use the shared compile cache.
pub fn link_compile_cache(store: &Path) {
    std::fs::create_dir_all(store).expect("plugin store");
    std::fs::create_dir_all(compiled_dir()).expect("compile cache");
    let link = store.join("compiled");
    if !link.exists() {
        std::os::unix::fs::symlink(compiled_dir(), &link).expect("link the compile cache");
    }
}
