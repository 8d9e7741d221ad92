//! Connecting to a Kafka cluster: bootstrap brokers, TLS through rustls, SASL, bounded retries.
//! Shared by the Kafka source and sink.

use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{KafkaConnection, LoadedConfig, SaslMechanism, expand_env};

/// A connected client and the topic's partition count.
pub(crate) struct Connected {
    /// The cluster client (metadata, partition clients).
    pub(crate) client: Client,
    /// Partitions of the configured topic.
    pub(crate) partitions: u32,
}

/// Connects to `connection.brokers` and reads the topic's partition count.
pub(crate) async fn connect(
    connection: &KafkaConnection,
    loaded: &LoadedConfig,
) -> Result<Connected, String> {
    let mut builder = ClientBuilder::new(connection.brokers.clone())
        .client_id("weir")
        .backoff_config(BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
            // rskafka retries forever without a deadline; a broker that stays away must surface.
            deadline: Some(connection.timeout.get()),
        });
    if let Some(tls) = &connection.tls {
        let ca_file = tls.ca_file.as_deref().map(|p| loaded.resolve(p));
        builder = builder.tls_config(Arc::new(tls_config(ca_file.as_deref())?));
    }
    if let Some(sasl) = &connection.sasl {
        let credentials = Credentials::new(sasl.username.clone(), expand_env(&sasl.password));
        builder = builder.sasl_config(match sasl.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        });
    }
    let brokers = connection.brokers.join(", ");
    // A little beyond the retry deadline, so that the retries' own error (with its reason)
    // is the one reported.
    let client = tokio::time::timeout(connection.timeout.get() * 2, builder.build())
        .await
        .map_err(|_| {
            format!(
                "no answer from the brokers ({brokers}) within {:?}",
                connection.timeout.get() * 2
            )
        })?
        .map_err(|e| format!("cannot connect to the brokers ({brokers}): {e}"))?;
    let topics = tokio::time::timeout(connection.timeout.get(), client.list_topics())
        .await
        .map_err(|_| format!("no topic list from the brokers ({brokers})"))?
        .map_err(|e| format!("cannot list the topics on {brokers}: {e}"))?;
    let topic = topics
        .iter()
        .find(|t| t.name == connection.topic)
        .ok_or_else(|| {
            format!(
                "topic `{}` does not exist on {brokers} (Weir does not create topics)",
                connection.topic
            )
        })?;
    let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
    if partitions == 0 {
        return Err(format!("topic `{}` has no partitions", connection.topic));
    }
    Ok(Connected { client, partitions })
}

/// A rustls client configuration with the ring provider (chosen explicitly: the build also holds
/// aws-lc-rs) trusting `ca_file`'s certificates, or the system's roots without one.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "cannot load a system root certificate");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err("no trusted root certificate for TLS (set `tls.ca_file`)".to_owned());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}
