//! `weir plugin new`: writes a plugin crate of one kind.

use std::path::{Path, PathBuf};

use super::{Kind, Lang, PluginCliError, sdk};

/// Where a new crate finds `weir-sdk`.
#[derive(Debug, Clone)]
pub enum SdkSource {
    /// The SDK this `weir` carries, unpacked under this directory (see `sdk::default_root`).
    Embedded(PathBuf),
    /// The `sdk/` directory of a Weir checkout.
    Path(PathBuf),
    /// A git repository of Weir.
    Git(String),
}

impl SdkSource {
    /// The SDK this `weir` carries, unpacked where `WEIR_HOME` (or `~/.weir`) says.
    pub fn embedded() -> Result<SdkSource, PluginCliError> {
        Ok(SdkSource::Embedded(sdk::default_root()?))
    }
}

/// What `weir plugin new` writes.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    /// The crate's name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its language.
    pub lang: Lang,
    /// Where to write it.
    pub dir: PathBuf,
    /// Where it finds the SDK.
    pub sdk: SdkSource,
}

/// One kind's files: the library, the harness test, the case's name and files.
struct Template {
    lib: &'static str,
    test: &'static str,
    case: &'static str,
    case_files: &'static [(&'static str, &'static str)],
}

/// The test harness code every kind's test shares: reading and running `cases/`.
const CASES_COMMON: &str = include_str!("templates/cases_common.rs");

/// What `cases/README.md` of a new crate says: the format of a test case.
const CASES_README: &str = include_str!("templates/cases_readme.md");

fn template(kind: Kind) -> Template {
    match kind {
        Kind::Transform => Template {
            lib: include_str!("templates/transform/lib.rs"),
            test: include_str!("templates/transform/test.rs"),
            case: "temperature-jump",
            case_files: &[
                (
                    "case.toml",
                    include_str!("templates/transform/case/case.toml"),
                ),
                (
                    "input.jsonl",
                    include_str!("templates/transform/case/input.jsonl"),
                ),
                (
                    "expected/rows.jsonl",
                    include_str!("templates/transform/case/rows.jsonl"),
                ),
                (
                    "expected/alerts.jsonl",
                    include_str!("templates/transform/case/alerts.jsonl"),
                ),
                (
                    "expected/dead-letters.jsonl",
                    include_str!("templates/transform/case/dead-letters.jsonl"),
                ),
            ],
        },
        Kind::Window => Template {
            lib: include_str!("templates/window/lib.rs"),
            test: include_str!("templates/window/test.rs"),
            case: "one-minute",
            case_files: &[
                ("case.toml", include_str!("templates/window/case/case.toml")),
                (
                    "input.jsonl",
                    include_str!("templates/window/case/input.jsonl"),
                ),
                (
                    "expected/rows.jsonl",
                    include_str!("templates/window/case/rows.jsonl"),
                ),
                (
                    "expected/dead-letters.jsonl",
                    include_str!("templates/window/case/dead-letters.jsonl"),
                ),
            ],
        },
        Kind::Join => Template {
            lib: include_str!("templates/join/lib.rs"),
            test: include_str!("templates/join/test.rs"),
            case: "paid-and-unpaid",
            case_files: &[
                ("case.toml", include_str!("templates/join/case/case.toml")),
                (
                    "input.jsonl",
                    include_str!("templates/join/case/input.jsonl"),
                ),
                (
                    "expected/rows.jsonl",
                    include_str!("templates/join/case/rows.jsonl"),
                ),
            ],
        },
    }
}

/// Names a crate cannot have although they are well-formed: Rust keywords and crates every
/// plugin links (its library would shadow them).
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
    "weir_sdk",
    "weir_sdk_macros",
    "serde",
    "serde_json",
    "toml",
];

/// Checks that `name` can be a crate's name (as `cargo new` would accept it).
pub(crate) fn check_name(name: &str) -> Result<(), PluginCliError> {
    let bad = |why: &str| {
        Err(PluginCliError::BadName {
            name: name.to_owned(),
            why: why.to_owned(),
        })
    };
    let Some(first) = name.chars().next() else {
        return bad("it is empty");
    };
    if !first.is_ascii_alphabetic() {
        return bad("it must start with a letter");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return bad(&format!("it contains `{c}`"));
    }
    if name.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    if RESERVED.contains(&name.replace('-', "_").as_str()) {
        return bad("it is a Rust keyword or the name of a crate a plugin uses");
    }
    Ok(())
}

/// A string as a TOML basic string (quoted and escaped).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The `weir-sdk` dependency line of a new crate (unpacking the embedded SDK if need be).
fn sdk_dependency(source: &SdkSource) -> Result<String, PluginCliError> {
    Ok(match source {
        SdkSource::Embedded(root) => {
            let dir = sdk::unpack(root)?;
            format!(
                "# The SDK this `weir` carries, unpacked by `weir plugin new`.\n\
                 weir-sdk = {{ path = {} }}",
                toml_string(&dir.display().to_string())
            )
        }
        SdkSource::Path(dir) => {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            format!(
                "weir-sdk = {{ path = {} }}",
                toml_string(&dir.display().to_string())
            )
        }
        SdkSource::Git(url) => format!("weir-sdk = {{ git = {} }}", toml_string(url)),
    })
}

/// The manifest of a new crate.
fn manifest(name: &str, kind: Kind, sdk_dependency: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the component; rlib: the library the tests under tests/ call natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
{sdk_dependency}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[dev-dependencies]
toml = "1"

# The world `weir plugin build` checks the component against.
[package.metadata.weir]
kind = "{kind}"

# A crate of its own, even when created inside another workspace.
[workspace]

[profile.release]
# Keep function names in trap backtraces; drop the rest of the debug info.
strip = "debuginfo"
codegen-units = 4

[profile.release.package.{name}]
codegen-units = 1
"#,
        kind = kind.name(),
    )
}

/// Writes the crate (or Python or JavaScript plugin) `plugin` describes; returns the files
/// written, relative to its directory.
pub fn new(plugin: &NewPlugin) -> Result<Vec<PathBuf>, PluginCliError> {
    check_name(&plugin.name)?;
    let dir = &plugin.dir;
    if dir.exists() {
        let empty = dir.is_dir()
            && std::fs::read_dir(dir)
                .map_err(|source| PluginCliError::Read {
                    path: dir.clone(),
                    source,
                })?
                .next()
                .is_none();
        if !empty {
            return Err(PluginCliError::NotEmpty { path: dir.clone() });
        }
    }
    let template = template(plugin.kind);
    if plugin.lang != Lang::Rust {
        let mut files = script_files(plugin)?;
        files.push(("cases/README.md".into(), CASES_README.to_owned()));
        files.extend(case_files(&template));
        write_files(dir, &files)?;
        if plugin.lang == Lang::Javascript {
            link_js_sdk(plugin)?;
        }
        return Ok(files.into_iter().map(|(file, _)| file).collect());
    }
    let crate_ident = plugin.name.replace('-', "_");
    let mut files: Vec<(PathBuf, String)> = vec![
        (
            "Cargo.toml".into(),
            manifest(
                plugin.name.as_str(),
                plugin.kind,
                &sdk_dependency(&plugin.sdk)?,
            ),
        ),
        // The versions Weir is built and tested with: the crate resolves without asking the
        // registry for newer ones (cargo drops what the crate does not use).
        ("Cargo.lock".into(), sdk::WORKSPACE_LOCK.to_owned()),
        (".gitignore".into(), "/target\n".to_owned()),
        ("src/lib.rs".into(), template.lib.to_owned()),
        (
            "tests/harness.rs".into(),
            format!("{}{CASES_COMMON}", template.test).replace("{{crate}}", &crate_ident),
        ),
        ("cases/README.md".into(), CASES_README.to_owned()),
    ];
    files.extend(case_files(&template));
    write_files(dir, &files)?;
    Ok(files.into_iter().map(|(file, _)| file).collect())
}

/// The test case of a kind's template, as files under `cases/`.
fn case_files(template: &Template) -> Vec<(PathBuf, String)> {
    template
        .case_files
        .iter()
        .map(|(file, text)| {
            (
                Path::new("cases").join(template.case).join(file),
                (*text).to_owned(),
            )
        })
        .collect()
}

/// Writes `files` (paths relative to `dir`).
fn write_files(dir: &Path, files: &[(PathBuf, String)]) -> Result<(), PluginCliError> {
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| PluginCliError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(&path, text).map_err(|source| PluginCliError::Write { path, source })?;
    }
    Ok(())
}

/// The plugin's code and its native test, per kind and language: (module, test).
fn script_template(kind: Kind, lang: Lang) -> (&'static str, &'static str) {
    match (lang, kind) {
        (Lang::Python, Kind::Transform) => (
            include_str!("templates/python/transform.py"),
            include_str!("templates/python/test_transform.py"),
        ),
        (Lang::Python, Kind::Window) => (
            include_str!("templates/python/window.py"),
            include_str!("templates/python/test_window.py"),
        ),
        (Lang::Python, Kind::Join) => (
            include_str!("templates/python/join.py"),
            include_str!("templates/python/test_join.py"),
        ),
        (_, Kind::Transform) => (
            include_str!("templates/js/transform.js"),
            include_str!("templates/js/transform.test.js"),
        ),
        (_, Kind::Window) => (
            include_str!("templates/js/window.js"),
            include_str!("templates/js/window.test.js"),
        ),
        (_, Kind::Join) => (
            include_str!("templates/js/join.js"),
            include_str!("templates/js/join.test.js"),
        ),
    }
}

/// The directory of the SDK of `plugin`'s language (unpacking the embedded one if need be).
fn script_sdk(plugin: &NewPlugin) -> Result<PathBuf, PluginCliError> {
    let root = match &plugin.sdk {
        SdkSource::Embedded(root) => sdk::unpack_all(root)?,
        SdkSource::Path(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        SdkSource::Git(_) => {
            return Err(PluginCliError::NotACrate {
                dir: plugin.dir.clone(),
                reason: "--sdk-git is for Rust crates: a Python or JavaScript plugin uses the SDK this `weir` carries, or --sdk DIR (a checkout's `sdk/`)".into(),
            });
        }
    };
    Ok(root.join(if plugin.lang == Lang::Python {
        "python"
    } else {
        "js"
    }))
}

/// The files of a new Python or JavaScript plugin: its manifest (name, version, kind), module,
/// native test and what makes that test find the SDK.
fn script_files(plugin: &NewPlugin) -> Result<Vec<(PathBuf, String)>, PluginCliError> {
    let (module, test) = script_template(plugin.kind, plugin.lang);
    let (name, kind) = (&plugin.name, plugin.kind.name());
    Ok(match plugin.lang {
        Lang::Python => {
            let sdk = python_string(&script_sdk(plugin)?.display().to_string());
            vec![
                (
                    "pyproject.toml".into(),
                    format!(
                        r#"[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"

# The world `weir plugin build` checks the component against.
[tool.weir]
kind = "{kind}"
"#
                    ),
                ),
                ("plugin.py".into(), module.to_owned()),
                ("test_plugin.py".into(), test.to_owned()),
                (
                    "conftest.py".into(),
                    format!(
                        r#"# Puts the Weir SDK that `weir plugin new` unpacked on the path of the native tests
# (`python -m pytest`); the component gets the same SDK from `weir plugin build`.
import sys

sys.path.insert(0, {sdk})
"#
                    ),
                ),
                (".gitignore".into(), "/target\n__pycache__/\n".to_owned()),
            ]
        }
        _ => vec![
            (
                "package.json".into(),
                format!(
                    r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {{ "test": "node --test" }},
  "weir": {{ "kind": "{kind}" }}
}}
"#
                ),
            ),
            ("plugin.js".into(), module.to_owned()),
            ("plugin.test.js".into(), test.to_owned()),
            (".gitignore".into(), "/target\n/node_modules\n".to_owned()),
        ],
    })
}

/// A string as a Python string literal.
fn python_string(text: &str) -> String {
    // JSON's escapes are Python's for the characters a path holds.
    serde_json::Value::String(text.to_owned()).to_string()
}

/// `node_modules/weir` of a new JavaScript plugin: the SDK, so that `import ... from "weir"`
/// (and `"weir/testing"`) resolve under `node --test`.
fn link_js_sdk(plugin: &NewPlugin) -> Result<(), PluginCliError> {
    let sdk = script_sdk(plugin)?;
    let modules = plugin.dir.join("node_modules");
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PluginCliError::Write { path, source }
    };
    std::fs::create_dir_all(&modules).map_err(write_error(&modules))?;
    let link = modules.join("weir");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&sdk, &link).map_err(write_error(&link))?;
    #[cfg(not(unix))]
    {
        let _ = (&sdk, &link);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_crates_are_refused_with_the_reason() {
        for good in ["my-rule", "a", "Rule_2", "booking-categorize"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("2fast", "start with a letter"),
            ("-x", "start with a letter"),
            ("my rule", "contains ` `"),
            ("my.rule", "contains `.`"),
            ("fn", "keyword"),
            ("weir-sdk", "a crate a plugin uses"),
        ] {
            let error = check_name(bad).expect_err(bad).to_string();
            assert!(error.contains(why), "{bad}: {error}");
            assert!(error.contains("is not a valid crate name"), "{error}");
        }
    }

    #[test]
    fn a_new_crate_refuses_a_directory_with_files_and_fills_an_empty_one() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let plugin = |dir: PathBuf| NewPlugin {
            name: "my-rule".into(),
            kind: Kind::Window,
            lang: Lang::Rust,
            dir,
            sdk: SdkSource::Git("https://example.invalid/weir".into()),
        };
        let taken = root.path().join("taken");
        std::fs::create_dir_all(&taken).expect("mkdir");
        std::fs::write(taken.join("notes.txt"), "mine").expect("write");
        let error = new(&plugin(taken.clone())).expect_err("not empty");
        assert!(
            error
                .to_string()
                .contains("already exists and is not empty"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(taken.join("notes.txt")).expect("kept"),
            "mine"
        );

        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let files = new(&plugin(empty.clone())).expect("writes");
        assert!(files.contains(&PathBuf::from("cases/one-minute/input.jsonl")));
        let manifest = std::fs::read_to_string(empty.join("Cargo.toml")).expect("manifest");
        let table: toml::Table = manifest.parse().expect("a valid manifest");
        assert_eq!(table["package"]["name"].as_str(), Some("my-rule"));
        assert_eq!(
            table["package"]["metadata"]["weir"]["kind"].as_str(),
            Some("window")
        );
        assert_eq!(
            table["dependencies"]["weir-sdk"]["git"].as_str(),
            Some("https://example.invalid/weir")
        );
        let test = std::fs::read_to_string(empty.join("tests/harness.rs")).expect("test");
        assert!(test.contains("use my_rule::Temperatures;"), "{test}");
    }
}
