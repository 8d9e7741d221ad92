//! `weir plugin`: the plugin author's commands. `new` writes a plugin crate of one kind (with a
//! native harness test and a test case), `build` compiles it into a component, checks it against
//! the world of its kind with the host's own loader and records the crate's name and version in
//! it (see [`crate::plugin::package`]), `test` runs the component through the host's stage code
//! over the crate's cases, `deploy` (optionally after a shadow run), `list`, `status` and
//! `rollback` work on a running host through its admin API.

mod build;
mod deploy;
mod new;
mod remote;
mod script;
mod sdk;
mod test;

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

pub use build::{Built, build, build_signed, keygen, sign_file};
pub use deploy::{
    Deployed, StageRef, deploy, list, rollback, shadow, shadow_text, stage_report, status, table,
};
pub use new::{NewPlugin, SdkSource, new};
pub use remote::{Answer, Remote};
pub use script::Lang;
pub use test::{
    CaseResult, CaseSettings, DEAD_LETTERS, Outputs, TestTarget, run_case, target, test,
};

use crate::plugin::PluginKind;

/// The subcommands of `weir plugin`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin crate (or a Python or JavaScript plugin directory): a small working
    /// example of its kind, a native test and a test case. It builds anywhere on disk, with the
    /// SDK this `weir` carries.
    New {
        /// The crate's name (letters, digits, `-` and `_`, starting with a letter).
        name: String,
        /// The kind of stage it is for.
        #[arg(long, value_enum)]
        kind: Kind,
        /// The language to write it in (Python and JavaScript plugins are built with
        /// componentize-py and componentize-js, which a Weir checkout's `scripts/setup`
        /// installs).
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Where to write it (default: `./NAME`); must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Depend on the SDK of a Weir checkout (its `sdk/` directory) instead of the one this
        /// `weir` carries.
        #[arg(long, value_name = "PATH", conflicts_with = "sdk_git")]
        sdk: Option<PathBuf>,
        /// Depend on the SDK from a git repository of Weir.
        #[arg(long, value_name = "URL")]
        sdk_git: Option<String>,
    },
    /// Build a plugin crate into a component for `wasm32-wasip2` (release), or a Python or
    /// JavaScript plugin with componentize-py or componentize-js, check it against the world of
    /// its kind and record its name and version in it.
    Build {
        /// The plugin crate (default: the current directory).
        dir: Option<PathBuf>,
        /// Sign the component with this private key (from `weir plugin keygen`), for hosts with
        /// `plugins.trusted_keys`.
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for signing components: the private key in FILE, the public key
    /// (for `plugins.trusted_keys`) in FILE.pub and on the standard output.
    Keygen {
        /// Where to write the private key; must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign an existing component (built by any toolchain) in place, or beside it in
    /// `FILE.sig` with `--detached`.
    Sign {
        /// The component.
        file: PathBuf,
        /// The private key (from `weir plugin keygen`).
        #[arg(long, value_name = "KEYFILE")]
        key: PathBuf,
        /// Write the signature to `FILE.sig` instead of into the component.
        #[arg(long)]
        detached: bool,
    },
    /// Run a built component through the host's own stage code over each test case of its crate
    /// (`cases/`), and compare what each output got with what the case expects.
    Test {
        /// The plugin crate (built first) or a built `.wasm` file (default: the current
        /// directory).
        path: Option<PathBuf>,
        /// Write what each output got as the case's expectation.
        #[arg(long)]
        bless: bool,
    },
    /// Upload a component to a stage of a running host (its admin API) and wait for the outcome:
    /// activated (once through its probation), refused, or rolled back after its probation.
    Deploy {
        /// The component (`weir plugin build` says where it is).
        file: PathBuf,
        /// The admin API's URL, such as `http://127.0.0.1:9464` (default: `WEIR_ADMIN_URL`, else
        /// that one).
        #[arg(long, visible_alias = "admin", value_name = "URL")]
        to: Option<String>,
        /// The admin token, sent as a bearer token (default: `WEIR_ADMIN_TOKEN`).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// Over https: trust the server certificates this CA (PEM) signed, instead of the
        /// system's roots (default: `WEIR_ADMIN_CA_FILE`).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// The stage, as `PIPELINE/STAGE`.
        #[arg(long, value_name = "PIPELINE/STAGE")]
        stage: StageRef,
        /// How long to wait for the end of the probation (or of the shadow run), in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        wait: u64,
        /// First run the component beside the active version on the next N live events of each
        /// partition, on a copy of the state, without delivering its outputs, and report how
        /// their outputs differ. Without `--activate-if-equal`, nothing is activated.
        #[arg(long, value_name = "N")]
        shadow: Option<u64>,
        /// With `--shadow`: end the run after this long even if some partitions got fewer than N
        /// events (they are reported as partly covered, or not covered); default: `--wait`.
        #[arg(long, value_name = "SECONDS", requires = "shadow")]
        shadow_for: Option<u64>,
        /// With `--shadow`: activate the component (and wait for its probation) only when no
        /// record differs.
        #[arg(long, requires = "shadow")]
        activate_if_equal: bool,
    },
    /// List every stage's plugin of a running host.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// One stage's plugin of a running host: its versions and latest activations.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// The stage, as `PIPELINE/STAGE`.
        #[arg(long, value_name = "PIPELINE/STAGE")]
        stage: StageRef,
    },
    /// Activate an earlier version of a stage's plugin (default: the one before the active one).
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        /// The stage, as `PIPELINE/STAGE`.
        #[arg(long, value_name = "PIPELINE/STAGE")]
        stage: StageRef,
        /// The version to activate (its content hash, as `weir plugin status` lists it).
        #[arg(long = "to", value_name = "VERSION")]
        version: Option<String>,
    },
}

/// Where a running host's admin API is, and its token.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The admin API's URL, such as `http://127.0.0.1:9464` (default: `WEIR_ADMIN_URL`, else
    /// that one).
    #[arg(long = "admin", value_name = "URL")]
    pub url: Option<String>,
    /// The admin token, sent as a bearer token (default: `WEIR_ADMIN_TOKEN`).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Over https: trust the server certificates this CA (PEM) signed, instead of the system's
    /// roots (default: `WEIR_ADMIN_CA_FILE`).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The environment variable naming the admin API's URL when no flag does.
pub const ADMIN_URL_ENV: &str = "WEIR_ADMIN_URL";

/// The environment variable naming the CA file for an https admin API when no flag does.
pub const ADMIN_CA_FILE_ENV: &str = "WEIR_ADMIN_CA_FILE";

/// The admin API's URL when neither a flag nor [`ADMIN_URL_ENV`] names one.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9464";

impl AdminArgs {
    /// The admin API these arguments name (flags first, then the environment).
    pub fn remote(&self) -> Result<Remote, PluginCliError> {
        remote_of(self.url.clone(), self.token.clone(), self.ca_file.clone())
    }
}

/// The admin API at `url` with `token` and, over https, `ca_file`, each from the environment
/// when not given.
pub fn remote_of(
    url: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<Remote, PluginCliError> {
    let url = url
        .or_else(|| std::env::var(ADMIN_URL_ENV).ok())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned());
    let token = token.or_else(|| std::env::var(crate::admin::TOKEN_ENV).ok());
    let ca_file = ca_file.or_else(|| std::env::var_os(ADMIN_CA_FILE_ENV).map(PathBuf::from));
    Remote::new(&url, token, ca_file.as_deref())
}

/// A kind of plugin, as `--kind` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// A per-event transform (`event-transform` world).
    Transform,
    /// A window aggregate (`window-aggregate` world).
    Window,
    /// A join enrichment (`join-enrichment` world).
    Join,
}

impl Kind {
    /// The host's kind of plugin.
    pub fn plugin_kind(self) -> PluginKind {
        match self {
            Kind::Transform => PluginKind::Transform,
            Kind::Window => PluginKind::WindowAggregate,
            Kind::Join => PluginKind::JoinEnrichment,
        }
    }

    /// Its name in `--kind` and in a crate's `[package.metadata.weir]`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Transform => "transform",
            Kind::Window => "window",
            Kind::Join => "join",
        }
    }

    /// The kind named `name` (as [`Kind::name`] gives it).
    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Transform, Kind::Window, Kind::Join]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// Why a `weir plugin` command failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginCliError {
    /// The name cannot be a crate's.
    #[error(
        "`{name}` is not a valid crate name: {why} (use letters, digits, `-` and `_`, starting with a letter)"
    )]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The target directory has files already.
    #[error("{} already exists and is not empty: choose another name or --dir", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither `WEIR_HOME` nor `HOME` says where to unpack the SDK.
    #[error("cannot tell where to unpack the SDK: set WEIR_HOME (or HOME), or pass --sdk")]
    NoHome,
    /// A tool could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `cargo metadata` did not describe the crate.
    #[error("{} is not a plugin crate: {reason}", dir.display())]
    NotACrate {
        /// The directory.
        dir: PathBuf,
        /// What cargo said, or what is missing.
        reason: String,
    },
    /// The Rust target for components is not installed.
    #[error(
        "the Rust target `wasm32-wasip2` is not installed; add it with: rustup target add wasm32-wasip2"
    )]
    MissingTarget,
    /// cargo failed to build the crate (its messages went to the terminal).
    #[error("cargo build --release --target wasm32-wasip2 failed in {}", dir.display())]
    Cargo {
        /// The crate's directory.
        dir: PathBuf,
    },
    /// No test case was found.
    #[error("no test case in {} (one directory per case, see `cases/README.md` of a new plugin)", dir.display())]
    NoCases {
        /// Where cases were looked for.
        dir: PathBuf,
    },
    /// A test case cannot be read or run.
    #[error("{}: {reason}", path.display())]
    BadCase {
        /// The case's file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Some test cases gave other outputs than they expect.
    #[error("{failed} of {total} test case(s) failed")]
    TestsFailed {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
    },
    /// An admin URL cannot be used.
    #[error("admin URL `{url}`: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request to the admin API failed.
    #[error("{url}: {reason}")]
    Remote {
        /// The URL requested.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The admin API refused the request.
    #[error("refused (HTTP {status}): {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The host's reason.
        reason: String,
    },
    /// The host rolled the deployed version back after its probation.
    #[error(
        "rolled back: {version} failed its probation and the host went back to {back_to}: {reason}"
    )]
    RolledBack {
        /// The deployed version.
        version: String,
        /// The version active again.
        back_to: String,
        /// The reason the host recorded.
        reason: String,
    },
    /// A shadow run found differences (or did not end), so the component was not activated.
    #[error("not activated: {reason}")]
    NotEqual {
        /// What the shadow run found.
        reason: String,
    },
    /// Another version was activated while the deploy waited.
    #[error("{version} is no longer active: {by} was activated meanwhile")]
    Replaced {
        /// The deployed version.
        version: String,
        /// The version active now.
        by: String,
    },
    /// componentize-py or componentize-js failed (its messages went to the terminal).
    #[error("{tool} failed ({status})")]
    Toolchain {
        /// The tool that ran.
        tool: String,
        /// How it ended.
        status: String,
    },
    /// The component does not implement the world of its kind.
    #[error("{0}")]
    Plugin(#[from] crate::plugin::PluginError),
    /// A component could not be signed, or a key made.
    #[error("{0}")]
    Sign(String),
    /// A test case's settings are not a stage's.
    #[error("{0}")]
    CaseSettings(#[from] crate::config::ConfigError),
    /// The component implements none of the worlds (its kind is not in its manifest).
    #[error(
        "{} implements none of Weir's worlds (set `kind` in [package.metadata.weir] to see why): {reasons}",
        path.display()
    )]
    NoWorld {
        /// The component.
        path: PathBuf,
        /// Why each world refused it.
        reasons: String,
    },
}
