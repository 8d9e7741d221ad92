//! Loading, validating, swapping and calling WebAssembly plugins, of every kind.
//!
//! A plugin is compiled once per process and checked against the world of its kind
//! ([`PluginEngine::load`], [`PluginKind`]; its compiled form is cached on disk by [`cache`]),
//! pre-linked once into an `InstancePre`, and instantiated once per partition worker
//! ([`PluginInstance`]), lazily and again after a trap ([`InstanceSlot`]). Every store gets a
//! sandboxed WASI context, a memory limit and a per-call deadline (see [`sandbox`]).
//!
//! Each stage's plugin lives in a [`PluginSlot`]: the version that runs, every version ever
//! loaded (by content hash), and the probation of a new version. New versions come from the
//! watched plugin file ([`watch`]) or the admin API; workers pick them up at their next batch
//! boundary ([`slot`]).

pub mod bindings;
pub mod cache;
pub mod columns;
mod instance_slot;
pub mod loading;
pub mod package;
pub mod registry;
pub mod retire;
pub mod sandbox;
pub mod shadow;
pub mod signature;
pub mod slot;
pub mod standby;
mod state;
mod state_base;
pub mod store;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use instance_slot::InstanceSlot;
pub use registry::PluginRegistry;
pub use sandbox::PluginScope;
pub use slot::{
    ActivationCause, ActivationInfo, CallTally, PluginSlot, RollbackPolicy, SlotControl,
    SlotReport, SwapError, VersionInfo, VersionOrigin,
};
pub use state::{BaseWrite, KeyedState, ReplacedLayers, SnapshotError, StateSpill};

use bindings::{EventBatch, FinishRequest, FoldRequest, FoldResponse, JoinRequest, OutputBatch};

/// The kinds of plugin: one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// A per-event transform (`event-transform`).
    Transform,
    /// A window aggregate (`window-aggregate`).
    WindowAggregate,
    /// A join enrichment (`join-enrichment`).
    JoinEnrichment,
}

impl PluginKind {
    /// The world a plugin of this kind implements.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Transform => bindings::TRANSFORM_WORLD,
            PluginKind::WindowAggregate => bindings::AGGREGATE_WORLD,
            PluginKind::JoinEnrichment => bindings::JOIN_WORLD,
        }
    }

    /// The interface it exports, and the functions that interface must have.
    fn export(self) -> (&'static str, &'static [&'static str]) {
        match self {
            PluginKind::Transform => (bindings::TRANSFORM_EXPORT, &["process"]),
            PluginKind::WindowAggregate => (bindings::AGGREGATE_EXPORT, &["fold", "finish"]),
            PluginKind::JoinEnrichment => (bindings::JOIN_EXPORT, &["enrich"]),
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component.
    #[error("plugin {} is not a valid WebAssembly component: {reason}", path.display())]
    Compile {
        /// The plugin file.
        path: PathBuf,
        /// What the compiler said.
        reason: String,
    },
    /// The component does not implement the world its stage needs.
    #[error("plugin {} does not implement world `{world}`: {reason}", path.display())]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// The world the stage needs, such as `weir:plugin/event-transform@0.3.0`.
        world: String,
        /// What is missing or mistyped.
        reason: String,
    },
    /// The component compiled and matches its world but cannot be instantiated (its start-up
    /// traps or exceeds the limits).
    #[error("plugin {} cannot be instantiated: {reason}", path.display())]
    Instantiate {
        /// The plugin file.
        path: PathBuf,
        /// Why instantiation failed.
        reason: CallFailure,
    },
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// `plugins.trusted_keys` is set and the component is not signed by one of them.
    #[error("plugin {} is not trusted: {reason}", path.display())]
    Untrusted {
        /// The plugin file (or the upload).
        path: PathBuf,
        /// Why.
        reason: signature::Untrusted,
    },
}

/// A compiled, validated plugin of one kind of stage: what a [`PluginSlot`] holds. [`Plugin`]
/// implements it for every kind (per-event transform, window aggregate, join enrichment), so that
/// every stage kind gets hot swap, versions and rollback from the same slot.
pub trait LoadedPlugin: Send + Sync + 'static {
    /// The world the plugin implements, such as `weir:plugin/event-transform@0.3.0`.
    fn world(&self) -> &'static str;

    /// Compiles `bytes` as another version of this plugin and validates them against the same
    /// world; `path` names the new version.
    fn load_version(
        &self,
        engine: &PluginEngine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Arc<Self>, PluginError>
    where
        Self: Sized;

    /// Plugin name.
    fn name(&self) -> &Arc<str>;

    /// Plugin version (content hash).
    fn version(&self) -> &Arc<str>;

    /// The crate it was built from, when its component records it (`weir plugin build`).
    fn package(&self) -> Option<&package::PackageInfo> {
        None
    }

    /// Instantiates the plugin once and drops the instance, off the hot path, so that the first
    /// batch of the new version does not pay for what the first instantiation of a freshly
    /// compiled component costs. An error means the component cannot even be instantiated.
    fn warm_up(&self) -> Result<(), CallFailure> {
        Ok(())
    }
}

/// Why one call into a plugin (or its instantiation) failed. After any of these the instance
/// must be replaced.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin} version {version} trapped: {kind}")]
pub struct CallError {
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Plugin version (content hash).
    pub version: Arc<str>,
    /// What happened.
    pub kind: CallFailure,
}

impl CallError {
    /// Whether calling again (on a new instance) can help: only when the call ran out of time or
    /// the host could not provide memory the limit allows, which a busy machine may cause.
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

/// What made a plugin call fail, in the plugin author's terms. `Display` is the reason dead
/// letters and logs give.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallFailure {
    /// The call ran past its deadline (the stage's `call_timeout`).
    #[error("deadline exceeded: the call ran longer than {timeout:?}")]
    Deadline {
        /// The deadline.
        timeout: Duration,
    },
    /// The instance asked for more linear memory than its limit allows.
    #[error("{0}")]
    MemoryLimit(sandbox::MemoryRefusal),
    /// Growing linear memory failed below the limit (the host could not provide it).
    #[error("memory limit of {limit} bytes exceeded: {error}")]
    MemoryGrowth {
        /// The instance's limit.
        limit: u64,
        /// What wasmtime said.
        error: String,
    },
    /// The guest panicked.
    #[error("panic: {message}")]
    Panic {
        /// The panic message with its location, from the guest's stderr.
        message: String,
    },
    /// The guest trapped.
    #[error("trap: {code}{}", stderr.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Trap {
        /// The trap code.
        code: Trap,
        /// The guest's last words on stderr, when they explain the trap.
        stderr: Option<String>,
    },
    /// The call returned an output that refers to what is not there.
    #[error("invalid output: {what}")]
    InvalidOutput {
        /// What was wrong.
        what: String,
    },
    /// The plugin could not be instantiated (its start-up failed other than by the causes above).
    #[error("{error}")]
    Instantiation {
        /// What wasmtime said.
        error: String,
    },
    /// The call failed other than by the causes above.
    #[error("{error}")]
    Other {
        /// What wasmtime said.
        error: String,
    },
    /// A stage called a function of another kind of plugin (a bug in the stage).
    #[error("a {kind:?} plugin was called for a function of another kind of stage")]
    WrongKind {
        /// The plugin's kind.
        kind: PluginKind,
    },
}

impl CallFailure {
    /// Whether calling again can help (see [`CallError::retryable`]).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CallFailure::Deadline { .. } | CallFailure::MemoryGrowth { .. }
        )
    }
}

/// Compiles plugins and holds what every instance shares.
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    linker: Arc<Linker<StoreState>>,
    cache: Option<Arc<cache::CompileCache>>,
    /// Keys components must be signed by; empty: any component is compiled.
    trusted: Arc<signature::TrustedKeys>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// An engine with the sandbox settings and a linker holding the host's imports.
    pub fn new() -> Result<Self, PluginError> {
        let engine = sandbox::engine().map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        let add = |linker: &mut Linker<StoreState>| -> wasmtime::Result<()> {
            wasmtime_wasi::p2::add_to_linker_sync(linker)?;
            bindings::log::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| s)?;
            bindings::metrics::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| s)?;
            bindings::state::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| s)?;
            bindings::config::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| s)?;
            bindings::reference::add_to_linker::<_, HasSelf<StoreState>>(linker, |s| s)?;
            Ok(())
        };
        add(&mut linker).map_err(|e| PluginError::Engine(e.to_string()))?;
        Ok(PluginEngine {
            engine,
            linker: Arc::new(linker),
            cache: None,
            trusted: Arc::default(),
        })
    }

    /// This engine, compiling only components signed by one of `keys` (see [`signature`]).
    pub fn with_trusted_keys(mut self, keys: signature::TrustedKeys) -> Self {
        self.trusted = Arc::new(keys);
        self
    }

    /// The same engine, keeping compiled forms under `dir` so that a restart does not recompile
    /// (see [`cache::CompileCache`]).
    pub fn with_cache(mut self, dir: &Path) -> Self {
        self.cache = Some(Arc::new(cache::CompileCache::new(&self.engine, dir)));
        self
    }

    /// The compile cache, if any.
    pub fn cache(&self) -> Option<&cache::CompileCache> {
        self.cache.as_deref()
    }

    /// Compiles `bytes` into a component, through the compile cache when there is one.
    pub fn component(&self, path: &Path, bytes: &[u8]) -> Result<Component, PluginError> {
        let compile = || {
            Component::new(&self.engine, bytes).map_err(|e| PluginError::Compile {
                path: path.to_path_buf(),
                // Bytes that are not a binary are parsed as WebAssembly text, whose parse error
                // alone ("expected `(`") would not tell a user they sent the wrong file.
                reason: if bytes.starts_with(b"\0asm") {
                    format!("{e:#}")
                } else {
                    format!(
                        "it is not a WebAssembly binary (those start with the bytes `\\0asm`) nor WebAssembly text: {e:#}"
                    )
                },
            })
        };
        match &self.cache {
            Some(cache) => cache.get_or_compile(&self.engine, bytes, compile),
            None => compile(),
        }
    }

    /// The underlying wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, compiles and validates a per-event transform plugin.
    pub fn load_transform(&self, path: &Path) -> Result<Arc<Plugin>, PluginError> {
        self.load(path, PluginKind::Transform)
    }

    /// Compiles and validates a transform plugin from its bytes; `path` names it in errors.
    pub fn transform_from_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Arc<Plugin>, PluginError> {
        self.from_bytes(path, bytes, PluginKind::Transform)
    }

    /// Reads, compiles and validates a plugin of `kind`.
    pub fn load(&self, path: &Path, kind: PluginKind) -> Result<Arc<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.from_bytes(path, &bytes, kind)
    }

    /// Compiles a plugin from its bytes and checks that it implements the world of `kind`;
    /// `path` names it in errors.
    pub fn from_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        kind: PluginKind,
    ) -> Result<Arc<Plugin>, PluginError> {
        self.compile_plugin(path, bytes, kind).map(Arc::new)
    }

    /// [`PluginEngine::from_bytes`], before it is shared (named after `path`'s file).
    fn compile_plugin(
        &self,
        path: &Path,
        bytes: &[u8],
        kind: PluginKind,
    ) -> Result<Plugin, PluginError> {
        let wrong_world = |reason: String| PluginError::WrongWorld {
            path: path.to_path_buf(),
            world: kind.world().to_owned(),
            reason,
        };
        // Before anything of an untrusted component is compiled.
        let side = if self.trusted.is_empty() {
            None
        } else {
            signature::read_side_file(path)
        };
        self.trusted
            .verify(bytes, side.as_deref())
            .map_err(|reason| PluginError::Untrusted {
                path: path.to_path_buf(),
                reason,
            })?;
        let component = self.component(path, bytes)?;
        let (export, functions) = kind.export();
        check_export(&self.engine, &component, export, functions).map_err(&wrong_world)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| wrong_world(format!("its imports cannot be satisfied by Weir: {e:#}")))?;
        let wrong_type = |e: wasmtime::Error| {
            wrong_world(format!("export `{export}` has the wrong type: {e:#}"))
        };
        let exports = match kind {
            PluginKind::Transform => Exports::Transform(
                bindings::transform::GuestIndices::new(&pre).map_err(wrong_type)?,
            ),
            PluginKind::WindowAggregate => Exports::Aggregate(
                bindings::aggregate::GuestIndices::new(&pre).map_err(wrong_type)?,
            ),
            PluginKind::JoinEnrichment => {
                Exports::Join(bindings::join::GuestIndices::new(&pre).map_err(wrong_type)?)
            }
        };
        Ok(Plugin {
            name: plugin_name(path).into(),
            version: content_version(bytes).into(),
            package: package::read(bytes).map(Arc::new),
            path: path.to_path_buf(),
            kind,
            pre,
            exports,
        })
    }
}

/// Checks that `component` exports instance `export` with the named functions.
fn check_export(
    engine: &Engine,
    component: &Component,
    export: &str,
    functions: &[&str],
) -> Result<(), String> {
    let ty = component.component_type();
    let exported: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let Some((_, item)) = ty.exports(engine).find(|(name, _)| *name == export) else {
        let found = if exported.is_empty() {
            "nothing".to_owned()
        } else {
            exported.join(", ")
        };
        return Err(format!(
            "missing export `{export}` (the component exports {found})"
        ));
    };
    let ComponentItem::ComponentInstance(instance) = item.ty else {
        return Err(format!("export `{export}` is not an interface"));
    };
    for function in functions {
        if !instance.exports(engine).any(|(name, item)| {
            name == *function && matches!(item.ty, ComponentItem::ComponentFunc(_))
        }) {
            return Err(format!("missing export `{export}#{function}`"));
        }
    }
    Ok(())
}

/// A plugin's name: its file name without extension.
fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".to_owned())
}

/// A plugin's version: the first 12 hex digits of the SHA-256 of its bytes.
pub fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl LoadedPlugin for Plugin {
    fn world(&self) -> &'static str {
        self.kind.world()
    }

    fn load_version(
        &self,
        engine: &PluginEngine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Arc<Self>, PluginError> {
        let mut plugin = engine.compile_plugin(path, bytes, self.kind)?;
        // Every version of a stage's plugin goes by the stage's plugin name, however it came
        // (an upload has no file name of its own).
        plugin.name = self.name.clone();
        Ok(Arc::new(plugin))
    }

    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn version(&self) -> &Arc<str> {
        &self.version
    }

    fn package(&self) -> Option<&package::PackageInfo> {
        self.package.as_deref()
    }

    fn warm_up(&self) -> Result<(), CallFailure> {
        // The default limits of a stage: a stage's own limits apply to its workers' instances.
        let settings = Arc::new(InstanceSettings {
            scope: PluginScope {
                pipeline: "(warm-up)".into(),
                stage: "(warm-up)".into(),
                partition: 0,
                plugin: self.name.clone(),
                version: self.version.clone(),
            },
            config_json: "{}".into(),
            max_memory_bytes: 256 * 1024 * 1024,
            call_timeout: Duration::from_secs(5),
            reference: crate::reference::ReferenceTables::none(),
        });
        let plugin = Arc::new(Plugin {
            name: self.name.clone(),
            version: self.version.clone(),
            package: self.package.clone(),
            path: self.path.clone(),
            kind: self.kind,
            pre: self.pre.clone(),
            exports: self.exports.clone(),
        });
        PluginInstance::new(plugin, settings, KeyedState::default())
            .map(drop)
            .map_err(|e| e.kind)
    }
}

/// A compiled plugin, validated against the world of its kind, ready to instantiate.
pub struct Plugin {
    name: Arc<str>,
    version: Arc<str>,
    /// The crate it was built from, when `weir plugin build` recorded it.
    package: Option<Arc<package::PackageInfo>>,
    path: PathBuf,
    kind: PluginKind,
    pre: InstancePre<StoreState>,
    exports: Exports,
}

/// Where the export of each kind of plugin is, found once per compiled plugin.
#[derive(Clone)]
enum Exports {
    Transform(bindings::transform::GuestIndices),
    Aggregate(bindings::aggregate::GuestIndices),
    Join(bindings::join::GuestIndices),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("package", &self.package)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Its kind (the world it implements).
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Plugin name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Plugin version (content hash).
    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    /// The crate it was built from (name and version), when its component records it.
    pub fn package(&self) -> Option<&package::PackageInfo> {
        self.package.as_deref()
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Per-instance settings.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// Who the instance runs for.
    pub scope: PluginScope,
    /// The stage's configuration as a JSON object.
    pub config_json: Arc<str>,
    /// Largest linear memory, in bytes.
    pub max_memory_bytes: u64,
    /// Longest one call may run.
    pub call_timeout: Duration,
    /// The stage's reference tables, for the `reference` import.
    pub reference: crate::reference::ReferenceTables,
}

impl InstanceSettings {
    /// These settings with the scope of `plugin` (its name and version).
    pub fn for_plugin(&self, plugin: &Plugin) -> Arc<InstanceSettings> {
        let mut settings = self.clone();
        settings.scope = PluginScope {
            plugin: plugin.name().clone(),
            version: plugin.version().clone(),
            ..settings.scope
        };
        Arc::new(settings)
    }
}

/// What a store carries for its instance.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: sandbox::InstanceLimiter,
    settings: Arc<InstanceSettings>,
    last_stderr: sandbox::LastStderrLine,
    /// The stage's keyed state in this partition.
    pub keyed: KeyedState,
    /// Counters the plugin added to since they were last taken.
    pub counters: BTreeMap<String, u64>,
    /// Process-unique id of this instance, for [`KeyedState::claim_cache`].
    instance_id: u64,
    /// Drop the plugin's log records (while it warms up on a throwaway batch).
    quiet: bool,
}

/// Empty writes with room for `keys` keys of `key_bytes` and values of `value_bytes` in all.
fn writes_with_capacity(
    keys: usize,
    key_bytes: usize,
    value_bytes: usize,
) -> bindings::state::Writes {
    bindings::state::Writes {
        keys: Vec::with_capacity(key_bytes),
        key_ends: Vec::with_capacity(keys * 4),
        values: Vec::with_capacity(value_bytes),
        value_ends: Vec::with_capacity(keys * 4),
        deletes: Vec::with_capacity(keys),
    }
}

/// Appends a write of `key` (`None`: a delete) to `writes`; false when an offset would not fit
/// the WIT's u32-sized lists.
fn push_write(writes: &mut bindings::state::Writes, key: &[u8], value: Option<&[u8]>) -> bool {
    let (Some(key_end), Some(value_end)) = (
        u32::try_from(writes.keys.len() + key.len()).ok(),
        u32::try_from(writes.values.len() + value.map_or(0, <[u8]>::len)).ok(),
    ) else {
        return false;
    };
    writes.keys.extend_from_slice(key);
    columns::push_u32(&mut writes.key_ends, key_end);
    writes.values.extend_from_slice(value.unwrap_or_default());
    columns::push_u32(&mut writes.value_ends, value_end);
    columns::push_bool(&mut writes.deletes, value.is_none());
    true
}

/// Most keys, and bytes of keys and values, a state may have for `check-cache` to hand an
/// instance all of it (the WIT says 16,384 keys).
const WHOLE_STATE_KEYS: usize = 16_384;
const WHOLE_STATE_BYTES: usize = 8 << 20;

/// The next [`StoreState::instance_id`] (0 means no instance).
static NEXT_INSTANCE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::log::Host for StoreState {
    fn write(
        &mut self,
        level: bindings::log::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        use bindings::log::Level;
        if self.quiet {
            return;
        }
        let s = &self.settings.scope;
        let fields = if fields.is_empty() {
            String::new()
        } else {
            fields.iter().map(|(k, v)| format!(" {k}={v}")).collect()
        };
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "weir::plugin",
                    pipeline = %s.pipeline, stage = %s.stage, partition = s.partition,
                    plugin = %s.plugin, version = %s.version, "{message}{fields}"
                )
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }
}

impl bindings::metrics::Host for StoreState {
    fn counter_add(&mut self, name: String, delta: u64) {
        let counter = self.counters.entry(name).or_default();
        *counter = counter.saturating_add(delta);
    }
}

impl bindings::state::Host for StoreState {
    fn get(&mut self, key: Vec<u8>) -> Option<Vec<u8>> {
        self.keyed.get(&key).map(<[u8]>::to_vec)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.keyed.put(key, value);
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.keyed.delete(key);
    }

    fn check_cache(&mut self) -> Option<bindings::state::CacheStart> {
        if self.keyed.claim_cache(self.instance_id) {
            return None;
        }
        // A small state goes whole: the instance then asks for nothing in its first batches.
        // A large one would cost more to copy than its misses: the keys written last go.
        // The sizes only for a state that may go whole: summing them visits every key.
        let sizes = (self.keyed.len() <= WHOLE_STATE_KEYS)
            .then(|| self.keyed.committed_sizes())
            .filter(|(_, key_bytes, value_bytes)| key_bytes + value_bytes <= WHOLE_STATE_BYTES);
        let mut whole = sizes.is_some();
        // Sized once from the lengths, so that the copy does not grow them as it goes.
        let (keys, key_bytes, value_bytes) = sizes.unwrap_or_default();
        let mut entries = writes_with_capacity(keys, key_bytes, value_bytes);
        if whole {
            for (key, value) in self.keyed.committed_entries() {
                if !push_write(&mut entries, key, Some(value)) {
                    whole = false;
                    break;
                }
            }
        }
        if !whole {
            for list in [&mut entries.keys, &mut entries.values] {
                list.clear();
            }
            entries.key_ends.clear();
            entries.value_ends.clear();
            entries.deletes.clear();
            for key in self.keyed.recent_keys() {
                if !push_write(&mut entries, key, self.keyed.committed(key)) {
                    break;
                }
            }
        }
        Some(bindings::state::CacheStart { entries, whole })
    }

    fn set_ttl(&mut self, ttl_ms: u64) {
        self.keyed.set_call_ttl(ttl_ms);
    }

    fn write_batch(&mut self, writes: bindings::state::Writes) {
        let (mut key_start, mut value_start) = (0usize, 0usize);
        for (index, key_end) in columns::u32s(&writes.key_ends).enumerate() {
            let key_end = key_end as usize;
            let value_end =
                columns::u32_at(&writes.value_ends, index).map_or(value_start, |end| end as usize);
            // Offsets come from the guest: ignore a malformed entry rather than panic.
            let (Some(key), Some(value)) = (
                writes.keys.get(key_start..key_end),
                writes.values.get(value_start..value_end),
            ) else {
                tracing::warn!(
                    plugin = %self.settings.scope.plugin, index,
                    "plugin sent a state write with offsets outside its buffers; ignored"
                );
                break;
            };
            if columns::bool_at(&writes.deletes, index).unwrap_or(false) {
                self.keyed.delete(key.to_vec());
            } else {
                self.keyed.put(key.to_vec(), value.to_vec());
            }
            key_start = key_end;
            value_start = value_end;
        }
    }
}

impl bindings::config::Host for StoreState {
    fn get(&mut self) -> String {
        self.settings.config_json.to_string()
    }
}

impl bindings::reference::Host for StoreState {
    fn lookup(&mut self, table: String, key: String) -> Option<String> {
        self.settings
            .reference
            .lookup(&table, &key)
            .map(|row| row.to_string())
    }
}

impl bindings::types::Host for StoreState {}

/// One instance of a plugin, owned by one partition worker.
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    store: Store<StoreState>,
    guest: Guest,
    deadline_ticks: u64,
    /// The top-level body fields the plugin last asked for (`wanted-fields`), projected into
    /// every transform batch and fold request sent to this instance; a new instance starts with
    /// none.
    wanted_fields: Vec<String>,
}

/// Most fields a plugin can have projected (the rest of a longer list is ignored: the plugin
/// reads those from the body).
const MAX_WANTED_FIELDS: usize = 256;

/// The loaded export of an instance.
enum Guest {
    Transform(bindings::transform::Guest),
    Aggregate(bindings::aggregate::Guest),
    Join(bindings::join::Guest),
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl PluginInstance {
    /// Instantiates `plugin` with `keyed` as its starting state.
    pub fn new(
        plugin: Arc<Plugin>,
        settings: Arc<InstanceSettings>,
        keyed: KeyedState,
    ) -> Result<Self, CallError> {
        let last_stderr = sandbox::LastStderrLine::default();
        let limits = sandbox::InstanceLimiter::new(settings.max_memory_bytes);
        let deadline_ticks = sandbox::deadline_ticks(settings.call_timeout);
        let state = StoreState {
            wasi: sandbox::wasi_context(&settings.scope, &last_stderr),
            table: ResourceTable::new(),
            limits,
            settings,
            last_stderr,
            keyed,
            counters: BTreeMap::new(),
            instance_id: NEXT_INSTANCE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            quiet: false,
        };
        let mut store = Store::new(plugin.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks);
        let error = |store: &mut Store<StoreState>, e: wasmtime::Error| {
            call_error(&plugin, store, &e, Stage::Instantiation)
        };
        let instance = match sandbox::run_blocking(|| plugin.pre.instantiate(&mut store)) {
            Ok(instance) => instance,
            Err(e) => return Err(error(&mut store, e)),
        };
        let guest = match &plugin.exports {
            Exports::Transform(indices) => {
                indices.load(&mut store, &instance).map(Guest::Transform)
            }
            Exports::Aggregate(indices) => {
                indices.load(&mut store, &instance).map(Guest::Aggregate)
            }
            Exports::Join(indices) => indices.load(&mut store, &instance).map(Guest::Join),
        };
        let guest = match guest {
            Ok(guest) => guest,
            Err(e) => return Err(error(&mut store, e)),
        };
        Ok(PluginInstance {
            plugin,
            store,
            guest,
            deadline_ticks,
            wanted_fields: Vec::new(),
        })
    }

    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Calls a transform on one batch. State written during the call is kept only if it returns
    /// an output that refers to events of the batch only; otherwise the call failed (and the
    /// instance must be replaced, like after a trap).
    ///
    /// The batch first gets the projection of the fields this instance asked for, unless it
    /// already has it (the layout functions of [`crate::stage::batch`] clear it); the fields the
    /// output asks for apply from the next call on.
    pub fn process(&mut self, batch: &mut EventBatch) -> Result<OutputBatch, CallError> {
        self.project_into(batch);
        let batch = &*batch;
        let events = crate::stage::batch::event_count(batch);
        let check = |output: &OutputBatch| check_output(output, events);
        let output = self.call(check, |guest, store| match guest {
            Guest::Transform(guest) => Some(guest.call_process(store, batch)),
            _ => None,
        })?;
        self.learn_wanted_fields(&output.wanted_fields);
        Ok(output)
    }

    /// Gives `batch` the projection of the fields this instance asked for, unless it has it.
    fn project_into(&self, batch: &mut EventBatch) {
        if batch.field_names != self.wanted_fields {
            crate::stage::batch::project(batch, &self.wanted_fields);
        }
    }

    /// Keeps `wanted` (a plugin's `wanted-fields`) as the fields to project from now on, each
    /// name once; an empty list changes nothing.
    fn learn_wanted_fields(&mut self, wanted: &[String]) {
        if wanted.is_empty() || wanted == self.wanted_fields.as_slice() {
            return;
        }
        self.wanted_fields.clear();
        for name in wanted {
            if self.wanted_fields.len() < MAX_WANTED_FIELDS && !self.wanted_fields.contains(name) {
                self.wanted_fields.push(name.clone());
            }
        }
    }

    /// Calls a window aggregate's `fold`, with the request's events projected as in
    /// [`PluginInstance::process`].
    pub fn fold(&mut self, request: &mut FoldRequest) -> Result<FoldResponse, CallError> {
        self.project_into(&mut request.events);
        let request = &*request;
        let response = self.call(
            |_| Ok(()),
            |guest, store| match guest {
                Guest::Aggregate(guest) => Some(guest.call_fold(store, request)),
                _ => None,
            },
        )?;
        self.learn_wanted_fields(&response.wanted_fields);
        Ok(response)
    }

    /// Calls a window aggregate's `finish`.
    pub fn finish(&mut self, request: &FinishRequest) -> Result<OutputBatch, CallError> {
        self.call(
            |_| Ok(()),
            |guest, store| match guest {
                Guest::Aggregate(guest) => Some(guest.call_finish(store, request)),
                _ => None,
            },
        )
    }

    /// Calls a join enrichment's `enrich`, with the request's events projected as in
    /// [`PluginInstance::process`].
    pub fn enrich(&mut self, request: &mut JoinRequest) -> Result<OutputBatch, CallError> {
        self.project_into(&mut request.events);
        let request = &*request;
        let output = self.call(
            |_| Ok(()),
            |guest, store| match guest {
                Guest::Join(guest) => Some(guest.call_enrich(store, request)),
                _ => None,
            },
        )?;
        self.learn_wanted_fields(&output.wanted_fields);
        Ok(output)
    }

    /// One call into the plugin under the deadline: keyed-state writes are committed if it
    /// returns an output that passes `check` and discarded otherwise. `call` gives `None` when the plugin's kind has no such
    /// function (a bug in the calling stage, reported as a failed call).
    fn call<R>(
        &mut self,
        check: impl FnOnce(&R) -> Result<(), String>,
        call: impl FnOnce(&Guest, &mut Store<StoreState>) -> Option<wasmtime::Result<R>> + Send,
    ) -> Result<R, CallError>
    where
        R: Send,
    {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let (guest, store) = (&self.guest, &mut self.store);
        match sandbox::run_blocking(|| call(guest, store)) {
            Some(Ok(output)) => match check(&output) {
                Ok(()) => {
                    self.store.data_mut().keyed.commit();
                    Ok(output)
                }
                Err(what) => {
                    self.store.data_mut().keyed.rollback();
                    Err(CallError {
                        plugin: self.plugin.name.clone(),
                        version: self.plugin.version.clone(),
                        kind: CallFailure::InvalidOutput { what },
                    })
                }
            },
            Some(Err(e)) => {
                self.store.data_mut().keyed.rollback();
                Err(call_error(&self.plugin, &mut self.store, &e, Stage::Call))
            }
            None => Err(CallError {
                plugin: self.plugin.name.clone(),
                version: self.plugin.version.clone(),
                kind: CallFailure::WrongKind {
                    kind: self.plugin.kind,
                },
            }),
        }
    }

    /// Runs a transform once on `batch` and throws the result away, so that a new instance
    /// touches the memory a batch needs before its first real batch (at a hot swap, this runs
    /// off the worker's thread). It runs on `throwaway` state (a copy, or empty), its log records
    /// and counters are dropped, and its state cache starts again at the first real call (see
    /// [`KeyedState::claim_cache`]). An error means the instance cannot be used.
    pub fn rehearse(&mut self, batch: &EventBatch, throwaway: KeyedState) -> Result<(), CallError> {
        let state = std::mem::replace(&mut self.store.data_mut().keyed, throwaway);
        self.store.data_mut().quiet = true;
        // A copy, since the call adds this instance's projection (off the hot path).
        let result = self.process(&mut batch.clone()).map(drop);
        let data = self.store.data_mut();
        data.quiet = false;
        data.counters.clear();
        data.keyed = state;
        result
    }

    /// Hands the instance the keyed state to use in its next calls.
    pub fn put_keyed_state(&mut self, state: KeyedState) {
        self.store.data_mut().keyed = state;
    }

    /// Bytes of linear memory the instance holds.
    pub fn memory_in_use(&self) -> usize {
        self.store.data().limits.memory_in_use()
    }

    /// The keyed state (committed writes only).
    pub fn keyed_state(&self) -> &KeyedState {
        &self.store.data().keyed
    }

    /// The keyed state, to take its changes or expire keys (between calls).
    pub fn keyed_state_mut(&mut self) -> &mut KeyedState {
        &mut self.store.data_mut().keyed
    }

    /// Takes the keyed state out, to move it into a replacement instance.
    pub fn take_keyed_state(&mut self) -> KeyedState {
        std::mem::take(&mut self.store.data_mut().keyed)
    }

    /// Takes the counters the plugin added to since the last call of this.
    pub fn take_counters(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.store.data_mut().counters)
    }
}

/// Checks that every index in a plugin's output refers to the batch of `events` events and to
/// the output's own lists, so that a wrong or hostile plugin cannot make the host misbehave.
pub fn check_output(output: &OutputBatch, events: usize) -> Result<(), String> {
    let mut start = 0usize;
    if !columns::whole_records(&output.emitted) {
        return Err(format!(
            "an emitted column of {} bytes, not a whole number of {}-byte records",
            output.emitted.len(),
            columns::EMITTED_RECORD_BYTES
        ));
    }
    for emitted in columns::emitted(&output.emitted) {
        if emitted.event as usize >= events {
            return Err(format!(
                "a record for event {} of a batch of {events}",
                emitted.event
            ));
        }
        if emitted.target as usize >= output.targets.len() {
            return Err(format!(
                "a record for target {} of {}",
                emitted.target,
                output.targets.len()
            ));
        }
        let end = emitted.payload_end as usize;
        if end < start || end > output.payloads.len() {
            return Err(format!(
                "payload end {end} after {start} in a buffer of {} bytes",
                output.payloads.len()
            ));
        }
        start = end;
    }
    for rejection in &output.rejected {
        if rejection.event as usize >= events {
            return Err(format!(
                "a rejection of event {} of a batch of {events}",
                rejection.event
            ));
        }
    }
    Ok(())
}

/// Whether a failure happened while instantiating or in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Instantiation,
    Call,
}

/// Explains a failed call in the plugin author's terms.
fn call_error(
    plugin: &Plugin,
    store: &mut Store<StoreState>,
    error: &wasmtime::Error,
    during: Stage,
) -> CallError {
    let limits = &mut store.data_mut().limits;
    let (refusal, grow_failed) = (limits.take_refusal(), limits.take_grow_failure());
    let data = store.data();
    let stderr = data.last_stderr.take();
    let kind = if let Some(refusal) = refusal {
        CallFailure::MemoryLimit(refusal)
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallFailure::Deadline {
                timeout: data.settings.call_timeout,
            },
            Some(Trap::UnreachableCodeReached) if !stderr.is_empty() => {
                CallFailure::Panic { message: stderr }
            }
            Some(&code) => CallFailure::Trap {
                code,
                // The guest's words explain an abort, not a wild memory access.
                stderr: (!matches!(code, Trap::HeapMisaligned | Trap::MemoryOutOfBounds)
                    && !stderr.is_empty())
                .then_some(stderr),
            },
            None if grow_failed => CallFailure::MemoryGrowth {
                limit: data.settings.max_memory_bytes,
                error: format!("{error:#}"),
            },
            None => match during {
                Stage::Instantiation => CallFailure::Instantiation {
                    error: format!("{error:#}"),
                },
                Stage::Call => CallFailure::Other {
                    error: format!("{error:#}"),
                },
            },
        }
    };
    CallError {
        plugin: plugin.name.clone(),
        version: plugin.version.clone(),
        kind,
    }
}

#[cfg(test)]
#[path = "call_error_tests.rs"]
mod call_error_tests;
