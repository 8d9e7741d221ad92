//! The `credential` table of an Azure connector: which Microsoft Entra ID credential signs in,
//! with its fields. Secrets are read from environment variables, never written in the file.

use serde::Deserialize;

use crate::config::{ConfigError, Document};

/// A Microsoft Entra ID credential, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntraCredential {
    /// The managed identity of the Azure resource Weir runs on (VM, container app, AKS node).
    ManagedIdentity {
        /// Client id of a user-assigned identity; absent: the system-assigned identity.
        #[serde(default)]
        client_id: Option<String>,
    },
    /// Workload identity (AKS, GitHub Actions, any OIDC issuer): a federated token in a file is
    /// exchanged for an Entra ID token as a client assertion.
    WorkloadIdentity {
        /// Directory (tenant) id; absent: `AZURE_TENANT_ID`.
        #[serde(default)]
        tenant_id: Option<String>,
        /// Application (client) id; absent: `AZURE_CLIENT_ID`.
        #[serde(default)]
        client_id: Option<String>,
        /// The federated token file; absent: `AZURE_FEDERATED_TOKEN_FILE`.
        #[serde(default)]
        token_file: Option<String>,
        /// Entra ID authority host (`https://login.microsoftonline.com` by default; sovereign
        /// clouds and tests name theirs).
        #[serde(default)]
        authority_host: Option<String>,
    },
    /// A service principal signing in with a client secret.
    ClientSecret {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// Environment variable holding the client secret.
        client_secret_env: String,
        /// Entra ID authority host (`https://login.microsoftonline.com` by default).
        #[serde(default)]
        authority_host: Option<String>,
    },
    /// A service principal signing in with a certificate: a PEM file holding the certificate and
    /// its unencrypted PKCS#8 RSA private key.
    ClientCertificate {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The PEM file with the certificate and its private key.
        certificate_path: String,
        /// Entra ID authority host (`https://login.microsoftonline.com` by default).
        #[serde(default)]
        authority_host: Option<String>,
    },
    /// The account `az login` signed in with, for development on a workstation.
    AzureCli {
        /// Directory (tenant) id to take the token from; absent: the CLI's default.
        #[serde(default)]
        tenant_id: Option<String>,
    },
}

impl EntraCredential {
    /// The kind as configured, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            EntraCredential::ManagedIdentity { .. } => "managed_identity",
            EntraCredential::WorkloadIdentity { .. } => "workload_identity",
            EntraCredential::ClientSecret { .. } => "client_secret",
            EntraCredential::ClientCertificate { .. } => "client_certificate",
            EntraCredential::AzureCli { .. } => "azure_cli",
        }
    }

    /// What to check when signing in fails, for the error a user reads.
    pub fn hint(&self) -> String {
        match self {
            EntraCredential::ManagedIdentity { .. } => "check that the resource has a managed identity (and `client_id`, for a user-assigned one) and that it holds a role on the target".to_owned(),
            EntraCredential::WorkloadIdentity { .. } => "check `tenant_id`, `client_id`, the federated token file and the application's federated credential (issuer and subject)".to_owned(),
            EntraCredential::ClientSecret { client_secret_env, .. } => format!("check `tenant_id`, `client_id` and the secret in `{client_secret_env}` (expired or wrong secrets are the usual cause)"),
            EntraCredential::ClientCertificate { .. } => "check `tenant_id`, `client_id` and that the certificate is uploaded to the application".to_owned(),
            EntraCredential::AzureCli { .. } => "check `az login` (and `az account show`) in the account Weir runs as".to_owned(),
        }
    }
}

/// The secret in environment variable `variable`.
pub(crate) fn read_secret(variable: &str) -> Result<String, String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!(
            "environment variable `{variable}` (client_secret_env) is not set"
        )),
    }
}

/// Checks a `credential` table at `at` (the keys of the table itself): ids present, the secret's
/// environment variable set, the authority host an HTTPS URL, the certificate file readable.
pub(crate) fn validate(
    doc: &Document<'_>,
    at: &[&str],
    credential: &EntraCredential,
) -> Result<(), ConfigError> {
    let key = |field: &'static str| {
        let mut keys = at.to_vec();
        keys.push(field);
        keys
    };
    let non_empty = |field: &'static str, value: &str, what: &str| {
        if value.trim().is_empty() {
            Err(doc.error(
                &key(field),
                format!("expected {what}, found an empty string"),
            ))
        } else {
            Ok(())
        }
    };
    let authority = |host: &Option<String>| {
        match host {
        Some(host) if !host.starts_with("https://") => Err(doc.error(
            &key("authority_host"),
            format!("expected an `https://` URL such as `https://login.microsoftonline.com`, found `{host}`"),
        )),
        _ => Ok(()),
    }
    };
    match credential {
        EntraCredential::ManagedIdentity { .. } | EntraCredential::AzureCli { .. } => Ok(()),
        EntraCredential::WorkloadIdentity {
            authority_host,
            token_file,
            ..
        } => {
            authority(authority_host)?;
            if token_file.is_none() && std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_none() {
                return Err(doc.error(
                    at,
                    "expected `token_file` (or the environment variable `AZURE_FEDERATED_TOKEN_FILE`, which AKS workload identity sets)",
                ));
            }
            Ok(())
        }
        EntraCredential::ClientSecret {
            tenant_id,
            client_id,
            client_secret_env,
            authority_host,
        } => {
            non_empty("tenant_id", tenant_id, "the directory (tenant) id")?;
            non_empty("client_id", client_id, "the application (client) id")?;
            read_secret(client_secret_env).map_err(|e| doc.error(&key("client_secret_env"), e))?;
            authority(authority_host)
        }
        EntraCredential::ClientCertificate {
            tenant_id,
            client_id,
            certificate_path,
            authority_host,
        } => {
            non_empty("tenant_id", tenant_id, "the directory (tenant) id")?;
            non_empty("client_id", client_id, "the application (client) id")?;
            if let Err(e) = std::fs::metadata(certificate_path) {
                return Err(doc.error(
                    &key("certificate_path"),
                    format!("cannot read `{certificate_path}`: {e}"),
                ));
            }
            authority(authority_host)
        }
    }
}

/// Checks a `credential` table of a storage connector (the Blob checkpoint store, a Delta table):
/// as [`validate`]; every kind signs in to storage through the identity crate.
pub(crate) fn validate_storage(
    doc: &Document<'_>,
    at: &[&str],
    credential: &EntraCredential,
) -> Result<(), ConfigError> {
    validate(doc, at, credential)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::load_str;

    /// A pipeline from an Event Hub signing in with `credential` (a TOML inline table) to
    /// stdout; the credential is on line 7.
    fn config(credential: &str) -> String {
        format!(
            r#"
[sources.hub]
kind = "eventhubs"
namespace = "ns.servicebus.windows.net"
event_hub = "hub"
custom_endpoint = "amqp://127.0.0.1:5672"
credential = {credential}

[sinks.out]
kind = "stdout"

[pipelines.p]
source = "hub"
dead_letter = "out"

[[pipelines.p.stages]]
name = "s"
plugin = "p.wasm"
outputs = {{ alerts = "out" }}
"#
        )
    }

    fn load(text: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("p.wasm"), b"").map_err(|e| e.to_string())?;
        load_str(text, Path::new("weir.toml"), dir.path())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_of_credential_loads() {
        // `PATH` stands for a secret variable that is set (setting one would need unsafe code).
        for credential in [
            r#"{ kind = "managed_identity" }"#,
            r#"{ kind = "managed_identity", client_id = "c" }"#,
            r#"{ kind = "workload_identity", tenant_id = "t", client_id = "c", token_file = "/var/run/token" }"#,
            r#"{ kind = "client_secret", tenant_id = "t", client_id = "c", client_secret_env = "PATH" }"#,
            r#"{ kind = "client_secret", tenant_id = "t", client_id = "c", client_secret_env = "PATH", authority_host = "https://127.0.0.1:1" }"#,
            r#"{ kind = "client_certificate", tenant_id = "t", client_id = "c", certificate_path = "Cargo.toml" }"#,
            r#"{ kind = "azure_cli" }"#,
        ] {
            load(&config(credential)).unwrap_or_else(|e| panic!("{credential}: {e}"));
        }
    }

    #[test]
    fn an_incomplete_credential_is_refused_with_file_line_and_key() {
        let cases = [
            (
                r#"{ kind = "client_secret", tenant_id = "t", client_secret_env = "PATH" }"#,
                "client_id",
            ),
            (
                r#"{ kind = "client_secret", tenant_id = "t", client_id = "c", client_secret_env = "WEIR_SURELY_UNSET_SECRET" }"#,
                "`sources.hub.credential.client_secret_env`",
            ),
            (
                r#"{ kind = "client_secret", tenant_id = "t", client_id = "c", client_secret_env = "PATH", authority_host = "http://x" }"#,
                "`sources.hub.credential.authority_host`",
            ),
            (
                r#"{ kind = "client_certificate", tenant_id = "t", client_id = "c", certificate_path = "/surely/absent.pem" }"#,
                "`sources.hub.credential.certificate_path`",
            ),
            (r#"{ kind = "password" }"#, "password"),
            (r#"{ kind = "azure_cli", secret = "x" }"#, "secret"),
        ];
        for (credential, expected) in cases {
            let err = load(&config(credential)).expect_err(credential);
            assert!(err.contains("weir.toml:7"), "{credential}: {err}");
            assert!(err.contains(expected), "{credential}: {err}");
        }
    }

    #[test]
    fn a_credential_needs_a_namespace_and_no_connection_string() {
        let text = config(r#"{ kind = "azure_cli" }"#);
        let err = load(&text.replace("namespace = \"ns.servicebus.windows.net\"\n", ""))
            .expect_err("no namespace");
        assert!(err.contains("expected `namespace`"), "{err}");
        let err = load(&text.replace(
            "namespace = \"ns.servicebus.windows.net\"",
            "connection_string = \"Endpoint=sb://ns/;SharedAccessKeyName=k;SharedAccessKey=s\"",
        ))
        .expect_err("both");
        assert!(err.contains("not both"), "{err}");
    }
}
