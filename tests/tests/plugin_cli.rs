//! `weir plugin new` and `weir plugin build` as a plugin author runs them, outside the repository:
//! for each kind a new crate passes its own tests as written (`cargo test`: the harness and its
//! test case), builds into a component the host accepts for its world (`weir validate`), and the
//! host shows the crate's name and version beside the content hash (`weir validate`, the "plugin
//! loaded" log line, `GET /plugins`). A bad name and a directory with files are refused, and so is
//! a component that is not of the kind its crate names.
//!
//! The three crates share one target directory (the one the workspace's tests build their plugins
//! in, `tests/build.rs`), so they compile the SDK's dependencies once, or not at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use weir_tests::WeirProcess;
use weir_tests::service::{get_json, wait_ready};

/// (kind, crate name) of the crates made.
const KINDS: [(&str, &str); 3] = [
    ("transform", "my-transform"),
    ("window", "my-window"),
    ("join", "my-join"),
];

#[test]
fn new_plugins_of_every_kind_test_build_validate_and_name_their_crate() {
    let outside = tempfile::tempdir().expect("temp dir");
    assert!(
        !outside.path().starts_with(weir_tests::workspace_dir()),
        "{} must be outside the repository",
        outside.path().display()
    );
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();

    for (kind, name) in KINDS {
        let dir = outside.path().join(name);
        let out = weir(&home, &target)
            .args(["plugin", "new", name, "--kind", kind, "--dir"])
            .arg(&dir)
            .output()
            .expect("run weir");
        assert_success(&out, "weir plugin new");
        assert!(dir.join("cases").is_dir() && dir.join("tests/harness.rs").is_file());
    }
    // One SDK unpacked for the three.
    let unpacked: Vec<_> = std::fs::read_dir(home.join("sdk"))
        .expect("the SDK is unpacked under WEIR_HOME")
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");

    for (_, name) in KINDS {
        cargo_test(&outside.path().join(name), &target);
    }

    let mut built = Vec::new();
    for (kind, name) in KINDS {
        let out = weir(&home, &target)
            .args(["plugin", "build"])
            .arg(outside.path().join(name))
            .output()
            .expect("run weir");
        assert_success(&out, "weir plugin build");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let world = match kind {
            "transform" => "weir:plugin/event-transform@0.1.0",
            "window" => "weir:plugin/window-aggregate@0.1.0",
            _ => "weir:plugin/join-enrichment@0.1.0",
        };
        for expected in [
            format!("world:   {world}"),
            format!("name:    {name}"),
            "version: 0.1.0".to_owned(),
            "hash:    ".to_owned(),
            " bytes".to_owned(),
        ] {
            assert!(text.contains(&expected), "`{expected}` in:\n{text}");
        }
        let file = field(&text, "file:");
        assert!(Path::new(&file).is_file(), "{file}");
        built.push((name, PathBuf::from(file), field(&text, "hash:")));
    }

    let config = write_config(outside.path(), &built);
    let out = Command::new(weir_tests::weir_binary())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("run weir validate");
    assert_success(&out, "weir validate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for (name, _, hash) in &built {
        let expected = format!("version {hash} implements");
        assert!(text.contains(&expected), "`{expected}` in:\n{text}");
        let expected = format!("built from crate {name} 0.1.0");
        assert!(text.contains(&expected), "`{expected}` in:\n{text}");
    }

    // A running host: the log line and the admin API name the crates too.
    let mut process = WeirProcess::run(&config);
    let admin = process.admin_address(0, Duration::from_secs(60));
    wait_ready(&admin, Duration::from_secs(60));
    let plugins = get_json(&admin, "/plugins");
    let slots = plugins["plugins"].as_array().expect("plugins");
    for (name, _, hash) in &built {
        let slot = slots
            .iter()
            .find(|s| s["active"] == hash.as_str())
            .unwrap_or_else(|| panic!("no slot runs {hash}: {plugins}"));
        assert_eq!(slot["name"], *name, "{slot}");
        assert_eq!(slot["crate_version"], "0.1.0", "{slot}");
        let version = slot["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["version"] == hash.as_str()))
            .unwrap_or_else(|| panic!("{slot}"));
        assert_eq!(version["name"], *name, "{slot}");
    }
    let log = process.log_text();
    for (name, _, _) in &built {
        assert!(
            log.lines()
                .any(|l| l.contains("plugin loaded") && l.contains(&format!("name={name}"))),
            "a `plugin loaded` line naming {name} in:\n{log}"
        );
    }
    assert!(process.is_running());
    process.terminate();
    process.wait(Duration::from_secs(30));

    // A crate whose component is not of the kind its manifest names is refused by the build.
    let transform = outside.path().join("my-transform");
    let manifest = std::fs::read_to_string(transform.join("Cargo.toml")).expect("manifest");
    std::fs::write(
        transform.join("Cargo.toml"),
        manifest.replace("kind = \"transform\"", "kind = \"window\""),
    )
    .expect("write manifest");
    let out = weir(&home, &target)
        .args(["plugin", "build"])
        .arg(&transform)
        .output()
        .expect("run weir");
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("does not implement world `weir:plugin/window-aggregate@0.1.0`"),
        "{error}"
    );
}

#[test]
fn a_bad_name_and_a_directory_with_files_are_refused() {
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let out = weir(&home, &target)
        .args(["plugin", "new", "2fast", "--kind", "transform", "--dir"])
        .arg(outside.path().join("fast"))
        .output()
        .expect("run weir");
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("`2fast` is not a valid crate name: it must start with a letter"),
        "{error}"
    );
    assert!(!outside.path().join("fast").exists());

    let taken = outside.path().join("taken");
    std::fs::create_dir_all(&taken).expect("mkdir");
    std::fs::write(taken.join("notes.txt"), "mine").expect("write");
    let out = weir(&home, &target)
        .args(["plugin", "new", "my-rule", "--kind", "join", "--dir"])
        .arg(&taken)
        .output()
        .expect("run weir");
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains(&format!(
            "{} already exists and is not empty",
            taken.display()
        )),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(&taken).expect("list").count(),
        1,
        "nothing written"
    );
}

/// For each kind: its crate, an edit of the plugin's logic, the field of the first record it
/// changes, and the output and case that record is in.
const EDITS: [(&str, &str, &str, &str, &str, &str); 3] = [
    (
        "transform",
        "tested-transform",
        "\"To\": reading.temperature,",
        "\"To\": reading.temperature + 1.0,",
        "field `To`: expected 40.0, got 41.0",
        "alerts",
    ),
    (
        "window",
        "tested-window",
        "\"EventCount\": self.count,",
        "\"EventCount\": self.count + 1,",
        "field `EventCount`: expected 3, got 4",
        "rows",
    ),
    (
        "join",
        "tested-join",
        "row[\"Paid\"] = payment.is_some().into();",
        "row[\"Paid\"] = payment.is_none().into();",
        "field `Paid`: expected true, got false",
        "rows",
    ),
];

#[test]
fn weir_plugin_test_runs_the_cases_through_the_host_fails_with_a_diff_and_blesses() {
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    for (kind, name, logic, edited, field_diff, output) in EDITS {
        let dir = outside.path().join(name);
        let out = weir(&home, &target)
            .args(["plugin", "new", name, "--kind", kind, "--dir"])
            .arg(&dir)
            .output()
            .expect("run weir");
        assert_success(&out, "weir plugin new");
        let test = |bless: bool| {
            let mut command = weir(&home, &target);
            command.args(["plugin", "test"]).arg(&dir);
            if bless {
                command.arg("--bless");
            }
            command.output().expect("run weir")
        };
        let out = test(false);
        assert_success(&out, "weir plugin test");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("1 case(s) passed"), "{text}");

        let lib = dir.join("src/lib.rs");
        let source = std::fs::read_to_string(&lib).expect("lib.rs");
        assert!(source.contains(logic), "{kind}: `{logic}` in the template");
        std::fs::write(&lib, source.replace(logic, edited)).expect("edit lib.rs");
        let out = test(false);
        assert!(!out.status.success(), "{kind}: the edited plugin must fail");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let output_line = format!("output `{output}`");
        for expected in ["FAILED", &output_line, "record 1:", field_diff] {
            assert!(text.contains(expected), "{kind}: `{expected}` in:\n{text}");
        }
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.contains("1 of 1 test case(s) failed"), "{error}");

        let out = test(true);
        assert_success(&out, "weir plugin test --bless");
        let out = test(false);
        assert_success(&out, "weir plugin test after --bless");
        // The same case gives the same outputs on every run: the file did not change.
        let rows = dir.join(format!(
            "cases/{}/expected/{output}.jsonl",
            match kind {
                "transform" => "temperature-jump",
                "window" => "one-minute",
                _ => "paid-and-unpaid",
            }
        ));
        let blessed = std::fs::read_to_string(&rows).expect("blessed records");
        // The blessed record holds the edited value: `field `F`: expected A, got B` → `"F":B`.
        let field = field_diff.split('`').nth(1).expect("a field");
        let value = field_diff.rsplit("got ").next().expect("a value");
        let written = format!("\"{field}\":{value}");
        assert!(blessed.contains(&written), "`{written}` in {blessed}");
        let out = test(true);
        assert_success(&out, "weir plugin test --bless again");
        assert_eq!(std::fs::read_to_string(&rows).expect("rows"), blessed);
    }
}

/// `weir` with the SDK unpacked under `home` and cargo building into `target`.
fn weir(home: &Path, target: &Path) -> Command {
    let mut command = Command::new(weir_tests::weir_binary());
    command
        .env("WEIR_HOME", home)
        .env("CARGO_TARGET_DIR", target);
    clean_env(&mut command);
    command
}

/// Flags meant for the host build must not leak into a plugin's build (as in tests/build.rs).
fn clean_env(command: &mut Command) {
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
}

/// `cargo test` in the crate at `dir`, which must pass: offline first (the lockfile `weir plugin
/// new` writes names the versions the workspace already downloaded), then online.
fn cargo_test(dir: &Path, target: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let run = |offline: bool| {
        let mut command = Command::new(&cargo);
        command
            .current_dir(dir)
            .arg("test")
            .env("CARGO_TARGET_DIR", target);
        if offline {
            command.arg("--offline");
        }
        clean_env(&mut command);
        command.output().expect("run cargo test")
    };
    let mut out = run(true);
    if !out.status.success() {
        out = run(false);
    }
    assert_success(&out, &format!("cargo test in {}", dir.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("the_cases_give_their_expected_outputs ... ok"),
        "{text}"
    );
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value after `label` on its line of `weir plugin build`'s report.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"))
}

/// A configuration running the three components: a transform, a window aggregate, and a join fed
/// by the transform; an admin API on a free port; a followed (empty) input, so that it keeps
/// running.
fn write_config(dir: &Path, built: &[(&str, PathBuf, String)]) -> PathBuf {
    let plugin = |name: &str| {
        built
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, path, _)| path.display().to_string())
            .expect("built")
    };
    std::fs::write(dir.join("readings.jsonl"), "").expect("write input");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"

[admin]
address = "127.0.0.1:0"

[sources.readings]
kind = "file"
path = "readings.jsonl"
partitions = 1
key_field = "DeviceId"
follow = true

[sinks.out]
kind = "file"
path = "out"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.transform]
source = "readings"
dead_letter = "dead_letters"

[[pipelines.transform.stages]]
name = "jump"
plugin = {transform:?}
outputs = {{ rows = "out", alerts = "out" }}

[pipelines.window]
source = "readings"
dead_letter = "dead_letters"
event_time = {{ field = "Timestamp" }}

[[pipelines.window.stages]]
name = "minute"
plugin = {window:?}
window = {{ type = "tumbling", size = "1m" }}
outputs = {{ rows = "out" }}

[pipelines.join]
source = "readings"
dead_letter = "dead_letters"
event_time = {{ field = "Timestamp" }}

[[pipelines.join.stages]]
name = "route"
plugin = {transform:?}
outputs = {{ rows = "pair.left", alerts = "pair.right" }}

[[pipelines.join.stages]]
name = "pair"
plugin = {join:?}
join = {{ key = "DeviceId", within = "2m", unmatched_left = "emit", unmatched_right = "drop" }}
outputs = {{ rows = "out" }}
"#,
        transform = plugin("my-transform"),
        window = plugin("my-window"),
        join = plugin("my-join"),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// Where the workspace's tests build their plugins (`tests/build.rs`): a directory of the test
/// run's own target directory, which this test binary sits in (`<target>/debug/deps/`).
fn shared_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    exe.ancestors()
        .nth(3)
        .expect("the test binary sits in <target>/<profile>/deps/")
        .join("wasm-plugins")
}
