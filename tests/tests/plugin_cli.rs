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
            "transform" => "weir:plugin/event-transform@0.3.0",
            "window" => "weir:plugin/window-aggregate@0.3.0",
            _ => "weir:plugin/join-enrichment@0.3.0",
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
        error.contains("does not implement world `weir:plugin/window-aggregate@0.3.0`"),
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

/// A built crate: its component and content hash.
struct Component {
    file: PathBuf,
    hash: String,
}

/// `weir plugin new NAME --kind KIND` under `root`, then `weir plugin build`.
fn new_and_build(home: &Path, target: &Path, root: &Path, name: &str, kind: &str) -> Component {
    let dir = root.join(name);
    let out = weir(home, target)
        .args(["plugin", "new", name, "--kind", kind, "--dir"])
        .arg(&dir)
        .output()
        .expect("run weir");
    assert_success(&out, "weir plugin new");
    build_crate(home, target, &dir)
}

/// `weir plugin build DIR`.
fn build_crate(home: &Path, target: &Path, dir: &Path) -> Component {
    let out = weir(home, target)
        .args(["plugin", "build"])
        .arg(dir)
        .output()
        .expect("run weir");
    assert_success(&out, "weir plugin build");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Copied out: the next build of a crate of the same name writes the same file.
    let built = PathBuf::from(field(&text, "file:"));
    let hash = field(&text, "hash:");
    let file = dir.join(format!("{hash}.wasm"));
    std::fs::copy(&built, &file).expect("copy the component");
    Component { file, hash }
}

/// A two-stage pipeline over a followed input: `categorize` (the template transform) forwards
/// every reading to `enrich` (another), whose rows go to a Delta table that records the versions
/// of both stages; alerts to files; admin API on a free port with [`weir_tests::service::TOKEN`]
/// and a short probation.
fn two_stage_config(dir: &Path, categorize: &Component, enrich: &Component) -> PathBuf {
    two_stage_config_with(dir, categorize, enrich, "")
}

/// [`two_stage_config`] with more keys in its `[admin]` table (`admin`, such as a `tls` table).
fn two_stage_config_with(
    dir: &Path,
    categorize: &Component,
    enrich: &Component,
    admin: &str,
) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).expect("plugins dir");
    std::fs::copy(&categorize.file, dir.join("plugins/categorize.wasm")).expect("copy");
    std::fs::copy(&enrich.file, dir.join("plugins/enrich.wasm")).expect("copy");
    std::fs::write(dir.join("readings.jsonl"), "").expect("input");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "300ms"

[plugins]
watch = false
rollback = {{ probation_events = 100, max_trap_ratio = 0.05, max_error_ratio = 0.5 }}

[admin]
address = "127.0.0.1:0"
token = "{token}"
{admin}

[sources.readings]
kind = "file"
path = "readings.jsonl"
partitions = 2
key_field = "DeviceId"
follow = true

[sinks.rows]
kind = "delta"
path = "delta/rows"
columns = [
  {{ name = "EventId", type = "string", nullable = false }},
  {{ name = "DeviceId", type = "string" }},
  {{ name = "PluginVersion", type = "string", value = "plugin_version" }},
  {{ name = "PluginVersions", type = "string", value = "plugin_versions" }},
]

[sinks.alerts]
kind = "file"
path = "alerts"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.telemetry]
source = "readings"
dead_letter = "dead_letters"
batch = {{ max_events = 32, max_wait = "20ms" }}

[[pipelines.telemetry.stages]]
name = "categorize"
plugin = "plugins/categorize.wasm"
outputs = {{ rows = "enrich", alerts = "alerts" }}

[[pipelines.telemetry.stages]]
name = "enrich"
plugin = "plugins/enrich.wasm"
outputs = {{ rows = "rows", alerts = "alerts" }}
"#,
        token = weir_tests::service::TOKEN,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// `weir plugin deploy FILE --to http://ADMIN --stage telemetry/categorize`, the token from the
/// environment.
fn deploy(home: &Path, target: &Path, admin: &str, file: &Path) -> Output {
    weir(home, target)
        .args(["plugin", "deploy"])
        .arg(file)
        .args([
            "--to",
            &format!("http://{admin}"),
            "--stage",
            "telemetry/categorize",
        ])
        .env("WEIR_ADMIN_TOKEN", weir_tests::service::TOKEN)
        .output()
        .expect("run weir plugin deploy")
}

/// The distinct `PluginVersions` of the Delta table's rows.
fn lineages(table: &Path) -> std::collections::BTreeSet<String> {
    if !table.join("_delta_log").is_dir() {
        return Default::default();
    }
    weir_tests::read_delta(table)
        .rows
        .iter()
        .filter_map(|row| row["PluginVersions"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn deploy_activates_refuses_and_reports_a_rollback_and_rows_name_every_stage_version() {
    const WAIT: Duration = Duration::from_secs(180);
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let root = outside.path();
    let categorize = new_and_build(&home, &target, root, "categorize", "transform");
    let enrich = new_and_build(&home, &target, root, "enrich", "transform");
    let window = new_and_build(&home, &target, root, "deploy-window", "window");
    // Version 0.2.0 of categorize: the same logic, another crate version.
    let manifest = root.join("categorize/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1),
    )
    .expect("write manifest");
    let categorize_2 = build_crate(&home, &target, &root.join("categorize"));
    assert_ne!(categorize.hash, categorize_2.hash);

    let run_dir = root.join("run");
    let config = two_stage_config(&run_dir, &categorize, &enrich);
    let mut process = WeirProcess::run(&config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let mut readings: Vec<String> = weir_tests::telemetry::generated_readings(20, 2000, 3)
        .iter()
        .map(weir_tests::telemetry::Reading::to_json)
        .collect();
    // One reading the first stage refuses: its dead letter names the plugin and the versions.
    readings.insert(
        10,
        r#"{"EventId":"bad-1","DeviceId":"device-x"}"#.to_owned(),
    );
    let feeder = weir_tests::service::Feeder::start_lines(
        &run_dir.join("readings.jsonl"),
        readings,
        20,
        Duration::from_millis(20),
    );
    let table = run_dir.join("delta/rows");
    let first = format!(
        "categorize@0.1.0+{},enrich@0.1.0+{}",
        categorize.hash, enrich.hash
    );
    weir_tests::service::wait_until(WAIT, "rows naming both stages' versions", || {
        lineages(&table).contains(&first)
    });
    weir_tests::service::wait_until(WAIT, "the dead letter", || {
        !weir_tests::read_jsonl_dir(&run_dir.join("dead_letters")).is_empty()
    });
    let letters = weir_tests::read_jsonl_dir(&run_dir.join("dead_letters"));
    let letter = &letters[0];
    assert_eq!(letter["reason"], "missing field `Temperature`", "{letter}");
    assert_eq!(letter["plugin"], "categorize", "{letter}");
    assert_eq!(letter["plugin_crate_version"], "0.1.0", "{letter}");
    let expected = format!("categorize@0.1.0+{}", categorize.hash);
    assert_eq!(letter["plugin_versions"], expected.as_str(), "{letter}");

    // Activated: the deploy waits for the probation, then the rows name the new version.
    let out = deploy(&home, &target, &admin, &categorize_2.file);
    assert_success(&out, "weir plugin deploy");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = format!(
        "activated: categorize 0.2.0 ({}) on stage telemetry/categorize passed its probation",
        categorize_2.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");
    let second = format!(
        "categorize@0.2.0+{},enrich@0.1.0+{}",
        categorize_2.hash, enrich.hash
    );
    weir_tests::service::wait_until(WAIT, "rows of the new version", || {
        lineages(&table).contains(&second)
    });

    // Refused: a component of another kind; the running version keeps running.
    let out = deploy(&home, &target, &admin, &window.file);
    assert!(!out.status.success(), "a window component is refused");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("refused (HTTP 422)"), "{error}");
    assert!(
        error.contains("does not implement world `weir:plugin/event-transform@0.3.0`"),
        "{error}"
    );

    // Rolled back: a version that traps on every event fails its probation.
    let out = deploy(
        &home,
        &target,
        &admin,
        &weir_tests::plugin_path("trap_always"),
    );
    assert!(!out.status.success(), "a rolled-back deploy fails");
    let error = String::from_utf8_lossy(&out.stderr);
    let trap = weir_tests::service::version_of(&weir_tests::plugin_path("trap_always"));
    let expected = format!(
        "rolled back: {trap} failed its probation and the host went back to categorize 0.2.0 ({})",
        categorize_2.hash
    );
    assert!(error.contains(&expected), "`{expected}` in:\n{error}");
    assert!(error.contains("trap"), "the reason: {error}");

    // The tables: every stage, then one stage's versions and activations.
    let out = weir(&home, &target)
        .args(["plugin", "list", "--admin", &admin])
        .output()
        .expect("run weir plugin list");
    assert_success(&out, "weir plugin list");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("STAGE"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("telemetry/categorize "))
        .unwrap_or_else(|| panic!("a row for the stage in:\n{text}"));
    for cell in [categorize_2.hash.as_str(), "categorize", "0.2.0"] {
        assert!(row.contains(cell), "`{cell}` in `{row}`");
    }
    let out = weir(&home, &target)
        .args([
            "plugin",
            "status",
            "--admin",
            &admin,
            "--stage",
            "telemetry/categorize",
        ])
        .output()
        .expect("run weir plugin status");
    assert_success(&out, "weir plugin status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("rolled_back"), "{text}");
    assert!(text.contains("automatic_rollback"), "{text}");

    // An operator goes back to the first version.
    let out = weir(&home, &target)
        .args([
            "plugin",
            "rollback",
            "--admin",
            &admin,
            "--stage",
            "telemetry/categorize",
        ])
        .args([
            "--to",
            &categorize.hash,
            "--token",
            weir_tests::service::TOKEN,
        ])
        .output()
        .expect("run weir plugin rollback");
    assert_success(&out, "weir plugin rollback");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = format!(
        "rolled back: stage telemetry/categorize runs categorize 0.1.0 ({})",
        categorize.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");

    feeder.stop();
    assert!(process.is_running());
    process.terminate();
    process.wait(WAIT);
}

/// The partition of `key` among `partitions`, as Weir computes it (FNV-1a 64).
fn partition_of(key: &str, partitions: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % partitions
}

/// Readings of four devices, two per partition of two, in turn; each device's `Seq` counts its
/// own readings, so that any 10 consecutive readings of a device hold one whose `Seq` ends in 3.
fn shadow_readings(count: usize) -> Vec<String> {
    let mut devices: Vec<String> = Vec::new();
    for partition in 0..2 {
        devices.extend(
            (0..)
                .map(|i| format!("device-{i}"))
                .filter(|d| partition_of(d, 2) == partition)
                .filter(|d| !devices.contains(d))
                .take(2)
                .collect::<Vec<_>>(),
        );
    }
    (0..count)
        .map(|n| {
            let device = &devices[n % devices.len()];
            serde_json::json!({
                "EventId": format!("e{n}"),
                "DeviceId": device,
                "Temperature": 20.0,
                "Seq": n / devices.len(),
            })
            .to_string()
        })
        .collect()
}

/// The rows of the Delta table: (EventId, PluginVersions).
fn delta_rows(table: &Path) -> Vec<(String, String)> {
    if !table.join("_delta_log").is_dir() {
        return Vec::new();
    }
    weir_tests::read_delta(table)
        .rows
        .iter()
        .map(|row| {
            let text = |field: &str| row[field].as_str().unwrap_or_default().to_owned();
            (text("EventId"), text("PluginVersions"))
        })
        .collect()
}

#[test]
fn a_shadow_deploy_reports_the_share_that_differs_and_activates_only_an_equal_version() {
    const WAIT: Duration = Duration::from_secs(240);
    // A multiple of 20: in any 240 consecutive readings of a partition (two devices in turn),
    // exactly 24 have a `Seq` ending in 3.
    const SHADOW: u64 = 240;
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let root = outside.path();
    let active = new_and_build(&home, &target, root, "shadowed", "transform");
    let enrich = new_and_build(&home, &target, root, "shadow-enrich", "transform");
    let crate_dir = root.join("shadowed");
    let lib = crate_dir.join("src/lib.rs");
    let manifest = crate_dir.join("Cargo.toml");
    let (source, cargo) = (
        std::fs::read_to_string(&lib).expect("lib.rs"),
        std::fs::read_to_string(&manifest).expect("manifest"),
    );
    // A version that changes the rows of readings whose `Seq` ends in 3: a tenth of them.
    let forward = "    ctx.forward(\"rows\");\n";
    assert!(source.contains(forward), "the template forwards its rows");
    let variant = source.replacen(
        forward,
        r#"    let mut row: serde_json::Value = event.value()?;
    if row["Seq"].as_u64().is_some_and(|seq| seq % 10 == 3) {
        row["Variant"] = 2.into();
        ctx.emit("rows", &row)?;
    } else {
        ctx.forward("rows");
    }
"#,
        1,
    );
    std::fs::write(&lib, variant).expect("write lib.rs");
    std::fs::write(
        &manifest,
        cargo.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1),
    )
    .expect("manifest");
    let differing = build_crate(&home, &target, &crate_dir);
    // A version that behaves the same: the same logic, another crate version.
    std::fs::write(&lib, &source).expect("write lib.rs");
    std::fs::write(
        &manifest,
        cargo.replacen("version = \"0.1.0\"", "version = \"0.1.1\"", 1),
    )
    .expect("manifest");
    let same = build_crate(&home, &target, &crate_dir);

    let run_dir = root.join("run");
    let config = two_stage_config(&run_dir, &active, &enrich);
    let mut process = WeirProcess::run(&config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let readings = shadow_readings(16_000);
    let feeder = weir_tests::service::Feeder::start_lines(
        &run_dir.join("readings.jsonl"),
        readings.clone(),
        8,
        Duration::from_millis(20),
    );
    let table = run_dir.join("delta/rows");
    weir_tests::service::wait_until(WAIT, "the first rows", || !delta_rows(&table).is_empty());

    let shadow_deploy = |component: &Component, activate: bool| {
        let mut command = weir(&home, &target);
        command
            .args(["plugin", "deploy"])
            .arg(&component.file)
            .args(["--to", &admin, "--stage", "telemetry/categorize"])
            .args(["--token", weir_tests::service::TOKEN])
            .args(["--shadow", &SHADOW.to_string()]);
        if activate {
            command.arg("--activate-if-equal");
        }
        command.output().expect("run weir plugin deploy --shadow")
    };

    // A version differing on a tenth of the events: the report says so, and nothing changes.
    let out = shadow_deploy(&differing, false);
    assert_success(&out, "weir plugin deploy --shadow");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = text
        .lines()
        .find(|l| l.starts_with("rows "))
        .unwrap_or_else(|| panic!("a row for output `rows` in:\n{text}"));
    let cells: Vec<&str> = rows.split_whitespace().collect();
    assert_eq!(cells, ["rows", "480", "480", "48"], "{text}");
    assert!(
        text.contains("verdict: 48 of 480 record(s) differ"),
        "{text}"
    );
    assert!(text.contains("nothing was activated"), "{text}");
    let pair = text
        .split("output `rows`, partition ")
        .nth(1)
        .unwrap_or_else(|| panic!("a first differing pair in:\n{text}"));
    let mut lines = pair.lines().skip(1);
    let active_body = lines.next().and_then(|l| l.trim().strip_prefix("active: "));
    let shadow_body = lines.next().and_then(|l| l.trim().strip_prefix("shadow: "));
    let (Some(active_body), Some(shadow_body)) = (active_body, shadow_body) else {
        panic!("the pair's records in:\n{text}");
    };
    let active_row: serde_json::Value = serde_json::from_str(active_body).expect("active row");
    let shadow_row: serde_json::Value = serde_json::from_str(shadow_body).expect("shadow row");
    assert_eq!(
        active_row["Seq"].as_u64().map(|s| s % 10),
        Some(3),
        "{text}"
    );
    assert_eq!(shadow_row["Variant"], 2, "{text}");
    assert_eq!(shadow_row["EventId"], active_row["EventId"], "{text}");
    let report = get_json(&admin, "/plugins/telemetry/categorize");
    assert_eq!(
        report["active"],
        active.hash.as_str(),
        "nothing changed: {report}"
    );
    assert_eq!(
        report["activations"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    // The same behaviour with --activate-if-equal: activated once the run agrees.
    let out = shadow_deploy(&same, true);
    assert_success(&out, "weir plugin deploy --shadow --activate-if-equal");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("verdict: the two versions agree on every record"),
        "{text}"
    );
    let expected = format!(
        "activated: shadowed 0.1.1 ({}) on stage telemetry/categorize passed its probation",
        same.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");

    // No event lost or duplicated around either: every reading is one row, made by the first
    // version or the one activated, never by the version that ran in the shadow.
    let written = feeder.stop();
    weir_tests::service::wait_until(WAIT, "every reading in the table", || {
        delta_rows(&table).len() >= written
    });
    let rows = delta_rows(&table);
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(rows.len(), written, "no duplicate");
    assert_eq!(ids.len(), written, "no duplicate");
    for reading in &readings[..written] {
        let reading: serde_json::Value = serde_json::from_str(reading).expect("json");
        let id = reading["EventId"].as_str().expect("id");
        assert!(ids.contains(id), "{id} is lost");
    }
    let lineages: std::collections::BTreeSet<&str> =
        rows.iter().map(|(_, lineage)| lineage.as_str()).collect();
    for version in [&active, &same] {
        let expected = format!(
            "{}+{},enrich@0.1.0+{}",
            if version.hash == active.hash {
                "categorize@0.1.0"
            } else {
                "categorize@0.1.1"
            },
            version.hash,
            enrich.hash
        );
        assert!(
            lineages.contains(expected.as_str()),
            "{expected} in {lineages:?}"
        );
    }
    assert!(
        lineages.iter().all(|l| !l.contains(&differing.hash)),
        "{lineages:?}"
    );
    assert!(process.is_running());
    process.terminate();
    process.wait(WAIT);
}

#[test]
fn a_missing_wasm_target_is_reported_with_the_command_that_adds_it() {
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let dir = outside.path().join("no-target");
    let out = weir(&home, &target)
        .args(["plugin", "new", "no-target", "--kind", "transform", "--dir"])
        .arg(&dir)
        .output()
        .expect("run weir");
    assert_success(&out, "weir plugin new");
    // A toolchain whose sysroot has no standard library for wasm32-wasip2: a `rustc` that
    // answers `--print sysroot` with an empty directory and passes everything else on.
    let sysroot = outside.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu")).expect("mkdir");
    let rustc = outside.path().join("fake-rustc");
    std::fs::write(
        &rustc,
        format!(
            "#!/bin/sh\nif [ \"$1\" = \"--print\" ] && [ \"$2\" = \"sysroot\" ]; then echo '{}'; exit 0; fi\nexec rustc \"$@\"\n",
            sysroot.display()
        ),
    )
    .expect("write fake rustc");
    let mut permissions = std::fs::metadata(&rustc).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&rustc, permissions).expect("chmod");
    let out = weir(&home, &target)
        .args(["plugin", "build"])
        .arg(&dir)
        .env("RUSTC", &rustc)
        .output()
        .expect("run weir");
    assert!(!out.status.success(), "the build must stop");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains(
            "the Rust target `wasm32-wasip2` is not installed; add it with: rustup target add wasm32-wasip2"
        ),
        "{error}"
    );
}

/// Appends `lines` to the input file at `path`.
fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open input");
    let mut text = lines.join("\n");
    text.push('\n');
    file.write_all(text.as_bytes()).expect("append");
}

/// Starts `weir plugin deploy FILE --shadow N` on `stage` (over `url`, with `extra` flags),
/// activating if equal when `activate` is set.
fn spawn_shadow(
    home: &Path,
    target: &Path,
    url: &str,
    stage: &str,
    component: &Component,
    events: u64,
    activate: bool,
) -> std::process::Child {
    let mut command = weir(home, target);
    command
        .args(["plugin", "deploy"])
        .arg(&component.file)
        .args(["--to", url, "--stage", stage])
        .args(["--token", weir_tests::service::TOKEN])
        .args(["--shadow", &events.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if activate {
        command.arg("--activate-if-equal");
    }
    command.spawn().expect("run weir plugin deploy --shadow")
}

/// Waits until the shadow run of `hash` on `pipeline/stage` has started.
fn wait_for_shadow_run(admin: &str, pipeline: &str, stage: &str, hash: &str) {
    let path = format!("/plugins/{pipeline}/{stage}/shadow");
    weir_tests::service::wait_until(Duration::from_secs(120), "the shadow run", || {
        let (status, body) = weir_tests::service::http(admin, "GET", &path, None, b"");
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|report| report["version"] == hash)
    });
}

/// Waits until the shadow run on `pipeline/stage` has ended.
fn wait_for_shadow_end(admin: &str, pipeline: &str, stage: &str) {
    let path = format!("/plugins/{pipeline}/{stage}/shadow");
    weir_tests::service::wait_until(Duration::from_secs(120), "the shadow run's end", || {
        get_json(admin, &path)["done"] == true
    });
}

/// The cells of the line of output `name` in a shadow report's table.
fn output_row(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("a row for output `{name}` in:\n{text}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The active and shadow records of the first differing pair of output `name`.
fn first_pair(text: &str, name: &str) -> (serde_json::Value, serde_json::Value) {
    let pair = text
        .split(&format!("output `{name}`, partition "))
        .nth(1)
        .unwrap_or_else(|| panic!("a first differing pair in:\n{text}"));
    let mut lines = pair.lines().skip(1);
    let active = lines.next().and_then(|l| l.trim().strip_prefix("active: "));
    let shadow = lines.next().and_then(|l| l.trim().strip_prefix("shadow: "));
    let (Some(active), Some(shadow)) = (active, shadow) else {
        panic!("the pair's records in:\n{text}");
    };
    (
        serde_json::from_str(active).expect("active record"),
        serde_json::from_str(shadow).expect("shadow record"),
    )
}

/// The first event time of the window tests, on a whole even second.
const BASE_TIME: i64 = 1_700_000_000_000;

/// Readings of two devices for each second of `seconds`: five per device, 200 ms apart.
fn window_readings(seconds: std::ops::Range<i64>) -> Vec<String> {
    let mut lines = Vec::new();
    for second in seconds {
        for step in 0..5 {
            for device in ["d1", "d2"] {
                lines.push(
                    serde_json::json!({
                        "DeviceId": device,
                        "Time": BASE_TIME + second * 1000 + step * 200,
                        "Temperature": 20.0 + step as f64,
                    })
                    .to_string(),
                );
            }
        }
    }
    lines
}

/// One partition read from a followed file, event time from `Time`, through a window stage of
/// one-second tumbling windows per device (the component in `plugins/minute.wasm`) to files.
fn window_shadow_config(dir: &Path, minute: &Component) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).expect("plugins dir");
    std::fs::copy(&minute.file, dir.join("plugins/minute.wasm")).expect("copy");
    std::fs::write(dir.join("readings.jsonl"), "").expect("input");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "300ms"

[plugins]
watch = false
rollback = {{ probation_events = 20, max_trap_ratio = 0.05, max_error_ratio = 0.5 }}

[admin]
address = "127.0.0.1:0"
token = "{token}"

[sources.readings]
kind = "file"
path = "readings.jsonl"
partitions = 1
key_field = "DeviceId"
follow = true

[sinks.rows]
kind = "file"
path = "rows"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.minute]
source = "readings"
dead_letter = "dead_letters"
event_time = {{ field = "Time" }}
batch = {{ max_events = 16, max_wait = "20ms" }}

[[pipelines.minute.stages]]
name = "minute"
plugin = "plugins/minute.wasm"
window = {{ type = "tumbling", size = "1s", group_by = ["DeviceId"] }}
outputs = {{ rows = "rows" }}
"#,
        token = weir_tests::service::TOKEN,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// The template window plugin's `finish`, and a version of it that marks the rows of windows
/// starting on an even second.
const WINDOW_FINISH: &str = r#"    fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
        ctx.emit(
            "rows",
            &serde_json::json!({
                "EventCount": self.count,
                "AvgTemperature": self.sum / self.count.max(1) as f64,
                "MaxTemperature": self.max,
            }),
        )
    }"#;
const WINDOW_FINISH_VARIANT: &str = r#"    fn finish(self, window: &Window, ctx: &mut Context) -> Result<()> {
        let mut row = serde_json::json!({
            "EventCount": self.count,
            "AvgTemperature": self.sum / self.count.max(1) as f64,
            "MaxTemperature": self.max,
        });
        if (window.start() / 1000) % 2 == 0 {
            row["Variant"] = 2.into();
        }
        ctx.emit("rows", &row)
    }"#;

/// Builds the crate at `dir` twice more: with `logic` replaced by `variant` as 0.2.0, and as
/// written as 0.1.1 (another version that behaves the same); leaves it as written.
fn variant_and_same(
    home: &Path,
    target: &Path,
    dir: &Path,
    logic: &str,
    variant: &str,
) -> (Component, Component) {
    let lib = dir.join("src/lib.rs");
    let manifest = dir.join("Cargo.toml");
    let (source, cargo) = (
        std::fs::read_to_string(&lib).expect("lib.rs"),
        std::fs::read_to_string(&manifest).expect("manifest"),
    );
    assert!(source.contains(logic), "`{logic}` in the template");
    std::fs::write(&lib, source.replacen(logic, variant, 1)).expect("write lib.rs");
    let version = |v: &str| cargo.replacen("version = \"0.1.0\"", &format!("version = \"{v}\""), 1);
    std::fs::write(&manifest, version("0.2.0")).expect("manifest");
    let differing = build_crate(home, target, dir);
    std::fs::write(&lib, &source).expect("write lib.rs");
    std::fs::write(&manifest, version("0.1.1")).expect("manifest");
    let same = build_crate(home, target, dir);
    std::fs::write(&manifest, &cargo).expect("manifest");
    (differing, same)
}

#[test]
fn a_window_stage_shadow_run_compares_window_rows_and_activates_only_an_equal_version() {
    const WAIT: Duration = Duration::from_secs(240);
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let root = outside.path();
    let active = new_and_build(&home, &target, root, "minute", "window");
    let (differing, same) = variant_and_same(
        &home,
        &target,
        &root.join("minute"),
        WINDOW_FINISH,
        WINDOW_FINISH_VARIANT,
    );
    let run_dir = root.join("run");
    let config = window_shadow_config(&run_dir, &active);
    let mut process = WeirProcess::run(&config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let url = format!("http://{admin}");
    let input = run_dir.join("readings.jsonl");
    let rows_dir = run_dir.join("rows");
    let rows = || weir_tests::read_jsonl_dir(&rows_dir);

    // Seconds 0 to 4: the windows of seconds 0 to 3 close; that of second 4 stays open.
    append(&input, &window_readings(0..5));
    weir_tests::service::wait_until(WAIT, "the first windows", || rows().len() >= 8);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rows().len(), 8, "{:?}", rows());

    // A version that marks the rows of windows on even seconds, in the shadow of the next 100
    // events (seconds 5 to 14): the windows of seconds 4 to 13 close meanwhile, on a copy of the
    // open window of second 4; 20 rows, 10 of them (seconds 4, 6, 8, 10, 12) differ.
    let child = spawn_shadow(
        &home,
        &target,
        &url,
        "minute/minute",
        &differing,
        100,
        false,
    );
    wait_for_shadow_run(&admin, "minute", "minute", &differing.hash);
    append(&input, &window_readings(5..15));
    let out = child.wait_with_output().expect("deploy --shadow");
    assert_success(&out, "weir plugin deploy --shadow (window)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        output_row(&text, "rows"),
        ["rows", "20", "20", "10"],
        "{text}"
    );
    assert!(
        text.contains("partition 0: 100 of 100 events, done"),
        "{text}"
    );
    assert!(
        text.contains("verdict: 10 of 20 record(s) differ"),
        "{text}"
    );
    assert!(text.contains("nothing was activated"), "{text}");
    let (active_row, shadow_row) = first_pair(&text, "rows");
    assert_eq!(active_row["Variant"], serde_json::Value::Null, "{text}");
    assert_eq!(shadow_row["Variant"], 2, "{text}");
    for field in ["DeviceId", "WindowStart", "EventCount"] {
        assert_eq!(shadow_row[field], active_row[field], "{field}: {text}");
    }
    assert_eq!(active_row["EventCount"], 5, "{text}");
    let report = get_json(&admin, "/plugins/minute/minute");
    assert_eq!(report["active"], active.hash.as_str(), "{report}");
    assert_eq!(report["activations"].as_array().map(Vec::len), Some(1));

    // The same behaviour, another version: activated once the run agrees, then through its
    // probation while readings go on.
    let child = spawn_shadow(&home, &target, &url, "minute/minute", &same, 100, true);
    wait_for_shadow_run(&admin, "minute", "minute", &same.hash);
    append(&input, &window_readings(15..25));
    wait_for_shadow_end(&admin, "minute", "minute");
    let feeder = weir_tests::service::Feeder::start_lines(
        &input,
        window_readings(25..400),
        10,
        Duration::from_millis(50),
    );
    let out = child
        .wait_with_output()
        .expect("deploy --shadow --activate-if-equal");
    let written = feeder.stop();
    assert_success(
        &out,
        "weir plugin deploy --shadow --activate-if-equal (window)",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        output_row(&text, "rows"),
        ["rows", "20", "20", "0"],
        "{text}"
    );
    assert!(
        text.contains("verdict: the two versions agree on every record"),
        "{text}"
    );
    let expected = format!(
        "activated: minute 0.1.1 ({}) on stage minute/minute passed its probation",
        same.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");

    // No reading lost or counted twice around either run: every window before the last second
    // written is one row per device, of its five readings; none made by the shadowed versions.
    let last = 25 + (written as i64 - 1) / 10;
    weir_tests::service::wait_until(WAIT, "every closed window", || {
        rows().len() >= 2 * last as usize
    });
    let rows = rows();
    let mut windows = std::collections::BTreeMap::new();
    for row in &rows {
        assert_eq!(row["EventCount"], 5, "{row}");
        assert_eq!(row["Variant"], serde_json::Value::Null, "{row}");
        let key = (row["DeviceId"].to_string(), row["WindowStart"].to_string());
        *windows.entry(key).or_insert(0) += 1;
    }
    assert!(
        windows.values().all(|n| *n == 1),
        "a window twice: {windows:?}"
    );
    assert_eq!(windows.len(), rows.len());
    assert!(rows.len() >= 2 * last as usize, "{} rows", rows.len());
    assert!(process.is_running());
    process.terminate();
    process.wait(WAIT);
}

/// Orders for the join tests: a seat and, 100 ms later, its payment, one second apart.
struct Orders {
    /// The next order's number.
    next: u64,
    /// Its event time.
    time: i64,
}

impl Orders {
    /// The next `per_partition` orders of each of two partitions (seat lines, payment lines,
    /// order ids); in each partition every fifth order is marked (`"Mark": true`).
    fn take(&mut self, per_partition: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
        let (mut seats, mut payments, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        let mut taken = [0usize; 2];
        while taken.iter().any(|n| *n < per_partition) {
            let id = format!("o{}", self.next);
            self.next += 1;
            let partition = partition_of(&id, 2) as usize;
            if taken[partition] == per_partition {
                continue;
            }
            let mark = taken[partition] % 5 == 0;
            taken[partition] += 1;
            seats.push(
                serde_json::json!({
                    "OrderId": id, "SeatId": format!("S{}", self.next), "Time": self.time,
                    "Mark": mark,
                })
                .to_string(),
            );
            payments.push(
                serde_json::json!({ "OrderId": id, "Amount": 40.0, "Time": self.time + 100 })
                    .to_string(),
            );
            ids.push(id);
            self.time += 1000;
        }
        (seats, payments, ids)
    }
}

/// A transform that routes payments (events with an `Amount`) to output `payments` and the rest
/// to output `seats`.
const ROUTER: &str = r#"use weir_sdk::prelude::*;

#[weir_sdk::transform]
pub fn route(event: &Event, ctx: &mut Context) -> Result<()> {
    let value: serde_json::Value = event.value()?;
    ctx.forward(if value.get("Amount").is_some() { "payments" } else { "seats" });
    Ok(())
}
"#;

/// One followed file of seats and payments, two partitions keyed by order: the stage `route`
/// (`plugins/route.wasm`) sends seats to the left and payments to the right of the join stage
/// `pairs` (`plugins/pairs.wasm`), which joins them within two minutes; rows to files.
fn join_shadow_config(dir: &Path, route: &Component, pairs: &Component) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).expect("plugins dir");
    std::fs::copy(&route.file, dir.join("plugins/route.wasm")).expect("copy");
    std::fs::copy(&pairs.file, dir.join("plugins/pairs.wasm")).expect("copy");
    std::fs::write(dir.join("orders.jsonl"), "").expect("input");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "300ms"

[plugins]
watch = false
rollback = {{ probation_events = 20, max_trap_ratio = 0.05, max_error_ratio = 0.5 }}

[admin]
address = "127.0.0.1:0"
token = "{token}"

[sources.orders]
kind = "file"
path = "orders.jsonl"
partitions = 2
key_field = "OrderId"
follow = true

[sinks.rows]
kind = "file"
path = "rows"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.orders]
source = "orders"
dead_letter = "dead_letters"
event_time = {{ field = "Time" }}
batch = {{ max_events = 32, max_wait = "20ms" }}

[[pipelines.orders.stages]]
name = "route"
plugin = "plugins/route.wasm"
outputs = {{ seats = "pairs.left", payments = "pairs.right" }}

[[pipelines.orders.stages]]
name = "pairs"
plugin = "plugins/pairs.wasm"
join = {{ key = "OrderId", within = "2m", unmatched_left = "emit", unmatched_right = "drop" }}
outputs = {{ rows = "rows" }}
"#,
        token = weir_tests::service::TOKEN,
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

#[test]
fn a_join_stage_shadow_run_compares_pairs_and_activates_only_an_equal_version() {
    const WAIT: Duration = Duration::from_secs(240);
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let root = outside.path();
    let active = new_and_build(&home, &target, root, "pairs", "join");
    let paid = "    row[\"Paid\"] = payment.is_some().into();\n";
    let (differing, same) = variant_and_same(
        &home,
        &target,
        &root.join("pairs"),
        paid,
        &format!(
            "{paid}    if row[\"Mark\"] == true {{\n        row[\"Variant\"] = 2.into();\n    }}\n"
        ),
    );
    let route_dir = root.join("route");
    let out = weir(&home, &target)
        .args(["plugin", "new", "route", "--kind", "transform", "--dir"])
        .arg(&route_dir)
        .output()
        .expect("run weir");
    assert_success(&out, "weir plugin new");
    std::fs::write(route_dir.join("src/lib.rs"), ROUTER).expect("write the router");
    let route = build_crate(&home, &target, &route_dir);
    let run_dir = root.join("run");
    let config = join_shadow_config(&run_dir, &route, &active);
    let mut process = WeirProcess::run(&config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let url = format!("http://{admin}");
    let input = run_dir.join("orders.jsonl");
    let rows_dir = run_dir.join("rows");
    let rows = || weir_tests::read_jsonl_dir(&rows_dir);
    let mut orders = Orders {
        next: 0,
        time: BASE_TIME,
    };
    let mut all_ids = Vec::new();
    let mut feed = |orders: &mut Orders, per_partition: usize| {
        let (seats, payments, ids) = orders.take(per_partition);
        // Each order's seat, then its payment.
        let lines: Vec<String> = seats
            .into_iter()
            .zip(payments)
            .flat_map(|(s, p)| [s, p])
            .collect();
        append(&input, &lines);
        all_ids.extend(ids);
        all_ids.len()
    };

    // 20 orders per partition, each paid: 40 rows.
    let fed = feed(&mut orders, 20);
    weir_tests::service::wait_until(WAIT, "the first rows", || rows().len() >= fed);

    // A version that marks the rows of marked orders, in the shadow of the next 100 events of
    // each partition (50 orders: 50 pairs, 10 marked): 100 rows, 20 differ.
    let child = spawn_shadow(&home, &target, &url, "orders/pairs", &differing, 100, false);
    wait_for_shadow_run(&admin, "orders", "pairs", &differing.hash);
    feed(&mut orders, 50);
    let out = child.wait_with_output().expect("deploy --shadow");
    assert_success(&out, "weir plugin deploy --shadow (join)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        output_row(&text, "rows"),
        ["rows", "100", "100", "20"],
        "{text}"
    );
    for partition in 0..2 {
        let line = format!("partition {partition}: 100 of 100 events, done");
        assert!(text.contains(&line), "`{line}` in:\n{text}");
    }
    assert!(
        text.contains("verdict: 20 of 100 record(s) differ"),
        "{text}"
    );
    assert!(text.contains("nothing was activated"), "{text}");
    let (active_row, shadow_row) = first_pair(&text, "rows");
    assert_eq!(active_row["Mark"], true, "{text}");
    assert_eq!(active_row["Variant"], serde_json::Value::Null, "{text}");
    assert_eq!(shadow_row["Variant"], 2, "{text}");
    assert_eq!(shadow_row["OrderId"], active_row["OrderId"], "{text}");
    assert_eq!(active_row["Paid"], true, "{text}");
    let report = get_json(&admin, "/plugins/orders/pairs");
    assert_eq!(report["active"], active.hash.as_str(), "{report}");
    assert_eq!(report["activations"].as_array().map(Vec::len), Some(1));

    // The same behaviour, another version: activated once the run agrees, then through its
    // probation while orders go on.
    let child = spawn_shadow(&home, &target, &url, "orders/pairs", &same, 100, true);
    wait_for_shadow_run(&admin, "orders", "pairs", &same.hash);
    feed(&mut orders, 50);
    wait_for_shadow_end(&admin, "orders", "pairs");
    let mut child = child;
    while child.try_wait().expect("deploy").is_none() {
        feed(&mut orders, 5);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child
        .wait_with_output()
        .expect("deploy --shadow --activate-if-equal");
    assert_success(
        &out,
        "weir plugin deploy --shadow --activate-if-equal (join)",
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        output_row(&text, "rows"),
        ["rows", "100", "100", "0"],
        "{text}"
    );
    let expected = format!(
        "activated: pairs 0.1.1 ({}) on stage orders/pairs passed its probation",
        same.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");

    // No order lost or joined twice around either run, none by the shadowed versions.
    let fed = all_ids.len();
    weir_tests::service::wait_until(WAIT, "a row for every order", || rows().len() >= fed);
    std::thread::sleep(Duration::from_millis(500));
    let rows = rows();
    let ids: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["OrderId"].as_str()).collect();
    assert_eq!(rows.len(), fed, "one row per order");
    assert_eq!(ids.len(), fed, "no order twice");
    for id in &all_ids {
        assert!(ids.contains(id.as_str()), "{id} is lost");
    }
    assert!(
        rows.iter()
            .all(|r| r["Paid"] == true && r["Variant"].is_null())
    );
    assert!(process.is_running());
    process.terminate();
    process.wait(WAIT);
}

#[test]
fn plugin_commands_speak_https_and_a_shadow_run_without_events_on_a_partition_ends_at_its_bound() {
    const WAIT: Duration = Duration::from_secs(240);
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let root = outside.path();
    let (ca, cert, key) = weir_tests::tls::test_certificates(root);
    let categorize = new_and_build(&home, &target, root, "categorize", "transform");
    let enrich = new_and_build(&home, &target, root, "enrich", "transform");
    let manifest = root.join("categorize/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replacen("version = \"0.1.0\"", "version = \"0.1.1\"", 1),
    )
    .expect("write manifest");
    let same = build_crate(&home, &target, &root.join("categorize"));

    let run_dir = root.join("run");
    let tls = format!(
        "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let config = two_stage_config_with(&run_dir, &categorize, &enrich, &tls);
    let mut process = WeirProcess::run(&config);
    let marker = "admin API listening on https://";
    let mut port = String::new();
    weir_tests::service::wait_until(WAIT, "the admin API over https", || {
        let log = process.log_text();
        port = log
            .split(marker)
            .nth(1)
            .map(|rest| rest.chars().take_while(|c| *c != '\n').collect())
            .unwrap_or_default();
        !port.is_empty()
    });
    let url = format!("https://{}", port.trim());
    // Readings of the devices of partition 0 only: partition 1 gets none.
    let devices: Vec<String> = (0..)
        .map(|i| format!("device-{i}"))
        .filter(|d| partition_of(d, 2) == 0)
        .take(2)
        .collect();
    let readings: Vec<String> = (0..20_000)
        .map(|n| {
            serde_json::json!({
                "EventId": format!("e{n}"), "DeviceId": devices[n % 2], "Temperature": 20.0,
            })
            .to_string()
        })
        .collect();
    let feeder = weir_tests::service::Feeder::start_lines(
        &run_dir.join("readings.jsonl"),
        readings,
        8,
        Duration::from_millis(20),
    );
    let plugin = |args: &[&str], ca_file: Option<&Path>| {
        let mut command = weir(&home, &target);
        command.arg("plugin").args(args);
        if let Some(ca_file) = ca_file {
            command.env("WEIR_ADMIN_CA_FILE", ca_file);
        }
        command.output().expect("run weir plugin")
    };
    let ca_flag = ca.display().to_string();
    // Once the pipelines started, the stage is listed.
    weir_tests::service::wait_until(WAIT, "weir plugin list over https", || {
        let out = plugin(&["list", "--admin", &url, "--ca-file", &ca_flag], None);
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("telemetry/categorize")
    });

    // Without the private CA, the server's certificate is not trusted.
    let out = plugin(&["list", "--admin", &url], None);
    assert!(!out.status.success(), "an unknown CA must be refused");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("invalid peer certificate"), "{error}");
    // With it (from the environment): the table.
    let out = plugin(&["list", "--admin", &url], Some(&ca));
    assert_success(&out, "weir plugin list over https");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("telemetry/categorize ") && l.contains(&categorize.hash)),
        "{text}"
    );
    // The token is checked as over plain HTTP.
    let out = plugin(
        &[
            "rollback",
            "--admin",
            &url,
            "--ca-file",
            &ca_flag,
            "--stage",
            "telemetry/categorize",
            "--token",
            "wrong",
        ],
        None,
    );
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("refused (HTTP 401)"), "{error}");

    // A shadow run of 50 events per partition, bounded to 5 s: partition 1 gets no events, so
    // the run ends at its bound, says partition 1 was not covered, and the version that agreed
    // on what was compared is activated.
    let started = std::time::Instant::now();
    let out = plugin(
        &[
            "deploy",
            &same.file.display().to_string(),
            "--to",
            &url,
            "--ca-file",
            &ca_flag,
            "--stage",
            "telemetry/categorize",
            "--token",
            weir_tests::service::TOKEN,
            "--shadow",
            "50",
            "--shadow-for",
            "5",
            "--activate-if-equal",
        ],
        None,
    );
    assert_success(&out, "weir plugin deploy --shadow over https");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for expected in [
        "the next 50 events of each partition (for 5 s at most)",
        "partition 0: 50 of 50 events, done",
        "partition 1: 0 of 50 events, no events before the time bound: not covered",
        "the run ended at its time bound (5 s)",
        "verdict: the two versions agree on every record compared (some partitions not fully covered, see above)",
    ] {
        assert!(text.contains(expected), "`{expected}` in:\n{text}");
    }
    let expected = format!(
        "activated: categorize 0.1.1 ({}) on stage telemetry/categorize passed its probation",
        same.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "the run ended at its bound, not at --wait ({:?})",
        started.elapsed()
    );

    // Status and rollback over https.
    let out = plugin(
        &[
            "status",
            "--admin",
            &url,
            "--ca-file",
            &ca_flag,
            "--stage",
            "telemetry/categorize",
        ],
        None,
    );
    assert_success(&out, "weir plugin status over https");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&same.hash) && text.contains(&categorize.hash),
        "{text}"
    );
    let out = plugin(
        &[
            "rollback",
            "--admin",
            &url,
            "--ca-file",
            &ca_flag,
            "--stage",
            "telemetry/categorize",
            "--to",
            &categorize.hash,
            "--token",
            weir_tests::service::TOKEN,
        ],
        None,
    );
    assert_success(&out, "weir plugin rollback over https");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected = format!(
        "rolled back: stage telemetry/categorize runs categorize 0.1.0 ({})",
        categorize.hash
    );
    assert!(text.contains(&expected), "`{expected}` in:\n{text}");
    feeder.stop();
    assert!(process.is_running());
    process.terminate();
    process.wait(WAIT);
}

#[test]
fn window_rows_name_their_upstream_versions_after_a_sigkill_before_the_next_event() {
    const WAIT: Duration = Duration::from_secs(180);
    let dir = tempfile::tempdir().expect("temp dir");
    let run_dir = dir.path();
    let (route, minute) = (
        weir_tests::plugin_path("passthrough"),
        weir_tests::plugin_path("window_collect"),
    );
    let lineage = format!(
        "route@{},minute@{}",
        weir_tests::service::version_of(&route),
        weir_tests::service::version_of(&minute)
    );
    std::fs::create_dir_all(run_dir.join("plugins")).expect("plugins dir");
    std::fs::copy(&route, run_dir.join("plugins/route.wasm")).expect("copy");
    std::fs::copy(&minute, run_dir.join("plugins/minute.wasm")).expect("copy");
    let input = run_dir.join("readings.jsonl");
    std::fs::write(&input, "").expect("input");
    let config = run_dir.join("weir.toml");
    std::fs::write(
        &config,
        r#"
[checkpoint]
dir = "checkpoints"
interval = "300ms"

[admin]
address = "127.0.0.1:0"

[sources.readings]
kind = "file"
path = "readings.jsonl"
partitions = 2
key_field = "DeviceId"
follow = true

[sinks.rows]
kind = "delta"
path = "delta/rows"
columns = [
  { name = "DeviceId", type = "string", nullable = false },
  { name = "WindowStart", type = "string" },
  { name = "PluginVersions", type = "string", value = "plugin_versions" },
]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.lineage]
source = "readings"
dead_letter = "dead_letters"
event_time = { field = "Time", idle_timeout = "2s" }
batch = { max_events = 16, max_wait = "20ms" }

[[pipelines.lineage.stages]]
name = "route"
plugin = "plugins/route.wasm"
outputs = { out = "minute" }

[[pipelines.lineage.stages]]
name = "minute"
plugin = "plugins/minute.wasm"
window = { type = "tumbling", size = "1m", group_by = ["DeviceId"] }
outputs = { windows = "rows" }
"#,
    )
    .expect("write config");
    // A device of each partition; a minute starting at `start`.
    let device = |partition: u64| {
        (0..)
            .map(|i| format!("device-{i}"))
            .find(|d| partition_of(d, 2) == partition)
            .expect("a device")
    };
    let (quiet, busy) = (device(0), device(1));
    let start: i64 = 28_333_334 * 60_000;
    let reading = |device: &str, second: i64| {
        serde_json::json!({
            "Id": format!("{device}-{second}"), "DeviceId": device, "Value": 1,
            "Time": start + second * 1000,
        })
        .to_string()
    };
    let table = run_dir.join("delta/rows");
    let rows = || {
        if !table.join("_delta_log").is_dir() {
            return Vec::new();
        }
        weir_tests::read_delta(&table).rows
    };

    // Both devices in the first 50 s of the minute: their windows stay open.
    let process = WeirProcess::run(&config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let first: Vec<String> = (0..=10)
        .flat_map(|k| [reading(&quiet, k * 5), reading(&busy, k * 5)])
        .collect();
    append(&input, &first);
    weir_tests::service::wait_until(WAIT, "every reading read", || {
        weir_tests::service::events_in(&admin, "lineage") >= first.len() as u64
    });
    // Checkpoints every 300 ms cover them; then a crash.
    std::thread::sleep(Duration::from_secs(3));
    assert!(rows().is_empty(), "no window closed yet: {:?}", rows());
    process.kill9();

    // After the restart only the busy device's partition gets readings, past the minute: its
    // window closes, and the quiet partition's too once it is idle (its watermark follows the
    // pipeline's), with no event of its own since the restart.
    let skip = std::fs::metadata(config.with_extension("log")).map_or(0, |m| m.len() as usize);
    let process = WeirProcess::run(&config);
    let admin = process.admin_address(skip, WAIT);
    wait_ready(&admin, WAIT);
    let later: Vec<String> = (70..=80).step_by(5).map(|s| reading(&busy, s)).collect();
    append(&input, &later);
    weir_tests::service::wait_until(WAIT, "both windows' rows", || rows().len() >= 2);
    assert_eq!(
        weir_tests::service::events_in(&admin, "lineage"),
        later.len() as u64,
        "nothing of before the crash was read again"
    );
    let rows = rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["PluginVersions"], lineage.as_str(), "{row}");
    }
    assert!(
        rows.iter().any(|r| r["DeviceId"] == quiet.as_str()),
        "{rows:?}"
    );
    process.terminate();
    process.wait(WAIT);
}

/// The partitions of `pipeline` the process at `admin` runs now.
fn owned_partitions(admin: &str, pipeline: &str) -> std::collections::BTreeSet<u64> {
    let (status, body) = weir_tests::service::http(admin, "GET", "/pipelines", None, b"");
    if status != 200 {
        return Default::default();
    }
    let pipelines: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    pipelines["pipelines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["pipeline"] == pipeline)
        .flat_map(|p| p["partitions"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["state"] == "running")
        .filter_map(|p| p["partition"].as_u64())
        .collect()
}

#[test]
fn partitions_a_process_acquires_during_a_shadow_run_take_part_and_are_reported() {
    const WAIT: Duration = Duration::from_secs(180);
    let broker = weir_tests::servers::KafkaBroker::start();
    weir_tests::kafka::create_topic(&broker.address(), "telemetry", 4);
    let readings = weir_tests::telemetry::generated_readings(16, 4000, 5);
    let records = weir_tests::kafka::telemetry_records(&readings, 4);
    let (first, rest) = records.split_at(400);
    weir_tests::kafka::produce(&broker.address(), "telemetry", first);

    // Two processes sharing the topic's four partitions through claims in one checkpoint
    // directory, each with its admin API.
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = weir_tests::kafka::KafkaPipeline::new(&broker.address(), "telemetry");
    let configs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| {
            let path = pipeline.write(dir.path(), &format!("weir-{name}.toml"));
            let mut text = std::fs::read_to_string(&path).expect("config");
            text.push_str(&format!(
                "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{}\"\n",
                weir_tests::service::TOKEN
            ));
            std::fs::write(&path, text).expect("config");
            path
        })
        .collect();
    let a = WeirProcess::run(&configs[0]);
    let b = WeirProcess::run(&configs[1]);
    let (admin_a, admin_b) = (a.admin_address(0, WAIT), b.admin_address(0, WAIT));
    // Two each, and between them all four: while a takes its share from b, b can still list a
    // partition a has taken (b sees the loss at its next renewal) beside one it is starting.
    let mut of_b = std::collections::BTreeSet::new();
    weir_tests::service::wait_until(WAIT, "two partitions each, all four between them", || {
        let of_a = owned_partitions(&admin_a, "telemetry");
        of_b = owned_partitions(&admin_b, "telemetry");
        of_a.len() == 2 && of_b.len() == 2 && of_a.is_disjoint(&of_b)
    });
    let address = broker.address();
    let rest = rest.to_vec();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let producer = std::thread::spawn(move || {
        for chunk in rest.chunks(200) {
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            weir_tests::kafka::produce(&address, "telemetry", chunk);
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    // A shadow run on process a, bounded to 20 s, of more events than arrive meanwhile; process b
    // dies and a takes its partitions over: they join the run.
    let outside = tempfile::tempdir().expect("temp dir");
    let home = outside.path().join("weir-home");
    let target = shared_target_dir();
    let candidate = Component {
        file: weir_tests::plugin_path("anomaly_v2"),
        hash: weir_tests::service::version_of(&weir_tests::plugin_path("anomaly_v2")),
    };
    let child = weir(&home, &target)
        .args(["plugin", "deploy"])
        .arg(&candidate.file)
        .args(["--to", &admin_a, "--stage", "telemetry/anomaly"])
        .args(["--token", weir_tests::service::TOKEN])
        .args(["--shadow", "1000000", "--shadow-for", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run weir plugin deploy --shadow");
    wait_for_shadow_run(&admin_a, "telemetry", "anomaly", &candidate.hash);
    b.kill9();
    weir_tests::service::wait_until(WAIT, "a owning every partition", || {
        owned_partitions(&admin_a, "telemetry").len() == 4
    });
    let out = child.wait_with_output().expect("deploy --shadow");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().expect("producer");
    assert_success(&out, "weir plugin deploy --shadow");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("the run ended at its time bound (20 s)"),
        "{text}"
    );
    let report = get_json(&admin_a, "/plugins/telemetry/anomaly/shadow");
    for partition in 0..4u64 {
        let progress = &report["partitions"][partition.to_string()];
        let line = text
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("partition {partition}:"))
            })
            .unwrap_or_else(|| panic!("partition {partition} in:\n{text}"));
        assert!(
            progress["events"].as_u64().is_some_and(|n| n > 0),
            "partition {partition} took part: {report}"
        );
        let late = of_b.contains(&partition);
        assert_eq!(
            progress["joined_late"] == true,
            late,
            "{partition}: {report}"
        );
        assert_eq!(
            line.contains("(acquired after the run started)"),
            late,
            "{line}"
        );
    }
    a.terminate();
    a.wait(WAIT);
}
