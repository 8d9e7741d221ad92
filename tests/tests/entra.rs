//! Microsoft Entra ID sign-in through `weir run`: the Event Hubs source and sink sign in to the
//! Event Hubs-compatible test endpoint, which accepts only the bearer token that a local token
//! service (HTTPS, OAuth2 client credentials) hands to the right client; one side uses a client
//! secret, the other a federated token file (workload identity). A wrong secret is refused at
//! start with what to check. The Blob checkpoint store signs in to Azurite over HTTPS with a
//! bearer token (`--oauth basic`). Every credential kind (client secret, certificate, federated
//! token, managed identity, Azure CLI) reads from and writes to the hubs, checkpoints to Blob
//! Storage and writes a Delta table there; a wrong storage secret is refused at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_eventhubs_endpoint::{EndpointConfig, PublishTo};
use weir_tests::eventhubs::TestEndpoint;
use weir_tests::servers::Azurite;
use weir_tests::tls::test_certificates;
use weir_tests::token_service::{TokenService, TokenServiceConfig, storage_jwt};
use weir_tests::{WeirProcess, plugin_path};

const TENANT: &str = "00000000-0000-0000-0000-00000000beef";
const CLIENT: &str = "weir-test-client";
const SECRET: &str = "the-right-secret";
const FEDERATED: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ3ZWlyIn0.";
const EVENTS: usize = 40;
const IDENTITY_HEADER: &str = "the-identity-header-secret";

struct Setup {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    access_token: String,
    tokens: TokenService,
    endpoint: TestEndpoint,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_certificates(dir.path());
    let access_token = storage_jwt(TENANT);
    // The service principal's certificate and key, in one PEM file.
    let pem = format!(
        "{}{}",
        std::fs::read_to_string(&cert).expect("cert"),
        std::fs::read_to_string(&key).expect("key")
    );
    std::fs::write(dir.path().join("sp.pem"), pem).expect("sp.pem");
    let tokens = TokenService::start(
        TokenServiceConfig {
            tenant_id: TENANT.to_owned(),
            client_id: CLIENT.to_owned(),
            client_secret: SECRET.to_owned(),
            federated_token: FEDERATED.to_owned(),
            access_token: access_token.clone(),
            certificate: Some(dir.path().join("sp.pem")),
            identity_header: Some(IDENTITY_HEADER.to_owned()),
        },
        &cert,
        &key,
    );
    let endpoint = TestEndpoint::start_with(EndpointConfig {
        bearer_token: Some(access_token.clone()),
        ..EndpointConfig::with_hubs(&[("input", 2), ("output", 2)])
    });
    std::fs::write(dir.path().join("federated-token"), FEDERATED).expect("token file");
    Setup {
        dir,
        ca,
        cert,
        key,
        access_token,
        tokens,
        endpoint,
    }
}

/// A pipeline from hub `input` (client secret) through a passthrough plugin to hub `output`
/// (federated token file).
fn write_config(setup: &Setup, checkpoint: &str) -> PathBuf {
    write_config_with(setup, checkpoint, "", "\"output\"")
}

/// As [`write_config`], with `extra` sinks and the stage's `out` going to `outputs`.
fn write_config_with(setup: &Setup, checkpoint: &str, extra: &str, outputs: &str) -> PathBuf {
    let endpoint = setup.endpoint.endpoint.custom_endpoint();
    let authority = &setup.tokens.authority_host;
    let token_file = setup.dir.path().join("federated-token");
    let config = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"
{checkpoint}

[sources.input]
kind = "eventhubs"
namespace = "weir-test.servicebus.windows.net"
event_hub = "input"
custom_endpoint = "{endpoint}"
stop_at_end = true
credential = {{ kind = "client_secret", tenant_id = "{TENANT}", client_id = "{CLIENT}", client_secret_env = "WEIR_TEST_CLIENT_SECRET", authority_host = "{authority}" }}

[sinks.output]
kind = "eventhubs"
namespace = "weir-test.servicebus.windows.net"
event_hub = "output"
custom_endpoint = "{endpoint}"
credential = {{ kind = "workload_identity", tenant_id = "{TENANT}", client_id = "{CLIENT}", token_file = "{token_file}", authority_host = "{authority}" }}

[sinks.dead_letters]
kind = "file"
path = "dead_letters"
{extra}

[pipelines.p]
source = "input"
dead_letter = "dead_letters"

[[pipelines.p.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = {outputs} }}
"#,
        token_file = token_file.display(),
        plugin = plugin_path("passthrough").display(),
    );
    let path = setup.dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("config");
    path
}

fn run(config: &Path, ca: &Path, secret: &str) -> (bool, String) {
    let ca = ca.display().to_string();
    let process = WeirProcess::spawn_with_env(
        &["run", "--config"],
        config,
        &[
            ("WEIR_TEST_CLIENT_SECRET", secret),
            // The token service's certificate, trusted as a system root would be.
            ("SSL_CERT_FILE", ca.as_str()),
        ],
    );
    let log = config.with_extension("log");
    let status = process.wait(Duration::from_secs(120));
    (
        status.success(),
        std::fs::read_to_string(log).unwrap_or_default(),
    )
}

#[test]
fn event_hubs_source_and_sink_sign_in_with_a_client_secret_and_a_federated_token() {
    let setup = setup();
    for n in 0..EVENTS {
        let body = format!(r#"{{"DeviceId":"d{}","Reading":{n}}}"#, n % 4);
        setup
            .endpoint
            .endpoint
            .publish("input", PublishTo::Partition(n % 2), body, &[])
            .expect("publish");
    }
    let config = write_config(&setup, "");
    let (ok, log) = run(&config, &setup.ca, SECRET);
    assert!(ok, "weir failed:\n{log}");

    let written = setup.endpoint.unique_json("output");
    let mut readings: Vec<i64> = written
        .iter()
        .map(|v| v["Reading"].as_i64().expect("Reading"))
        .collect();
    readings.sort_unstable();
    assert_eq!(readings, (0..EVENTS as i64).collect::<Vec<_>>(), "{log}");
    let grants = setup.tokens.grants.lock().expect("grants").clone();
    assert!(grants.contains(&"secret".to_owned()), "{grants:?}");
    assert!(grants.contains(&"assertion".to_owned()), "{grants:?}");
    assert!(!grants.contains(&"refused".to_owned()), "{grants:?}");
    // The source's positions were checkpointed.
    let checkpoints = setup.dir.path().join("checkpoints");
    assert!(
        std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()),
        "no checkpoint in {}",
        checkpoints.display()
    );
}

#[test]
fn a_wrong_client_secret_is_refused_at_start_with_what_to_check() {
    let setup = setup();
    let config = write_config(&setup, "");
    let (ok, log) = run(&config, &setup.ca, "a-wrong-secret");
    assert!(!ok, "weir must refuse a wrong secret:\n{log}");
    assert!(log.contains("Entra ID sign-in (client_secret)"), "{log}");
    assert!(
        log.contains("the secret in `WEIR_TEST_CLIENT_SECRET`"),
        "{log}"
    );
    assert!(log.contains("AADSTS7000215"), "{log}");
    assert!(setup.endpoint.events("output").is_empty());
}

/// A Blob REST request to Azurite with the bearer token (Python's standard library, trusting the
/// test CA); returns the response body.
fn blob_request(setup: &Setup, method: &str, url: &str) -> String {
    let script = format!(
        "import ssl, urllib.request\nctx = ssl.create_default_context(cafile={ca:?})\nreq = urllib.request.Request({url:?}, method={method:?}, headers={{'Authorization': 'Bearer ' + {token:?}, 'x-ms-version': '2021-08-06', 'Content-Length': '0'}})\nprint(urllib.request.urlopen(req, context=ctx).read().decode())",
        ca = setup.ca.display().to_string(),
        token = setup.access_token,
    );
    let output = weir_tests::python_command(&script)
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "{method} {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn blob_checkpoints_and_a_delta_table_sign_in_to_azurite_with_a_bearer_token() {
    let setup = setup();
    let azurite = Azurite::start_oauth(&setup.cert, &setup.key);
    let endpoint = azurite.https_blob_endpoint();
    // The containers, made with the same bearer token.
    blob_request(
        &setup,
        "PUT",
        &format!("{endpoint}/checkpoints?restype=container"),
    );
    blob_request(&setup, "PUT", &format!("{endpoint}/lake?restype=container"));
    for n in 0..EVENTS {
        let body = format!(r#"{{"DeviceId":"d{}","Reading":{n}}}"#, n % 4);
        setup
            .endpoint
            .endpoint
            .publish("input", PublishTo::Partition(n % 2), body, &[])
            .expect("publish");
    }
    let checkpoint = format!(
        r#"[checkpoint.azure_blob]
account = "devstoreaccount1"
container = "checkpoints"
endpoint = "{endpoint}"
credential = {{ kind = "client_secret", tenant_id = "{TENANT}", client_id = "{CLIENT}", client_secret_env = "WEIR_TEST_CLIENT_SECRET", authority_host = "{authority}" }}
"#,
        authority = setup.tokens.authority_host,
    );
    let lake = format!(
        r#"
[sinks.lake]
kind = "delta"
path = "az://lake/readings"
storage_options = {{ azure_storage_account_name = "devstoreaccount1", azure_storage_endpoint = "{endpoint}" }}
credential = {{ kind = "workload_identity", tenant_id = "{TENANT}", client_id = "{CLIENT}", token_file = "{token_file}", authority_host = "{authority}" }}
columns = [{{ name = "DeviceId", type = "string" }}, {{ name = "Reading", type = "long" }}]
"#,
        token_file = setup.dir.path().join("federated-token").display(),
        authority = setup.tokens.authority_host,
    );
    let config = write_config_with(&setup, &checkpoint, &lake, r#"["output", "lake"]"#);
    let (ok, log) = run(&config, &setup.ca, SECRET);
    assert!(ok, "weir failed:\n{log}");
    assert_eq!(setup.endpoint.unique_json("output").len(), EVENTS, "{log}");
    let grants = setup.tokens.grants.lock().expect("grants").clone();
    assert!(!grants.contains(&"refused".to_owned()), "{grants:?}");

    // The checkpoints and the table are in their containers, listed with the bearer token.
    let listing = blob_request(
        &setup,
        "GET",
        &format!("{endpoint}/checkpoints?restype=container&comp=list"),
    );
    assert!(
        listing.contains("/checkpoint/"),
        "no checkpoint blob:\n{listing}\n{log}"
    );
    let listing = blob_request(
        &setup,
        "GET",
        &format!("{endpoint}/lake?restype=container&comp=list"),
    );
    assert!(
        listing.contains("readings/_delta_log/00000000000000000000.json"),
        "no Delta log:\n{listing}\n{log}"
    );
    assert!(
        listing.contains(".parquet"),
        "no data file:\n{listing}\n{log}"
    );
}

/// A pipeline where every Azure client signs in with `credential`: the Event Hubs source and
/// sink, the Blob checkpoint store and a Delta table on Azurite.
fn write_all_azure_config(setup: &Setup, endpoint: &str, credential: &str) -> PathBuf {
    let hub = setup.endpoint.endpoint.custom_endpoint();
    let config = format!(
        r#"
[checkpoint]
interval = "200ms"

[checkpoint.azure_blob]
account = "devstoreaccount1"
container = "checkpoints"
endpoint = "{endpoint}"
credential = {credential}

[sources.input]
kind = "eventhubs"
namespace = "weir-test.servicebus.windows.net"
event_hub = "input"
custom_endpoint = "{hub}"
stop_at_end = true
credential = {credential}

[sinks.output]
kind = "eventhubs"
namespace = "weir-test.servicebus.windows.net"
event_hub = "output"
custom_endpoint = "{hub}"
credential = {credential}

[sinks.lake]
kind = "delta"
path = "az://lake/readings"
storage_options = {{ azure_storage_account_name = "devstoreaccount1", azure_storage_endpoint = "{endpoint}" }}
credential = {credential}
columns = [{{ name = "DeviceId", type = "string" }}, {{ name = "Reading", type = "long" }}]

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.p]
source = "input"
dead_letter = "dead_letters"

[[pipelines.p.stages]]
name = "forward"
plugin = "{plugin}"
outputs = {{ out = ["output", "lake"] }}
"#,
        plugin = plugin_path("passthrough").display(),
    );
    let path = setup.dir.path().join("weir.toml");
    std::fs::write(&path, config).expect("config");
    path
}

/// Runs `weir` with the test CA trusted and `env` set; returns whether it succeeded, and its log.
fn run_with(config: &Path, ca: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let ca = ca.display().to_string();
    let mut all = vec![("SSL_CERT_FILE", ca.as_str())];
    all.extend_from_slice(env);
    let process = WeirProcess::spawn_with_env(&["run", "--config"], config, &all);
    let status = process.wait(Duration::from_secs(120));
    (
        status.success(),
        std::fs::read_to_string(config.with_extension("log")).unwrap_or_default(),
    )
}

/// Publishes the readings, runs `weir` signing in everywhere with the credential `sign_in` gives
/// for the setup (with its environment variables), and checks what it read, wrote and
/// checkpointed; returns the token service's grants.
fn reads_writes_and_checkpoints_with(
    sign_in: impl FnOnce(&Setup) -> (String, Vec<(&'static str, String)>),
) -> Vec<String> {
    let setup = setup();
    let azurite = Azurite::start_oauth(&setup.cert, &setup.key);
    let endpoint = azurite.https_blob_endpoint();
    blob_request(
        &setup,
        "PUT",
        &format!("{endpoint}/checkpoints?restype=container"),
    );
    blob_request(&setup, "PUT", &format!("{endpoint}/lake?restype=container"));
    for n in 0..EVENTS {
        let body = format!(r#"{{"DeviceId":"d{}","Reading":{n}}}"#, n % 4);
        setup
            .endpoint
            .endpoint
            .publish("input", PublishTo::Partition(n % 2), body, &[])
            .expect("publish");
    }
    let (credential, env) = sign_in(&setup);
    let config = write_all_azure_config(&setup, &endpoint, &credential);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, log) = run_with(&config, &setup.ca, &env);
    assert!(ok, "weir failed:\n{log}");
    let mut readings: Vec<i64> = setup
        .endpoint
        .unique_json("output")
        .iter()
        .map(|v| v["Reading"].as_i64().expect("Reading"))
        .collect();
    readings.sort_unstable();
    assert_eq!(readings, (0..EVENTS as i64).collect::<Vec<_>>(), "{log}");
    let checkpoints = blob_request(
        &setup,
        "GET",
        &format!("{endpoint}/checkpoints?restype=container&comp=list"),
    );
    assert!(
        checkpoints.contains("/checkpoint/0"),
        "{checkpoints}\n{log}"
    );
    assert!(
        checkpoints.contains("/checkpoint/1"),
        "{checkpoints}\n{log}"
    );
    let lake = blob_request(
        &setup,
        "GET",
        &format!("{endpoint}/lake?restype=container&comp=list"),
    );
    assert!(
        lake.contains("readings/_delta_log/00000000000000000001.json") && lake.contains(".parquet"),
        "no Delta commit:\n{lake}\n{log}"
    );
    let grants = setup.tokens.grants.lock().expect("grants").clone();
    assert!(!grants.contains(&"refused".to_owned()), "{grants:?}");
    grants
}

#[test]
fn a_service_principal_certificate_signs_in_to_event_hubs_blob_checkpoints_and_delta() {
    let grants = reads_writes_and_checkpoints_with(|setup| {
        let credential = format!(
            r#"{{ kind = "client_certificate", tenant_id = "{TENANT}", client_id = "{CLIENT}", certificate_path = "{pem}", authority_host = "{authority}" }}"#,
            pem = setup.dir.path().join("sp.pem").display(),
            authority = setup.tokens.authority_host,
        );
        (credential, Vec::new())
    });
    assert!(!grants.is_empty());
    assert!(grants.iter().all(|g| g == "certificate"), "{grants:?}");
}

#[test]
fn a_managed_identity_signs_in_to_event_hubs_blob_checkpoints_and_delta() {
    let grants = reads_writes_and_checkpoints_with(|setup| {
        let credential = format!(r#"{{ kind = "managed_identity", client_id = "{CLIENT}" }}"#);
        let env = vec![
            (
                "IDENTITY_ENDPOINT",
                format!("{}/msi/token", setup.tokens.authority_host),
            ),
            ("IDENTITY_HEADER", IDENTITY_HEADER.to_owned()),
        ];
        (credential, env)
    });
    for resource in ["https://storage.azure.com", "https://eventhubs.azure.net"] {
        assert!(
            grants.contains(&format!("managed_identity {resource}")),
            "{grants:?}"
        );
    }
}

#[test]
fn the_azure_cli_signs_in_to_event_hubs_blob_checkpoints_and_delta() {
    // A fake `az` first on PATH, answering `az account get-access-token` as the real one does,
    // and noting each call.
    let bin = tempfile::tempdir().expect("bin dir");
    let calls = bin.path().join("calls");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {calls}\nexp=$(( $(date +%s) + 3600 ))\nprintf '{{\"accessToken\": \"%s\", \"expiresOn\": \"2099-01-01 00:00:00.000000\", \"expires_on\": %s, \"subscription\": \"s\", \"tenant\": \"{TENANT}\", \"tokenType\": \"Bearer\"}}\\n' \"$WEIR_TEST_CLI_TOKEN\" \"$exp\"\n",
        calls = calls.display()
    );
    let az = bin.path().join("az");
    std::fs::write(&az, script).expect("az");
    let status = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&az)
        .status()
        .expect("chmod");
    assert!(status.success());
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let grants = reads_writes_and_checkpoints_with(|setup| {
        let credential = format!(r#"{{ kind = "azure_cli", tenant_id = "{TENANT}" }}"#);
        let env = vec![
            ("PATH", path),
            ("WEIR_TEST_CLI_TOKEN", setup.access_token.clone()),
        ];
        (credential, env)
    });
    assert!(
        grants.is_empty(),
        "the CLI, not the token service: {grants:?}"
    );
    let calls = std::fs::read_to_string(&calls).expect("az was called");
    for scope in [
        "https://storage.azure.com/.default",
        "https://eventhubs.azure.net/.default",
    ] {
        assert!(
            calls.contains(&format!(
                "account get-access-token -o json --scope {scope} --tenant {TENANT}"
            )),
            "{calls}"
        );
    }
}

#[test]
fn a_wrong_storage_secret_is_refused_at_start_with_what_to_check() {
    let setup = setup();
    let credential = format!(
        r#"{{ kind = "client_secret", tenant_id = "{TENANT}", client_id = "{CLIENT}", client_secret_env = "WEIR_TEST_CLIENT_SECRET", authority_host = "{}" }}"#,
        setup.tokens.authority_host
    );
    std::fs::write(setup.dir.path().join("input.jsonl"), "{\"a\":1}\n").expect("input");
    // Nothing listens at the storage endpoint: the sign-in is refused before any request.
    let storage = "https://127.0.0.1:9/devstoreaccount1";
    let checkpoint = format!(
        "[checkpoint.azure_blob]\naccount = \"devstoreaccount1\"\ncontainer = \"c\"\nendpoint = \"{storage}\"\ncredential = {credential}\n"
    );
    let lake = format!(
        "kind = \"delta\"\npath = \"az://lake/t\"\nstorage_options = {{ azure_storage_account_name = \"devstoreaccount1\", azure_storage_endpoint = \"{storage}\" }}\ncredential = {credential}\ncolumns = [{{ name = \"a\", type = \"long\" }}]\n"
    );
    for (checkpoint, sink, what) in [
        (checkpoint.as_str(), "kind = \"stdout\"\n", "container `c`"),
        ("", lake.as_str(), "cannot reach the table at az://lake/t"),
    ] {
        let config = format!(
            "[checkpoint]\ndir = \"checkpoints\"\n{checkpoint}\n[sources.input]\nkind = \"file\"\npath = \"input.jsonl\"\n\n[sinks.out]\n{sink}\n[sinks.dead_letters]\nkind = \"stdout\"\n\n[pipelines.p]\nsource = \"input\"\ndead_letter = \"dead_letters\"\n\n[[pipelines.p.stages]]\nname = \"forward\"\nplugin = \"{plugin}\"\noutputs = {{ out = \"out\" }}\n",
            plugin = plugin_path("passthrough").display(),
        );
        let path = setup.dir.path().join("storage.toml");
        std::fs::write(&path, config).expect("config");
        let _ = std::fs::remove_file(path.with_extension("log"));
        let (ok, log) = run_with(
            &path,
            &setup.ca,
            &[("WEIR_TEST_CLIENT_SECRET", "a-wrong-secret")],
        );
        assert!(!ok, "weir must refuse a wrong storage secret:\n{log}");
        for expected in [
            what,
            "Entra ID sign-in (client_secret) for `https://storage.azure.com/.default` failed",
            "AADSTS7000215",
            "the secret in `WEIR_TEST_CLIENT_SECRET`",
        ] {
            assert!(log.contains(expected), "{expected}:\n{log}");
        }
    }
}
