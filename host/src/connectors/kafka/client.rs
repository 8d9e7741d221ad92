//! Connecting to a Kafka cluster: bootstrap brokers, TLS through rustls, SASL, bounded retries.
//! Shared by the Kafka source and sink.

use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError, RequestError};
use rskafka::client::partition::Compression;
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{KafkaCompression, KafkaConnection, LoadedConfig, SaslMechanism, expand_env};

/// A connected client and the topic's partition count.
pub(crate) struct Connected {
    /// The cluster client (metadata, partition clients).
    pub(crate) client: Client,
    /// Partitions of the configured topic.
    pub(crate) partitions: u32,
}

/// Why connecting to a Kafka cluster failed.
#[derive(Debug)]
pub(crate) struct ConnectError {
    /// Whether the configuration must change first (a CA file, refused credentials, a topic that
    /// does not exist), rather than the brokers being out of reach for now.
    pub(crate) misconfigured: bool,
    /// What happened.
    pub(crate) reason: String,
}

impl ConnectError {
    /// The caller's kind of failure: `misconfigured` when the configuration is at fault, else
    /// `unavailable`.
    pub(crate) fn kind<K>(&self, misconfigured: K, unavailable: K) -> K {
        if self.misconfigured {
            misconfigured
        } else {
            unavailable
        }
    }

    fn misconfigured(reason: String) -> Self {
        ConnectError {
            misconfigured: true,
            reason,
        }
    }

    fn unavailable(reason: String) -> Self {
        ConnectError {
            misconfigured: false,
            reason,
        }
    }
}

/// Connects to `connection.brokers` and reads the topic's partition count.
pub(crate) async fn connect(
    connection: &KafkaConnection,
    loaded: &LoadedConfig,
) -> Result<Connected, ConnectError> {
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
        let tls = tls_config(ca_file.as_deref()).map_err(ConnectError::misconfigured)?;
        builder = builder.tls_config(Arc::new(tls));
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
            ConnectError::unavailable(format!(
                "no answer from the brokers ({brokers}) within {:?}",
                connection.timeout.get() * 2
            ))
        })?
        .map_err(|e| {
            let reason = format!("cannot connect to the brokers ({brokers}): {e}");
            match &connection.sasl {
                // rskafka retries a refused authentication until its deadline; say what to fix.
                // Its typed cause is hidden behind an error list that only displays, so the
                // words are all there is to read.
                Some(sasl) if reason.contains("Sasl") => ConnectError::misconfigured(format!(
                    "{reason} (SASL `{}` as user `{}` was refused: check `sasl.username` and `sasl.password`)",
                    match sasl.mechanism {
                        SaslMechanism::Plain => "plain",
                        SaslMechanism::ScramSha256 => "scram-sha-256",
                        SaslMechanism::ScramSha512 => "scram-sha-512",
                    },
                    sasl.username
                )),
                _ => ConnectError::unavailable(reason),
            }
        })?;
    let topics = tokio::time::timeout(connection.timeout.get(), client.list_topics())
        .await
        .map_err(|_| {
            ConnectError::unavailable(format!("no topic list from the brokers ({brokers})"))
        })?
        .map_err(|e| {
            ConnectError::unavailable(format!("cannot list the topics on {brokers}: {e}"))
        })?;
    let topic = topics
        .iter()
        .find(|t| t.name == connection.topic)
        .ok_or_else(|| {
            ConnectError::misconfigured(format!(
                "topic `{}` does not exist on {brokers} (Weir does not create topics)",
                connection.topic
            ))
        })?;
    let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
    if partitions == 0 {
        return Err(ConnectError::misconfigured(format!(
            "topic `{}` has no partitions",
            connection.topic
        )));
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

/// rskafka's codec for a configured one.
pub(crate) fn codec(compression: KafkaCompression) -> Compression {
    match compression {
        KafkaCompression::None => Compression::NoCompression,
        KafkaCompression::Gzip => Compression::Gzip,
        KafkaCompression::Snappy => Compression::Snappy,
        KafkaCompression::Lz4 => Compression::Lz4,
        KafkaCompression::Zstd => Compression::Zstd,
    }
}

/// What kind of fault a failed Kafka request met, which decides whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The broker or the network is away (or busy): retried with backoff up to `max_outage`.
    Outage,
    /// The records could not be decoded: a corrupt batch, a codec the client or the broker does
    /// not know. The same bytes come back on every attempt.
    Undecodable,
    /// The client is not allowed to do this.
    Unauthorized,
    /// The topic or partition does not exist (after rskafka's own retries).
    UnknownTopic,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Outage => "a broker or network outage",
            Fault::Undecodable => "a record batch that cannot be decoded",
            Fault::Unauthorized => "an authorization failure",
            Fault::UnknownTopic => "a topic or partition that does not exist",
        })
    }
}

/// Tells the faults that retrying cannot fix from outages, in one place for the source and the
/// sink. What is not known to be permanent is an outage, so that a new kind of transient error
/// keeps today's retries rather than stopping a pipeline.
/// How rskafka renders a refused SASL handshake (`ConnectionError::SaslFailed`).
const SASL_REFUSED: &str = "Sasl handshake failed";

pub(crate) fn classify(error: &KafkaError) -> Fault {
    match error {
        // The response arrived whole but its body did not parse: the records are at fault (a
        // connection cut mid-response is an IO or framing error, not this).
        KafkaError::Request(
            RequestError::ReadVersionedError(_) | RequestError::TooMuchData { .. },
        ) => Fault::Undecodable,
        KafkaError::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::CorruptMessage
            | ProtocolError::InvalidRecord
            | ProtocolError::UnsupportedCompressionType
            | ProtocolError::UnsupportedForMessageFormat => Fault::Undecodable,
            ProtocolError::TopicAuthorizationFailed
            | ProtocolError::ClusterAuthorizationFailed
            | ProtocolError::GroupAuthorizationFailed
            | ProtocolError::TransactionalIdAuthorizationFailed
            | ProtocolError::SaslAuthenticationFailed => Fault::Unauthorized,
            // rskafka has already retried these for the connection's `timeout`.
            ProtocolError::UnknownTopicOrPartition
            | ProtocolError::UnknownTopicId
            | ProtocolError::InvalidTopicException => Fault::UnknownTopic,
            _ => Fault::Outage,
        },
        // A (re)connection whose SASL handshake the broker refused: credentials that worked at
        // start were changed or revoked; retrying with the same ones cannot help.
        KafkaError::Connection(rskafka::ConnectionError::SaslFailed(_)) => Fault::Unauthorized,
        // The same refusal met by rskafka's own connection retries: it keeps each attempt's
        // error only as text (a private list), so its rendering is what can be read.
        KafkaError::Connection(rskafka::ConnectionError::RetryFailed(retries))
            if retries.to_string().contains(SASL_REFUSED) =>
        {
            Fault::Unauthorized
        }
        // rskafka's retries ran out: the last error decides.
        KafkaError::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => source
            .downcast_ref::<KafkaError>()
            .map_or(Fault::Outage, classify),
        _ => Fault::Outage,
    }
}

/// Longest wait between two attempts while the brokers are unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The failures in a row of one partition's requests: how long to back off before the next
/// attempt, and when to give up (after the connection's `max_outage`). Shared by the source's
/// readers and the sink's writers, so that both ride out a broker restart the same way.
#[derive(Debug)]
pub(crate) struct Outage {
    max_outage: Duration,
    /// When the first failure in a row happened, and how many there were.
    since: Option<(std::time::Instant, u32)>,
}

impl Outage {
    /// No failure yet; gives up after `max_outage` of failures in a row.
    pub(crate) fn new(max_outage: Duration) -> Self {
        Outage {
            max_outage,
            since: None,
        }
    }

    /// Whether the last request failed.
    #[cfg(test)]
    pub(crate) fn ongoing(&self) -> bool {
        self.since.is_some()
    }

    /// Counts a failed request: the wait before the next attempt (200 ms doubling up to 5 s),
    /// or `Err` with how long the failures have lasted once that exceeds `max_outage`.
    pub(crate) fn failed(&mut self) -> Result<(Duration, u32), String> {
        let (since, failures) = self.since.get_or_insert((std::time::Instant::now(), 0));
        *failures += 1;
        let elapsed = since.elapsed();
        if elapsed > self.max_outage {
            return Err(format!(
                "unreachable for {:.1} s, {failures} attempts (`max_outage` is {:?})",
                elapsed.as_secs_f64(),
                self.max_outage
            ));
        }
        let backoff = Duration::from_millis(200u64 << (*failures - 1).min(5)).min(MAX_BACKOFF);
        Ok((backoff, *failures))
    }

    /// Counts a successful request: how long the outage it ends lasted, and its failures.
    pub(crate) fn succeeded(&mut self) -> Option<(Duration, u32)> {
        self.since
            .take()
            .map(|(since, failures)| (since.elapsed(), failures))
    }
}

#[cfg(test)]
mod tests {
    use rskafka::client::error::RequestContext;

    use super::*;

    fn server(protocol_error: ProtocolError) -> KafkaError {
        KafkaError::ServerError {
            protocol_error,
            error_message: None,
            request: RequestContext::Partition("t".to_owned(), 0),
            response: None,
            is_virtual: false,
        }
    }

    fn retries_ran_out(last: KafkaError) -> KafkaError {
        KafkaError::RetryFailed(rskafka::BackoffError::DeadlineExceded {
            deadline: Duration::from_secs(30),
            source: Box::new(last),
        })
    }

    #[test]
    fn outages_are_retried() {
        let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for error in [
            KafkaError::Timeout,
            KafkaError::Request(RequestError::IO(cut)),
            KafkaError::InvalidResponse("Expected a single topic in response, got 0".to_owned()),
            server(ProtocolError::LeaderNotAvailable),
            server(ProtocolError::NotLeaderOrFollower),
            server(ProtocolError::RequestTimedOut),
            retries_ran_out(server(ProtocolError::LeaderNotAvailable)),
            retries_ran_out(KafkaError::Timeout),
            // Reconnections that found no broker (not a refusal) stay an outage.
            KafkaError::Connection(rskafka::ConnectionError::RetryFailed(
                rskafka::BackoffError::DeadlineExceded {
                    deadline: Duration::from_secs(30),
                    source: Box::new(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "refused",
                    )),
                },
            )),
        ] {
            assert_eq!(classify(&error), Fault::Outage, "{error}");
        }
    }

    #[test]
    fn batches_that_cannot_be_decoded_are_told_apart() {
        // The client's own decoding errors cannot be built outside rskafka; the codec tests
        // (tests/tests/kafka_codecs.rs) meet them through a proxy that corrupts a batch.
        for error in [
            server(ProtocolError::CorruptMessage),
            server(ProtocolError::UnsupportedCompressionType),
            server(ProtocolError::InvalidRecord),
        ] {
            assert_eq!(classify(&error), Fault::Undecodable, "{error}");
        }
    }

    #[test]
    fn authorization_failures_are_told_apart() {
        for error in [
            server(ProtocolError::TopicAuthorizationFailed),
            server(ProtocolError::ClusterAuthorizationFailed),
            server(ProtocolError::SaslAuthenticationFailed),
            KafkaError::Connection(rskafka::ConnectionError::SaslFailed(
                rskafka::SaslError::UnsupportedSaslMechanism,
            )),
            // A reconnection refused while rskafka retried it.
            KafkaError::Connection(rskafka::ConnectionError::RetryFailed(
                rskafka::BackoffError::DeadlineExceded {
                    deadline: Duration::from_secs(30),
                    source: Box::new(rskafka::ConnectionError::SaslFailed(
                        rskafka::SaslError::UnsupportedSaslMechanism,
                    )),
                },
            )),
        ] {
            assert_eq!(classify(&error), Fault::Unauthorized, "{error}");
        }
    }

    #[test]
    fn unknown_topics_and_partitions_are_told_apart_once_retries_ran_out() {
        for error in [
            server(ProtocolError::UnknownTopicOrPartition),
            retries_ran_out(server(ProtocolError::UnknownTopicOrPartition)),
            server(ProtocolError::UnknownTopicId),
        ] {
            assert_eq!(classify(&error), Fault::UnknownTopic, "{error}");
        }
    }

    #[test]
    fn every_configured_codec_is_built_in() {
        assert_eq!(codec(KafkaCompression::None), Compression::NoCompression);
        assert_eq!(codec(KafkaCompression::Gzip), Compression::Gzip);
        assert_eq!(codec(KafkaCompression::Snappy), Compression::Snappy);
        assert_eq!(codec(KafkaCompression::Lz4), Compression::Lz4);
        assert_eq!(codec(KafkaCompression::Zstd), Compression::Zstd);
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_gives_up_after_max_outage() {
        let mut outage = Outage::new(Duration::from_secs(3600));
        let waits: Vec<u128> = (0..8)
            .map(|_| outage.failed().expect("within max_outage").0.as_millis())
            .collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(outage.ongoing());
        assert_eq!(outage.succeeded().map(|(_, failures)| failures), Some(8));
        assert!(!outage.ongoing());
        assert_eq!(outage.succeeded(), None);

        let mut outage = Outage::new(Duration::ZERO);
        outage.since = Some((std::time::Instant::now() - Duration::from_millis(5), 0));
        let err = outage.failed().expect_err("beyond max_outage");
        assert!(err.contains("1 attempts (`max_outage` is 0ns)"), "{err}");
    }
}
