//! Opening Event Hubs clients from Weir's configuration, for the source and the sink.

use std::sync::{Arc, Once};
use std::time::Duration;

use azure_messaging_eventhubs::{ConnectionString, ConsumerClient, ProducerClient, RetryOptions};

use azure_core::credentials::TokenCredential;

use crate::config::EventHubsConnectionConfig;
use crate::connectors::entra::EntraCredential;

/// The Entra ID scope of Event Hubs' data plane.
const EVENTHUBS_SCOPE: &str = "https://eventhubs.azure.net/.default";

/// How a connection signs in.
#[derive(Clone)]
enum SignIn {
    /// A SAS connection string (it holds the key).
    ConnectionString(String),
    /// A Microsoft Entra ID credential.
    Entra(EntraCredential, Arc<dyn TokenCredential>),
}

/// How long opening a client may take before it counts as failed.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long closing a client may take; after it, the client is dropped.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A resolved connection: the connection string (read from the environment if configured so) or
/// the Entra ID credential, the hub, and the optional custom endpoint.
#[derive(Clone)]
pub(crate) struct Connection {
    sign_in: SignIn,
    event_hub: String,
    namespace: String,
    custom_endpoint: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the connection string: it holds the key.
        f.debug_struct("Connection")
            .field("event_hub", &self.event_hub)
            .field("namespace", &self.namespace)
            .field("custom_endpoint", &self.custom_endpoint)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Reads the connection string (inline or from its environment variable) and works out the
    /// hub's name.
    pub(crate) fn resolve(config: &EventHubsConnectionConfig) -> Result<Connection, String> {
        if let Some(credential) = &config.credential {
            return Self::resolve_entra(config, credential);
        }
        let connection_string = match (&config.connection_string, &config.connection_string_env) {
            (Some(text), _) => text.clone(),
            (None, Some(variable)) => std::env::var(variable).map_err(|_| {
                format!("environment variable `{variable}` (connection_string_env) is not set")
            })?,
            (None, None) => return Err("no connection string is configured".to_owned()),
        };
        let parsed: ConnectionString = connection_string
            .parse()
            .map_err(|e| format!("invalid connection string: {e}"))?;
        let event_hub = match (&config.event_hub, &parsed.entity_path) {
            (Some(hub), _) => hub.clone(),
            (None, Some(path)) => path.clone(),
            (None, None) => {
                return Err(
                    "the connection string has no `EntityPath`: name the hub with `event_hub`"
                        .to_owned(),
                );
            }
        };
        install_crypto_provider();
        Ok(Connection {
            sign_in: SignIn::ConnectionString(connection_string),
            event_hub,
            namespace: parsed.fully_qualified_namespace,
            custom_endpoint: config.custom_endpoint.clone(),
        })
    }

    /// A connection signing in with `credential` to the configured namespace and hub.
    fn resolve_entra(
        config: &EventHubsConnectionConfig,
        credential: &EntraCredential,
    ) -> Result<Connection, String> {
        let (Some(namespace), Some(event_hub)) = (&config.namespace, &config.event_hub) else {
            return Err("Entra ID sign-in needs `namespace` and `event_hub`".to_owned());
        };
        install_crypto_provider();
        let token_credential = crate::connectors::entra::credential::build(credential)?;
        Ok(Connection {
            sign_in: SignIn::Entra(credential.clone(), token_credential),
            event_hub: event_hub.clone(),
            namespace: namespace.clone(),
            custom_endpoint: config.custom_endpoint.clone(),
        })
    }

    /// Signs in once with an Entra ID credential, so that a wrong one is reported with what to
    /// check (the AMQP client would only retry); nothing to do with a connection string.
    async fn check_sign_in(&self) -> Result<(), String> {
        match &self.sign_in {
            SignIn::ConnectionString(_) => Ok(()),
            SignIn::Entra(config, credential) => {
                crate::connectors::entra::credential::check(config, credential, EVENTHUBS_SCOPE)
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", self.describe()))
            }
        }
    }

    /// The hub for people, without secrets: `hub` on `namespace` (via `custom endpoint`).
    pub(crate) fn describe(&self) -> String {
        match &self.custom_endpoint {
            Some(endpoint) => format!(
                "Event Hub `{}` on {} via {endpoint}",
                self.event_hub, self.namespace
            ),
            None => format!("Event Hub `{}` on {}", self.event_hub, self.namespace),
        }
    }

    fn retry_options() -> RetryOptions {
        RetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(100),
            max_delay: azure_core::time::Duration::seconds(5),
            max_retries: 5,
            max_total_elapsed: azure_core::time::Duration::seconds(30),
        }
    }

    /// Opens a consumer client (one AMQP connection) in `consumer_group`.
    pub(crate) async fn consumer(&self, consumer_group: &str) -> Result<ConsumerClient, String> {
        let mut builder = ConsumerClient::builder()
            .with_consumer_group(consumer_group.to_owned())
            .with_application_id("weir".to_owned())
            .with_retry_options(Self::retry_options());
        if let Some(endpoint) = &self.custom_endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        self.check_sign_in().await?;
        let opening = async {
            match &self.sign_in {
                SignIn::ConnectionString(text) => {
                    builder
                        .open_with_connection_string(text, Some(&self.event_hub))
                        .await
                }
                SignIn::Entra(_, credential) => {
                    builder
                        .open(&self.namespace, self.event_hub.clone(), credential.clone())
                        .await
                }
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.describe())),
            Err(_) => Err(format!(
                "cannot connect to {} within {OPEN_TIMEOUT:?}",
                self.describe()
            )),
        }
    }

    /// Opens a producer client (one AMQP connection).
    pub(crate) async fn producer(&self) -> Result<ProducerClient, String> {
        let mut builder = ProducerClient::builder()
            .with_application_id("weir".to_owned())
            .with_retry_options(Self::retry_options());
        if let Some(endpoint) = &self.custom_endpoint {
            builder = builder.with_custom_endpoint(endpoint.clone());
        }
        self.check_sign_in().await?;
        let opening = async {
            match &self.sign_in {
                SignIn::ConnectionString(text) => {
                    builder
                        .open_with_connection_string(text, Some(&self.event_hub))
                        .await
                }
                SignIn::Entra(_, credential) => {
                    builder
                        .open(&self.namespace, &self.event_hub, credential.clone())
                        .await
                }
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.describe())),
            Err(_) => Err(format!(
                "cannot connect to {} within {OPEN_TIMEOUT:?}",
                self.describe()
            )),
        }
    }
}

/// Installs one process-wide rustls crypto provider (ring, as the CLI does). The Event Hubs
/// client builds its TLS configuration from the process default, and rustls refuses to pick one
/// when several backends are compiled in (deltalake's and the Azure SDK's differ).
pub(crate) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Closes a consumer client, giving up after [`CLOSE_TIMEOUT`].
pub(crate) async fn close_consumer(client: ConsumerClient) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await;
}

/// Closes a producer client, giving up after [`CLOSE_TIMEOUT`].
pub(crate) async fn close_producer(client: ProducerClient) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, client.close()).await;
}
