//! `weir plugin`: the plugin author's commands. `new` writes a plugin crate of one kind (with a
//! native harness test and a test case), `build` compiles it into a component, checks it against
//! the world of its kind with the host's own loader and records the crate's name and version in
//! it (see [`crate::plugin::package`]).

mod build;
mod new;
mod sdk;
mod test;

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

pub use build::{Built, build};
pub use new::{NewPlugin, SdkSource, new};
pub use test::{
    CaseResult, CaseSettings, DEAD_LETTERS, Outputs, TestTarget, run_case, target, test,
};

use crate::plugin::PluginKind;

/// The subcommands of `weir plugin`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin crate: a small working example of its kind, a native test and a test
    /// case. It builds anywhere on disk, with the SDK this `weir` carries.
    New {
        /// The crate's name (letters, digits, `-` and `_`, starting with a letter).
        name: String,
        /// The kind of stage it is for.
        #[arg(long, value_enum)]
        kind: Kind,
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
    /// Build a plugin crate into a component for `wasm32-wasip2` (release), check it against the
    /// world of its kind and record its crate name and version in it.
    Build {
        /// The plugin crate (default: the current directory).
        dir: Option<PathBuf>,
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
    /// The component does not implement the world of its kind.
    #[error("{0}")]
    Plugin(#[from] crate::plugin::PluginError),
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
