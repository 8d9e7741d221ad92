//! Issue 19: only trusted components run. With `plugins.trusted_keys` set, `weir run` loads a
//! component only if it carries an Ed25519 signature by one of the keys over its content hash
//! (inside it, or in `<file>.sig`), at start, from the plugins directory and by upload alike; a
//! refusal names the reason and the running version keeps running. Keys and signatures are made
//! with the binary's own `weir plugin keygen` and `weir plugin sign`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir_tests::service::{
    TOKEN, active_version, another_version, http, install_atomically, upload_activated, wait_until,
};
use weir_tests::{WeirProcess, plugin_path, weir_binary};

fn weir(args: &[&str]) -> std::process::Output {
    let output = Command::new(weir_binary())
        .args(args)
        .output()
        .expect("run weir");
    assert!(
        output.status.success(),
        "weir {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `weir plugin keygen`: the private key file and the public key.
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let out = weir(&["plugin", "keygen", "--out", key.to_str().expect("path")]);
    let public = std::fs::read_to_string(dir.join(format!("{name}.key.pub"))).expect("public key");
    assert!(String::from_utf8_lossy(&out.stdout).contains(public.trim()));
    (key, public.trim().to_owned())
}

/// `weir plugin sign FILE --key KEY [--detached]`.
fn sign(file: &Path, key: &Path, detached: bool) {
    let mut args = vec![
        "plugin",
        "sign",
        file.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
    ];
    if detached {
        args.push("--detached");
    }
    weir(&args);
}

fn write_config(dir: &Path, trusted: &str) -> PathBuf {
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "500ms"

[plugins]
trusted_keys = ["{trusted}"]
watch_settle = "100ms"

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[sources.ingest]
kind = "http"
address = "127.0.0.1:0"

[sinks.events]
kind = "file"
path = "events"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.ingest]
source = "ingest"
dead_letter = "dead_letters"

[[pipelines.ingest.stages]]
name = "forward"
plugin = "plugins/forward.wasm"
outputs = {{ out = "events" }}
"#
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

/// Runs `weir run` expecting it to refuse to start; returns its log.
fn refused_at_start(config: &Path) -> String {
    let process = WeirProcess::run(config);
    let log_path = config.with_extension("log");
    let status = process.wait(Duration::from_secs(120));
    assert!(!status.success());
    std::fs::read_to_string(log_path).expect("log")
}

fn upload(admin: &str, bytes: &[u8]) -> (u16, String) {
    http(admin, "POST", "/plugins/ingest/forward", Some(TOKEN), bytes)
}

#[test]
fn only_components_signed_by_a_trusted_key_are_loaded_by_file_and_by_upload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (trusted_key, trusted_public) = keygen(dir.path(), "trusted");
    let (other_key, _) = keygen(dir.path(), "other");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let file = plugins.join("forward.wasm");
    let original = std::fs::read(plugin_path("passthrough")).expect("read plugin");
    std::fs::write(&file, &original).expect("install plugin");
    let config = write_config(dir.path(), &trusted_public);

    // Unsigned: refused at start, with the reason, the pipeline and the stage.
    let log = refused_at_start(&config);
    assert!(log.contains("is not trusted: it is not signed"), "{log}");
    assert!(log.contains("pipeline `ingest`, stage `forward`"), "{log}");
    // Signed by a key that is not trusted: refused.
    sign(&file, &other_key, false);
    let log = refused_at_start(&config);
    assert!(
        log.contains("its signature is not by a trusted key"),
        "{log}"
    );

    // Signed by the trusted key in a side file (the component as built): it starts.
    std::fs::write(&file, &original).expect("reinstall plugin");
    sign(&file, &trusted_key, true);
    assert!(plugins.join("forward.wasm.sig").is_file());
    // The log holds the refused runs too: the admin address is the one logged after them.
    let skip = std::fs::read_to_string(config.with_extension("log")).map_or(0, |t| t.len());
    let mut weir = WeirProcess::run(&config);
    weir.wait_for_start(1, Duration::from_secs(120));
    let admin = weir.admin_address(skip, Duration::from_secs(60));
    let running = active_version(&admin, "ingest", "forward");

    // By upload: unsigned, and signed by another key, are refused with the reason; the running
    // version keeps running.
    let unsigned = another_version(&original, b"unsigned");
    let (status, body) = upload(&admin, &unsigned);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("it is not signed"), "{body}");
    let wrongly_signed_path = dir.path().join("wrong.wasm");
    std::fs::write(&wrongly_signed_path, another_version(&original, b"wrong")).expect("write");
    sign(&wrongly_signed_path, &other_key, false);
    let wrongly_signed = std::fs::read(&wrongly_signed_path).expect("read");
    let (status, body) = upload(&admin, &wrongly_signed);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not by a trusted key"), "{body}");
    assert_eq!(active_version(&admin, "ingest", "forward"), running);

    // By file: a new unsigned file (the old side file does not cover it) and a wrongly signed
    // one are refused, counted, and the running version keeps running.
    let refused = |origin: &str| -> f64 {
        let (_, metrics) = http(&admin, "GET", "/metrics", None, b"");
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("weir_plugin_refused_total{")
                    && l.contains(&format!("origin=\"{origin}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let staged = dir.path().join("staged.wasm");
    std::fs::write(&staged, another_version(&original, b"unsigned-file")).expect("write");
    install_atomically(&staged, &file);
    wait_until(Duration::from_secs(60), "the unsigned file refused", || {
        refused("file") >= 1.0
    });
    install_atomically(&wrongly_signed_path, &file);
    wait_until(
        Duration::from_secs(60),
        "the wrongly signed file refused",
        || refused("file") >= 2.0,
    );
    assert_eq!(active_version(&admin, "ingest", "forward"), running);
    let log = weir.log_text();
    assert!(log.contains("is not trusted"), "{log}");

    // Correctly signed: activated, by upload and by file.
    let by_upload_path = dir.path().join("by-upload.wasm");
    std::fs::write(&by_upload_path, another_version(&original, b"by-upload")).expect("write");
    sign(&by_upload_path, &trusted_key, false);
    upload_activated(
        &admin,
        "ingest",
        "forward",
        &std::fs::read(&by_upload_path).expect("read"),
    );
    let after_upload = active_version(&admin, "ingest", "forward");
    assert_ne!(after_upload, running);
    std::fs::write(&staged, another_version(&original, b"by-file")).expect("write");
    sign(&staged, &trusted_key, false);
    install_atomically(&staged, &file);
    wait_until(Duration::from_secs(60), "the signed file activated", || {
        active_version(&admin, "ingest", "forward") != after_upload
    });
    weir.terminate();
}
