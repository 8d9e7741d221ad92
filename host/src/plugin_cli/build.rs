//! `weir plugin build`: cargo builds the component, the host's loader checks it, and the crate's
//! name and version are recorded in it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::script::Lang;
use super::{Kind, PluginCliError};
use crate::plugin::package::{self, PackageInfo};
use crate::plugin::signature;
use crate::plugin::{PluginEngine, PluginKind};

/// The Rust target components are built for.
const TARGET: &str = "wasm32-wasip2";

/// What `weir plugin build` made.
#[derive(Debug, Clone)]
pub struct Built {
    /// The world it implements, such as `weir:plugin/event-transform@0.3.0`.
    pub world: &'static str,
    /// Its crate's name and version, as recorded in it.
    pub package: PackageInfo,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its content hash: the version the host knows it by.
    pub hash: String,
    /// Where it is.
    pub path: PathBuf,
}

impl std::fmt::Display for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "built plugin {} {}",
            self.package.name, self.package.version
        )?;
        writeln!(f, "  world:   {}", self.world)?;
        writeln!(f, "  size:    {} bytes", self.bytes)?;
        writeln!(f, "  name:    {}", self.package.name)?;
        writeln!(f, "  version: {}", self.package.version)?;
        writeln!(f, "  hash:    {}", self.hash)?;
        write!(f, "  file:    {}", self.path.display())
    }
}

/// What cargo says of the crate in `dir`.
#[derive(Debug)]
struct CrateInfo {
    name: String,
    version: String,
    /// The name of its library target (the `.wasm` file's stem).
    lib_name: String,
    /// `[package.metadata.weir] kind`, if set.
    kind: Option<Kind>,
    target_directory: PathBuf,
}

/// The cargo to run: the one that runs us, if any (`CARGO`), else `cargo` from the `PATH`.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `command` to completion, capturing its output.
fn output(command: &mut Command) -> Result<std::process::Output, PluginCliError> {
    command.output().map_err(|source| PluginCliError::Spawn {
        command: format!("{command:?}"),
        source,
    })
}

fn crate_info(dir: &Path) -> Result<CrateInfo, PluginCliError> {
    let not_a_crate = |reason: String| PluginCliError::NotACrate {
        dir: dir.to_path_buf(),
        reason,
    };
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        // A Python or JavaScript plugin is built by its toolchain, not by cargo.
        let script = ["plugin.py", "plugin.js"]
            .into_iter()
            .find(|file| dir.join(file).is_file());
        return Err(not_a_crate(match script {
            Some(file) => format!(
                "it has no Cargo.toml but a {file}: build a Python or JavaScript plugin with `scripts/build-plugin DIR` of a Weir checkout"
            ),
            None => "it has no Cargo.toml".into(),
        }));
    }
    let out = output(
        Command::new(cargo())
            .current_dir(dir)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(&manifest),
    )?;
    if !out.status.success() {
        return Err(not_a_crate(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| not_a_crate(format!("cargo metadata gave no JSON: {e}")))?;
    let wanted = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let package = packages
        .iter()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| std::fs::canonicalize(m).ok())
                .is_some_and(|m| m == wanted)
        })
        .or_else(|| packages.first())
        .ok_or_else(|| not_a_crate("cargo metadata lists no package".into()))?;
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
    let lib_name = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|types| types.iter().any(|c| c == "cdylib"))
        })
        .and_then(|t| text(&t["name"]))
        .map(|name| name.replace('-', "_"))
        .ok_or_else(|| {
            not_a_crate(
                "its library is not a `cdylib` (add `crate-type = [\"cdylib\", \"rlib\"]` to [lib])"
                    .into(),
            )
        })?;
    let kind = match package["metadata"]["weir"]["kind"].as_str() {
        Some(name) => Some(Kind::from_name(name).ok_or_else(|| {
            not_a_crate(format!(
                "[package.metadata.weir] kind = \"{name}\" is none of transform, window, join"
            ))
        })?),
        None => None,
    };
    Ok(CrateInfo {
        name: text(&package["name"]).unwrap_or_default(),
        version: text(&package["version"]).unwrap_or_default(),
        lib_name,
        kind,
        target_directory: text(&metadata["target_directory"])
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.join("target")),
    })
}

/// Whether the toolchain that builds in `dir` has the standard library of [`TARGET`]. `None` when
/// it cannot tell (no `rustc` to ask): cargo's own error says it then.
fn target_installed(dir: &Path) -> Option<bool> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .current_dir(dir)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Some(sysroot.join("lib/rustlib").join(TARGET).is_dir())
}

/// Checks `bytes` against the world of `kind`, or, without one, finds the world they implement.
pub(super) fn check(
    engine: &PluginEngine,
    path: &Path,
    bytes: &[u8],
    kind: Option<Kind>,
) -> Result<PluginKind, PluginCliError> {
    if let Some(kind) = kind {
        engine.from_bytes(path, bytes, kind.plugin_kind())?;
        return Ok(kind.plugin_kind());
    }
    let mut reasons = Vec::new();
    for kind in [Kind::Transform, Kind::Window, Kind::Join] {
        match engine.from_bytes(path, bytes, kind.plugin_kind()) {
            Ok(_) => return Ok(kind.plugin_kind()),
            Err(e) => reasons.push(format!("{}: {e}", kind.name())),
        }
    }
    Err(PluginCliError::NoWorld {
        path: path.to_path_buf(),
        reasons: reasons.join("; "),
    })
}

/// The kind the crate in `dir` names in `[package.metadata.weir]` (a Python or JavaScript
/// plugin: in its manifest), if any.
pub(super) fn crate_kind(dir: &Path) -> Result<Option<Kind>, PluginCliError> {
    let dir = &std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    if Lang::of(dir) != Lang::Rust {
        return super::script::kind(dir).map(Some);
    }
    Ok(crate_info(dir)?.kind)
}

/// Builds the plugin in `dir` (see the module doc; a Python or JavaScript one with its toolchain,
/// see the `script` module).
pub fn build(dir: &Path) -> Result<Built, PluginCliError> {
    build_signed(dir, None)
}

/// Reads a private key file.
fn read_key(path: &Path) -> Result<String, PluginCliError> {
    std::fs::read_to_string(path).map_err(|source| PluginCliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// [`build`], then signs the component with the private key in `key` when given (see
/// [`crate::plugin::signature`]).
pub fn build_signed(dir: &Path, key: Option<&Path>) -> Result<Built, PluginCliError> {
    // cargo runs in `dir`: a relative `--manifest-path` would be taken from there.
    let dir = &std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    if Lang::of(dir) != Lang::Rust {
        return super::script::build(dir, key);
    }
    let info = crate_info(dir)?;
    if target_installed(dir) == Some(false) {
        return Err(PluginCliError::MissingTarget);
    }
    let status = Command::new(cargo())
        .current_dir(dir)
        .args(["build", "--release", "--target", TARGET])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .status()
        .map_err(|source| PluginCliError::Spawn {
            command: "cargo build".into(),
            source,
        })?;
    if !status.success() {
        return Err(PluginCliError::Cargo {
            dir: dir.to_path_buf(),
        });
    }
    let built = info
        .target_directory
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", info.lib_name));
    let bytes = std::fs::read(&built).map_err(|source| PluginCliError::Read {
        path: built.clone(),
        source,
    })?;
    let package_info = PackageInfo {
        name: info.name.clone(),
        version: info.version.clone(),
    };
    let with_section =
        package::embed(&bytes, &package_info).ok_or_else(|| PluginCliError::NotACrate {
            dir: dir.to_path_buf(),
            reason: format!("{} is not a WebAssembly binary", built.display()),
        })?;
    let out_dir = info.target_directory.join("weir");
    std::fs::create_dir_all(&out_dir).map_err(|source| PluginCliError::Write {
        path: out_dir.clone(),
        source,
    })?;
    let path = out_dir.join(format!("{}.wasm", info.lib_name));
    // Checked as the host will load it: with the section (which must not change what the
    // component is), before it is written where a stage may point; errors name cargo's file.
    let engine = PluginEngine::new()?;
    let kind = check(&engine, &built, &with_section, info.kind)?;
    finish(with_section, package_info, kind, key, path)
}

/// Signs the checked component `with_section` (of `kind`) with `key` when given and writes it to
/// `path`: the end of every build, whatever the language.
pub(super) fn finish(
    with_section: Vec<u8>,
    package_info: PackageInfo,
    kind: PluginKind,
    key: Option<&Path>,
    path: PathBuf,
) -> Result<Built, PluginCliError> {
    let with_section = match key {
        Some(key) => {
            signature::sign(&with_section, &read_key(key)?)
                .map_err(PluginCliError::Sign)?
                .0
        }
        None => with_section,
    };
    let hash = crate::plugin::content_version(&with_section);
    std::fs::write(&path, &with_section).map_err(|source| PluginCliError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(Built {
        world: kind.world(),
        package: package_info,
        bytes: with_section.len() as u64,
        hash,
        path,
    })
}

/// `weir plugin keygen`: writes a new private key to `out` (which must not exist) and its public
/// key to `out.pub`; returns what to tell the user.
pub fn keygen(out: &Path) -> Result<String, PluginCliError> {
    let (private, public) = signature::generate().map_err(PluginCliError::Sign)?;
    let write = |path: &Path, text: &str, new: bool| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if new {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, if new { 0o600 } else { 0o644 });
        std::io::Write::write_all(&mut options.open(path)?, format!("{text}\n").as_bytes())
    };
    write(out, &private, true).map_err(|source| PluginCliError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let public_path = signature::side_file(out).with_extension("pub");
    write(&public_path, &public, false).map_err(|source| PluginCliError::Write {
        path: public_path.clone(),
        source,
    })?;
    Ok(format!(
        "private key: {} (keep it secret)\npublic key:  {} in {}\nadd it to the host's configuration: [plugins] trusted_keys = [\"{public}\"]",
        out.display(),
        public,
        public_path.display()
    ))
}

/// `weir plugin sign`: signs the component `file` in place, or into `file.sig` when `detached`;
/// returns what to tell the user.
pub fn sign_file(file: &Path, key: &Path, detached: bool) -> Result<String, PluginCliError> {
    let bytes = std::fs::read(file).map_err(|source| PluginCliError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let private = read_key(key)?;
    let (target, contents) = if detached {
        let text = signature::detached(&bytes, &private).map_err(PluginCliError::Sign)?;
        (signature::side_file(file), format!("{text}\n").into_bytes())
    } else {
        let (signed, _) = signature::sign(&bytes, &private).map_err(PluginCliError::Sign)?;
        (file.to_path_buf(), signed)
    };
    // Written beside and renamed, so a watching host never reads half a file.
    let partial = target.with_extension("partial");
    std::fs::write(&partial, &contents)
        .and_then(|()| std::fs::rename(&partial, &target))
        .map_err(|source| PluginCliError::Write {
            path: target.clone(),
            source,
        })?;
    Ok(format!("signed {} ({})", file.display(), target.display()))
}
