//! Refusals at start: a bad configuration names the file, line, key and expectation; a component
//! that does not implement its world names the missing export; the running process stays clean.

use std::time::Duration;

use weir_tests::WeirProcess;
use weir_tests::telemetry::{PipelineOptions, anomaly_pipeline, generated_readings, write_input};

#[test]
fn a_bad_configuration_is_refused_with_file_line_key_and_expectation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    write_input(&input, &generated_readings(2, 2, 1), &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());
    let text = std::fs::read_to_string(&paths.config).expect("config");
    let broken = text.replace("partitions = 4", "partitions = 4\nkey_feld = \"DeviceId\"");
    std::fs::write(&paths.config, &broken).expect("write");
    let line = broken
        .lines()
        .position(|l| l.starts_with("key_feld"))
        .expect("line")
        + 1;

    let process = WeirProcess::run(&paths.config);
    let status = process.wait(Duration::from_secs(30));
    assert!(!status.success());
    let log = std::fs::read_to_string(paths.config.with_extension("log")).expect("log");
    let expected = format!(
        "{}:{line}:1: `sources.telemetry.key_feld`: unknown field `key_feld`, expected one of",
        paths.config.display()
    );
    assert!(log.contains(&expected), "expected `{expected}` in:\n{log}");
    assert!(
        log.contains("`key_field`"),
        "the expectation lists the valid keys:\n{log}"
    );
    assert!(!paths.raw_table.exists(), "nothing ran");
}

#[test]
fn a_component_without_the_transform_export_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    write_input(&input, &generated_readings(2, 2, 1), &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());
    // A valid component that implements nothing.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, "(component)").expect("write component");
    let text = std::fs::read_to_string(&paths.config).expect("config");
    let plugin = weir_tests::plugin_path("telemetry_anomaly");
    std::fs::write(
        &paths.config,
        text.replace(&plugin.display().to_string(), &empty.display().to_string()),
    )
    .expect("write");

    // Where the configuration names it: the stage's `plugin` key.
    let config_text = std::fs::read_to_string(&paths.config).expect("config");
    let line = config_text
        .lines()
        .position(|l| l.starts_with("plugin = "))
        .expect("a plugin line")
        + 1;
    let configured_at = format!("{}:{line}:1", paths.config.display());

    let process = WeirProcess::spawn(&["validate", "--config"], &paths.config);
    let status = process.wait(Duration::from_secs(60));
    assert!(!status.success());
    let log = std::fs::read_to_string(paths.config.with_extension("log")).expect("log");
    assert!(
        log.contains("does not implement world `weir:plugin/event-transform@0.3.0`: missing export `weir:plugin/transform@0.3.0`"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{configured_at}: pipeline `telemetry`, stage `anomaly`"
        )),
        "validate names the file and line: {log}"
    );

    let log_before = std::fs::read_to_string(paths.config.with_extension("log")).expect("log");
    let process = WeirProcess::run(&paths.config);
    let status = process.wait(Duration::from_secs(60));
    assert!(!status.success(), "run refuses it too");
    assert!(!paths.raw_table.exists(), "nothing ran");
    let log = std::fs::read_to_string(paths.config.with_extension("log")).expect("log");
    assert!(
        log[log_before.len()..].contains(&format!(
            "{configured_at}: pipeline `telemetry`, stage `anomaly`"
        )),
        "run names the file and line: {log}"
    );
}

#[test]
fn validate_accepts_the_anomaly_plugin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    write_input(&input, &generated_readings(2, 2, 1), &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());
    let process = WeirProcess::spawn(&["validate", "--config"], &paths.config);
    let status = process.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(paths.config.with_extension("log")).expect("log");
    assert!(status.success(), "{log}");
    assert!(
        log.contains("implements weir:plugin/event-transform@0.3.0"),
        "{log}"
    );
    assert!(log.contains("configuration is valid"), "{log}");
}

#[test]
fn the_readmes_configuration_example_is_valid() {
    // The first TOML block under "## Configuration" is a whole configuration a user copies.
    let readme =
        std::fs::read_to_string(weir_tests::workspace_dir().join("README.md")).expect("README");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("a Configuration section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML block in the Configuration section");
    let dir = tempfile::tempdir().expect("temp dir");
    // Its plugin where the example says, relative to the file.
    let plugins = dir.path().join("target/plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::copy(
        weir_tests::plugin_path("telemetry_anomaly"),
        plugins.join("telemetry_anomaly.wasm"),
    )
    .expect("copy plugin");
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, example).expect("write example");
    let process = WeirProcess::spawn(&["validate", "--config"], &config);
    let status = process.wait(Duration::from_secs(60));
    let log = std::fs::read_to_string(config.with_extension("log")).expect("log");
    assert!(status.success(), "the README's example is refused:\n{log}");
    assert!(log.contains("configuration is valid"), "{log}");
}
