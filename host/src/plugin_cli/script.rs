//! Python and JavaScript plugins for `weir plugin new / build / test`: a directory with
//! `plugin.py` and `pyproject.toml`, or `plugin.js` and `package.json`, whose manifest names the
//! plugin, its version and its kind (`[tool.weir] kind` / `"weir": { "kind" }`).
//!
//! `build` stages the plugin's modules beside the SDK this `weir` carries (unpacked as for a Rust
//! crate) and an entry module that exports the world of its kind, runs the project's
//! componentize-py or componentize-js on it, and then treats the component as a Rust one: the
//! manifest's name and version go into its `weir-plugin` section and the host's loader checks it
//! against the world of its kind. The component is rebuilt only when what it is built from
//! changed (componentizing takes 10 to 25 s).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::build::{Built, check};
use super::{Kind, PluginCliError, sdk};
use crate::plugin::PluginEngine;
use crate::plugin::package::{self, PackageInfo};

/// The language of a plugin directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate (`Cargo.toml`), built by cargo.
    Rust,
    /// `plugin.py` with `pyproject.toml`, built by componentize-py.
    Python,
    /// `plugin.js` with `package.json`, built by componentize-js.
    Javascript,
}

impl Lang {
    /// The language of the plugin in `dir`: Python or JavaScript when it has `plugin.py` or
    /// `plugin.js` and no `Cargo.toml`, else Rust.
    pub fn of(dir: &Path) -> Lang {
        if dir.join("Cargo.toml").is_file() {
            Lang::Rust
        } else if dir.join("plugin.py").is_file() {
            Lang::Python
        } else if dir.join("plugin.js").is_file() {
            Lang::Javascript
        } else {
            Lang::Rust
        }
    }

    /// The manifest file of a script plugin.
    fn manifest(self) -> &'static str {
        match self {
            Lang::Python => "pyproject.toml",
            _ => "package.json",
        }
    }
}

/// What a script plugin's manifest says.
#[derive(Debug)]
struct Manifest {
    package: PackageInfo,
    kind: Kind,
}

fn bad(dir: &Path, reason: impl Into<String>) -> PluginCliError {
    PluginCliError::NotACrate {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// The name, version and kind of the Python or JavaScript plugin in `dir`.
fn manifest(dir: &Path, lang: Lang) -> Result<Manifest, PluginCliError> {
    let path = dir.join(lang.manifest());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(
            dir,
            format!(
                "cannot read {}: {e}; `weir plugin build` needs it to name the plugin, its version and its kind (see `weir plugin new --lang`), or build the plugin with `scripts/build-plugin DIR` of a Weir checkout",
                path.display()
            ),
        )
    })?;
    let (name, version, kind) = match lang {
        Lang::Python => {
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| bad(dir, format!("{}: {}", path.display(), e.to_string().trim())))?;
            let field = |keys: &[&str]| {
                let (first, rest) = keys.split_first()?;
                let value = rest.iter().try_fold(table.get(*first)?, |v, k| v.get(k))?;
                value.as_str().map(str::to_owned)
            };
            (
                field(&["project", "name"]),
                field(&["project", "version"]),
                field(&["tool", "weir", "kind"]),
            )
        }
        _ => {
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| bad(dir, format!("{}: {e}", path.display())))?;
            let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
            (
                text(&value["name"]),
                text(&value["version"]),
                text(&value["weir"]["kind"]),
            )
        }
    };
    let missing = |what: &str| {
        bad(
            dir,
            format!(
                "{} has no {what} (`weir plugin new --lang` writes one)",
                path.display()
            ),
        )
    };
    let (kind_key, name_key) = match lang {
        Lang::Python => ("[tool.weir] kind", "[project] name and version"),
        _ => ("\"weir\": { \"kind\" }", "\"name\" and \"version\""),
    };
    let kind = kind.ok_or_else(|| missing(kind_key))?;
    let kind = Kind::from_name(&kind).ok_or_else(|| {
        bad(
            dir,
            format!(
                "{}: kind \"{kind}\" is none of transform, window, join",
                path.display()
            ),
        )
    })?;
    Ok(Manifest {
        package: PackageInfo {
            name: name.ok_or_else(|| missing(name_key))?,
            version: version.ok_or_else(|| missing(name_key))?,
        },
        kind,
    })
}

/// The kind the manifest of the script plugin in `dir` names.
pub(super) fn kind(dir: &Path) -> Result<Kind, PluginCliError> {
    Ok(manifest(dir, Lang::of(dir))?.kind)
}

/// A toolchain: the environment variable that names it, where a Weir checkout's `scripts/setup`
/// installs it, and its name on the `PATH`.
struct Tool {
    env: &'static str,
    in_checkout: &'static str,
    name: &'static str,
}

const COMPONENTIZE_PY: Tool = Tool {
    env: "WEIR_COMPONENTIZE_PY",
    in_checkout: ".venv/bin/componentize-py",
    name: "componentize-py",
};

const COMPONENTIZE_JS: Tool = Tool {
    env: "WEIR_COMPONENTIZE_JS",
    in_checkout: "sdk/js/node_modules/.bin/componentize-js",
    name: "componentize-js",
};

/// Where `tool` is: its environment variable, else a Weir checkout above this `weir`, the current
/// directory or the plugin, else the `PATH`.
fn find(tool: &Tool, dir: &Path) -> Result<PathBuf, PluginCliError> {
    if let Some(path) = std::env::var_os(tool.env).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let starts = [
        std::env::current_exe().ok(),
        std::env::current_dir().ok(),
        Some(dir.to_path_buf()),
    ];
    let in_checkout = starts
        .iter()
        .flatten()
        .flat_map(|start| start.ancestors())
        .map(|dir| dir.join(tool.in_checkout))
        .find(|path| path.is_file());
    in_checkout.or_else(|| on_path(tool.name)).ok_or_else(|| {
        bad(
            dir,
            format!(
                "{} is not installed: run `scripts/setup` in a Weir checkout (it installs it into {}), or set {} to it",
                tool.name, tool.in_checkout, tool.env
            ),
        )
    })
}

/// `weval`, with which a JavaScript plugin is compiled ahead of time (componentize-js `--aot`:
/// SpiderMonkey's interpreter specialised to the plugin's code, about 1.5x faster) when it is
/// installed: `WEIR_WEVAL` (`off` builds without it), else where `scripts/setup --aot` puts it
/// (`~/.cache/weir/tools/bin/weval`, under `XDG_CACHE_HOME` when set), else the `PATH`.
fn weval() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_WEVAL").filter(|p| !p.is_empty()) {
        return (path != "off").then(|| PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        });
    let in_cache = cache
        .map(|cache| cache.join("weir/tools/bin/weval"))
        .filter(|path| path.is_file());
    in_cache.or_else(|| on_path("weval"))
}

/// The program `name` on the `PATH`, if it is there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// The files of the plugin to stage: its modules and data, not its tests, its build output or
/// its dependencies.
fn plugin_files(dir: &Path, lang: Lang) -> Vec<PathBuf> {
    let suffixes: &[&str] = match lang {
        Lang::Python => &[".py"],
        _ => &[".js", ".mjs", ".json"],
    };
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let skipped = name.starts_with('.')
                || [
                    "target",
                    "node_modules",
                    "__pycache__",
                    "tests",
                    "test",
                    "cases",
                ]
                .contains(&name.as_str());
            if path.is_dir() {
                if !skipped {
                    pending.push(path);
                }
            } else if suffixes.iter().any(|s| name.ends_with(s))
                && !name.starts_with("test_")
                && !name.contains(".test.")
                && name != "conftest.py"
                && name != "package-lock.json"
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The entry module of a component of `kind`: it exports the world's interface from the SDK's
/// runners, after importing the author's module (which registers its functions).
fn entry(lang: Lang, kind: Kind) -> (&'static str, String) {
    match lang {
        Lang::Python => {
            let body = match kind {
                Kind::Transform => {
                    "class Transform(exports.Transform):\n    def process(self, batch):\n        return _guest.process(batch)\n"
                }
                Kind::Window => {
                    "class Aggregate(exports.Aggregate):\n    def fold(self, request):\n        return _guest.fold(request)\n\n    def finish(self, request):\n        return _guest.finish(request)\n"
                }
                Kind::Join => {
                    "class Join(exports.Join):\n    def enrich(self, request):\n        return _guest.enrich(request)\n"
                }
            };
            (
                "weir_entry.py",
                format!(
                    "from wit_world import exports\nimport plugin  # the author's module: registers its functions\nfrom weir import _guest\n\n\n{body}"
                ),
            )
        }
        _ => {
            let body = match kind {
                Kind::Transform => "export const transform = { process: guest.process };\n",
                Kind::Window => {
                    "export const aggregate = { fold: guest.fold, finish: guest.finish };\n"
                }
                Kind::Join => "export const join = { enrich: guest.enrich };\n",
            };
            (
                "weir_entry.js",
                format!("import \"./plugin.js\";\nimport * as guest from \"./guest.js\";\n{body}"),
            )
        }
    }
}

/// `import ... from "weir"` made relative to the staged SDK (componentize-js bundles relative
/// imports only).
fn relative_imports(source: &str, depth: usize) -> String {
    let prefix = if depth == 0 {
        "./".to_owned()
    } else {
        "../".repeat(depth)
    };
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("weir") {
        let quote_at = at.checked_sub(1);
        let quote = quote_at.and_then(|q| rest[q..].chars().next());
        let closing = rest[at + 4..].chars().next();
        let before = quote_at.map_or("", |q| rest[..q].trim_end());
        let is_import = matches!(quote, Some('"' | '\''))
            && quote == closing
            && (before.ends_with("from") || before.ends_with("import"));
        if is_import && let Some(q) = quote_at {
            out.push_str(&rest[..=q]);
            out.push_str(&prefix);
            out.push_str("weir.js");
        } else {
            out.push_str(&rest[..at + 4]);
        }
        rest = &rest[at + 4..];
    }
    out.push_str(rest);
    out
}

/// Copies the plugin's files into `stage` (JavaScript imports of the SDK made relative), with the
/// SDK and the entry module; returns the entry module's file name.
fn stage_files(
    dir: &Path,
    lang: Lang,
    kind: Kind,
    sdks: &Path,
    stage: &Path,
) -> Result<&'static str, PluginCliError> {
    let write = |path: &Path, bytes: &[u8]| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| PluginCliError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, bytes).map_err(|source| PluginCliError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| PluginCliError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    for file in plugin_files(dir, lang) {
        let relative = file.strip_prefix(dir).unwrap_or(&file);
        let mut bytes = read(&file)?;
        if lang == Lang::Javascript && relative.extension().is_some_and(|e| e != "json") {
            let depth = relative.components().count().saturating_sub(1);
            bytes = relative_imports(&String::from_utf8_lossy(&bytes), depth).into_bytes();
        }
        write(&stage.join(relative), &bytes)?;
    }
    if lang == Lang::Javascript {
        for file in ["weir.js", "guest.js"] {
            write(&stage.join(file), &read(&sdks.join("js").join(file))?)?;
        }
    }
    let (name, text) = entry(lang, kind);
    write(&stage.join(name), text.as_bytes())?;
    Ok(name)
}

/// The hash of what a component is built from: the staged files, the SDK, the toolchain and the
/// manifest.
fn inputs_hash(
    stage: &Path,
    sdks: &Path,
    tool: &Path,
    aot: Option<&Path>,
    manifest: &Manifest,
) -> String {
    let mut files = Vec::new();
    let mut pending = vec![
        stage.to_path_buf(),
        sdks.join("python"),
        sdks.join("weir-sdk/wit"),
    ];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut digest = Sha256::new();
    for part in [
        tool.display().to_string(),
        aot.map(|weval| weval.display().to_string())
            .unwrap_or_default(),
        manifest.package.name.clone(),
        manifest.package.version.clone(),
        manifest.kind.name().to_owned(),
    ] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    for file in files {
        digest.update(
            file.strip_prefix(stage)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        digest.update([0]);
        digest.update(std::fs::read(&file).unwrap_or_default());
        digest.update([0]);
    }
    digest
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs the toolchain on the staged plugin, writing the component to `out`; a JavaScript plugin
/// is compiled ahead of time with `aot` (weval) when there is one.
#[allow(clippy::too_many_arguments, reason = "the parts of one toolchain call")]
fn componentize(
    lang: Lang,
    tool: &Path,
    aot: Option<&Path>,
    kind: Kind,
    sdks: &Path,
    stage: &Path,
    entry: &str,
    out: &Path,
) -> Result<(), PluginCliError> {
    let wit = sdks.join("weir-sdk").join("wit");
    let world = match kind {
        Kind::Transform => "event-transform",
        Kind::Window => "window-aggregate",
        Kind::Join => "join-enrichment",
    };
    let mut command = Command::new(tool);
    command.current_dir(stage);
    match lang {
        Lang::Python => {
            command
                .arg("-d")
                .arg(&wit)
                .args(["-w", world, "componentize", "-p", "."])
                .arg("-p")
                .arg(sdks.join("python"))
                .arg(entry.trim_end_matches(".py"))
                .arg("-o")
                .arg(out);
        }
        _ => {
            command
                .arg(entry)
                .arg("--wit")
                .arg(&wit)
                .args(["--world-name", world, "-d", "http", "fetch-event", "-o"])
                .arg(out);
            if let Some(weval) = aot {
                command.arg("--aot").arg("--weval-bin").arg(weval);
            }
        }
    }
    let status = command.status().map_err(|source| PluginCliError::Spawn {
        command: tool.display().to_string(),
        source,
    })?;
    if !status.success() {
        return Err(PluginCliError::Toolchain {
            tool: tool.display().to_string(),
            status: status.to_string(),
        });
    }
    Ok(())
}

/// Builds the Python or JavaScript plugin in `dir` (see the module doc); signs it with `key`.
pub(super) fn build(dir: &Path, key: Option<&Path>) -> Result<Built, PluginCliError> {
    let lang = Lang::of(dir);
    let manifest = manifest(dir, lang)?;
    let tool = find(
        if lang == Lang::Python {
            &COMPONENTIZE_PY
        } else {
            &COMPONENTIZE_JS
        },
        dir,
    )?;
    let sdks = sdk::unpack_all(&sdk::default_root()?)?;
    let out_dir = dir.join("target").join("weir");
    let stage = out_dir.join("stage");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PluginCliError::Write { path, source }
    };
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(io(&stage))?;
    }
    std::fs::create_dir_all(&stage).map_err(io(&stage))?;
    let entry = stage_files(dir, lang, manifest.kind, &sdks, &stage)?;
    let file_name = format!("{}.wasm", manifest.package.name.replace('-', "_"));
    let path = out_dir.join(&file_name);
    let raw = out_dir.join(format!("{file_name}.componentized"));
    let stamp = out_dir.join(format!("{file_name}.inputs"));
    let aot = if lang == Lang::Javascript {
        weval()
    } else {
        None
    };
    let hash = inputs_hash(&stage, &sdks, &tool, aot.as_deref(), &manifest);
    let fresh = raw.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|h| h == hash);
    if !fresh {
        let _ = std::fs::remove_file(&stamp);
        componentize(
            lang,
            &tool,
            aot.as_deref(),
            manifest.kind,
            &sdks,
            &stage,
            entry,
            &raw,
        )?;
        std::fs::write(&stamp, &hash).map_err(io(&stamp))?;
    }
    let bytes = std::fs::read(&raw).map_err(|source| PluginCliError::Read {
        path: raw.clone(),
        source,
    })?;
    let with_section = package::embed(&bytes, &manifest.package).ok_or_else(|| {
        bad(
            dir,
            format!("{} is not a WebAssembly binary", raw.display()),
        )
    })?;
    // Compiling a Python or JavaScript component takes seconds: keep the compiled form for the
    // next check and for `weir plugin test`.
    let engine = PluginEngine::new()?.with_cache(&out_dir.join("compiled"));
    check(&engine, &raw, &with_section, Some(manifest.kind))?;
    super::build::finish(
        with_section,
        manifest.package,
        manifest.kind.plugin_kind(),
        key,
        path,
    )
}

/// The compile cache `build` keeps for the component of the script plugin in `dir`.
pub(super) fn compile_cache(dir: &Path) -> PathBuf {
    dir.join("target").join("weir").join("compiled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_of_the_sdk_become_relative_and_nothing_else_changes() {
        let source = "import { transform } from \"weir\";\nimport {Reject} from 'weir';\nconst a = \"weir\";\nimport x from \"./weird.js\";\n";
        assert_eq!(
            relative_imports(source, 0),
            "import { transform } from \"./weir.js\";\nimport {Reject} from './weir.js';\nconst a = \"weir\";\nimport x from \"./weird.js\";\n"
        );
        assert!(relative_imports("import \"weir\";", 2).contains("\"../../weir.js\""));
    }

    #[test]
    fn a_manifest_names_the_plugin_its_version_and_kind() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("plugin.py"), "").expect("write");
        let write =
            |text: &str| std::fs::write(dir.path().join("pyproject.toml"), text).expect("write");
        write(
            "[project]\nname = \"my-rule\"\nversion = \"1.2.0\"\n\n[tool.weir]\nkind = \"window\"\n",
        );
        let found = manifest(dir.path(), Lang::Python).expect("a manifest");
        assert_eq!(
            (
                found.package.name.as_str(),
                found.package.version.as_str(),
                found.kind
            ),
            ("my-rule", "1.2.0", Kind::Window)
        );
        write("[project]\nname = \"my-rule\"\nversion = \"1.2.0\"\n");
        let error = manifest(dir.path(), Lang::Python)
            .expect_err("no kind")
            .to_string();
        assert!(error.contains("[tool.weir] kind"), "{error}");
        write("[project]\nname = \"x\"\nversion = \"1\"\n[tool.weir]\nkind = \"filter\"\n");
        let error = manifest(dir.path(), Lang::Python)
            .expect_err("bad kind")
            .to_string();
        assert!(error.contains("none of transform, window, join"), "{error}");
    }
}
