//! An Azure Event Hubs-compatible endpoint for tests and local development.
//!
//! It is an AMQP 1.0 listener (on `fe2o3-amqp`'s acceptor) that serves enough of the Event Hubs
//! protocol for the real `azure_messaging_eventhubs` client:
//! - SASL ANONYMOUS, and `$cbs` put-token (any token is accepted, or only one bearer token);
//! - `$management` reads of hub properties (`com.microsoft:eventhub`) and partition properties
//!   (`com.microsoft:partition`);
//! - producers sending to `<hub>` (by partition key, or round robin) and to
//!   `<hub>/Partitions/<n>`, single messages and batches;
//! - consumers on `<hub>/ConsumerGroups/<group>/Partitions/<n>` whose selector filter starts them
//!   at an offset, a sequence number or an enqueued time (`-1` and `@latest` included);
//! - the annotations `x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time` and
//!   `x-opt-partition-key` on every event;
//! - owner levels (`com.microsoft:epoch`): a consumer with an owner level at least as high as the
//!   others takes the partition from them (`amqp:link:stolen`), a lower one is refused;
//! - fault injection: forced detach of consumer links, dropped connections, and producer
//!   transfers rejected as `com.microsoft:server-busy`.
//!
//! Events live in memory: they are gone when the endpoint stops. Use it with the client's custom
//! endpoint: `ConsumerClient::builder().with_custom_endpoint(endpoint.custom_endpoint())` and any
//! connection string naming the hub, such as [`Endpoint::connection_string`].

mod relay;
mod selector;
mod server;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Message, MessageId, Properties,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use selector::{SelectorField, StartFilter};
use store::{Hub, Hubs};
pub use store::{PartitionState, StoredEvent};

/// The host name in the connection strings this endpoint hands out. With a custom endpoint the
/// client connects to the endpoint's socket and only sends this name in its AMQP `open`.
pub const NAMESPACE_HOST: &str = "localhost";

/// AMQP error conditions the endpoint sends.
pub mod condition {
    /// A consumer with a higher (or equal, newer) owner level took the partition.
    pub const LINK_STOLEN: &str = "amqp:link:stolen";
    /// The endpoint detached the link (fault injection).
    pub const DETACH_FORCED: &str = "amqp:link:detach-forced";
    /// The endpoint is "busy" (fault injection); clients retry with backoff.
    pub const SERVER_BUSY: &str = "com.microsoft:server-busy";
    /// The hub, partition or node does not exist.
    pub const NOT_FOUND: &str = "amqp:not-found";
    /// A message or filter could not be understood.
    pub const DECODE_ERROR: &str = "amqp:decode-error";
}

/// Why the endpoint refused a request.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Listening failed.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No such hub or partition.
    #[error("event hub `{hub}` has no partition {partition:?} (or does not exist)")]
    NotFound {
        /// The hub.
        hub: String,
        /// The partition asked for, if any.
        partition: Option<usize>,
    },
}

/// How to start an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Address to listen on; port 0 picks a free port.
    pub address: SocketAddr,
    /// Event Hubs to serve: name and number of partitions.
    pub hubs: Vec<(String, u32)>,
    /// The `max-message-size` announced on every link (the client sizes batches by it).
    pub max_message_size: u64,
    /// Wait before settling a transfer from the client (an event batch or a `$cbs`/`$management`
    /// request): the client loses a settlement that arrives before it has registered the
    /// transfer, and then waits forever (seen on loopback with no delay, and once with 5 ms on
    /// a loaded machine).
    pub settle_delay: Duration,
    /// The only token a `$cbs` put-token may carry, as a bearer token (`jwt`, as Entra ID
    /// sign-in sends it); absent: any token of any type is accepted.
    pub bearer_token: Option<String>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            hubs: Vec::new(),
            max_message_size: 1024 * 1024,
            settle_delay: Duration::from_millis(20),
            bearer_token: None,
        }
    }
}

impl EndpointConfig {
    /// A configuration on 127.0.0.1 with a free port and the given hubs.
    pub fn with_hubs(hubs: &[(&str, u32)]) -> Self {
        EndpointConfig {
            hubs: hubs.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect(),
            ..EndpointConfig::default()
        }
    }
}

/// Counters of what the endpoint did, for tests that must see that a fault really happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub connections: u64,
    /// Consumer links attached.
    pub consumer_attaches: u64,
    /// Consumer links detached by [`Endpoint::detach_consumers`].
    pub forced_detaches: u64,
    /// Connections dropped by [`Endpoint::drop_connections`].
    pub dropped_connections: u64,
    /// Producer transfers rejected as busy.
    pub busy_rejections: u64,
    /// Consumer links taken over or refused because of owner levels.
    pub stolen: u64,
    /// Producer transfers accepted.
    pub transfers: u64,
}

/// Where [`Endpoint::publish`] puts an event.
#[derive(Debug, Clone, Copy)]
pub enum PublishTo<'a> {
    /// A partition by index.
    Partition(usize),
    /// The partition the key hashes to; the key is stamped on the event.
    Key(&'a str),
}

/// Why a consumer link must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kill {
    pub(crate) condition: &'static str,
    pub(crate) description: String,
}

/// An attached consumer link, for owner levels and forced detaches.
#[derive(Debug)]
struct ConsumerEntry {
    id: u64,
    owner_level: Option<i64>,
    kill: watch::Sender<Option<Kill>>,
}

/// (hub, consumer group, partition), lower-cased.
type ConsumerKey = (String, String, usize);

/// State shared by the listener and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: EndpointConfig,
    hubs: RwLock<Hubs>,
    consumers: Mutex<HashMap<ConsumerKey, Vec<ConsumerEntry>>>,
    /// A duplicate of each connection's socket, to drop it from outside.
    connections: Mutex<HashMap<u64, std::net::TcpStream>>,
    busy_sends: AtomicU64,
    next_id: AtomicU64,
    stats: Mutex<Stats>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn hub(&self, name: &str) -> Option<Arc<Hub>> {
        self.hubs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut lock(&self.stats));
    }

    /// Takes one busy token: true when this producer transfer must be rejected.
    pub(crate) fn take_busy(&self) -> bool {
        self.busy_sends
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) fn add_connection(&self, id: u64, socket: std::net::TcpStream) {
        lock(&self.connections).insert(id, socket);
        self.count(|s| s.connections += 1);
    }

    pub(crate) fn remove_connection(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// Registers a consumer link, applying owner levels: a link at least as high as every other
    /// takes the partition (the others are told to go); a lower one, or one without an owner
    /// level while another has one, is refused.
    pub(crate) fn register_consumer(
        &self,
        hub: &str,
        group: &str,
        partition: usize,
        owner_level: Option<i64>,
    ) -> Result<(u64, watch::Receiver<Option<Kill>>), Kill> {
        let key = (
            hub.to_ascii_lowercase(),
            group.to_ascii_lowercase(),
            partition,
        );
        let mut consumers = lock(&self.consumers);
        let entries = consumers.entry(key).or_default();
        let highest = entries.iter().filter_map(|e| e.owner_level).max();
        if let Some(highest) = highest {
            let refused = match owner_level {
                Some(level) => level < highest,
                None => true,
            };
            if refused {
                drop(consumers);
                self.count(|s| s.stolen += 1);
                return Err(Kill {
                    condition: condition::LINK_STOLEN,
                    description: format!(
                        "At least one receiver for the endpoint is created with epoch of '{highest}', and so non-epoch or lower epoch receiver is not allowed (partition {partition}, consumer group `{group}`)"
                    ),
                });
            }
        }
        if let Some(level) = owner_level {
            let mut displaced = 0;
            for other in entries.drain(..) {
                displaced += 1;
                other.kill.send_replace(Some(Kill {
                    condition: condition::LINK_STOLEN,
                    description: format!(
                        "New receiver with higher epoch of '{level}' is created hence current receiver with epoch '{}' is getting disconnected",
                        other.owner_level.map_or("none".to_owned(), |l| l.to_string())
                    ),
                }));
            }
            if displaced > 0 {
                self.count(|s| s.stolen += displaced);
            }
        }
        let id = self.next_id();
        let (kill, killed) = watch::channel(None);
        entries.push(ConsumerEntry {
            id,
            owner_level,
            kill,
        });
        drop(consumers);
        self.count(|s| s.consumer_attaches += 1);
        Ok((id, killed))
    }

    pub(crate) fn unregister_consumer(&self, id: u64) {
        let mut consumers = lock(&self.consumers);
        for entries in consumers.values_mut() {
            entries.retain(|e| e.id != id);
        }
        consumers.retain(|_, entries| !entries.is_empty());
    }
}

/// A running endpoint. Dropping it stops the listener and drops every connection.
#[derive(Debug)]
pub struct Endpoint {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener: JoinHandle<()>,
}

impl Endpoint {
    /// Listens on `config.address` and serves `config.hubs`.
    pub async fn start(config: EndpointConfig) -> Result<Endpoint, EndpointError> {
        let address = config.address;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| EndpointError::Listen { address, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EndpointError::Listen { address, source })?;
        let now = chrono::Utc::now().timestamp_millis();
        let mut hubs = Hubs::default();
        for (name, partitions) in &config.hubs {
            hubs.insert(Hub::new(name, *partitions, now));
        }
        let shared = Arc::new(Shared {
            config,
            hubs: RwLock::new(hubs),
            consumers: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            busy_sends: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            stats: Mutex::new(Stats::default()),
        });
        let listener = tokio::spawn(server::listen(listener, shared.clone()));
        tracing::info!(address = %local_addr, "Event Hubs test endpoint listening");
        Ok(Endpoint {
            shared,
            local_addr,
            listener,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The client's custom endpoint for it: `amqp://127.0.0.1:<port>`.
    pub fn custom_endpoint(&self) -> String {
        format!("amqp://{}", self.local_addr)
    }

    /// A connection string for `hub` (the key is not checked: any token is accepted).
    pub fn connection_string(&self, hub: &str) -> String {
        format!(
            "Endpoint=sb://{NAMESPACE_HOST}/;SharedAccessKeyName=local;SharedAccessKey=bG9jYWwtZGV2ZWxvcG1lbnQ=;EntityPath={hub}"
        )
    }

    /// Adds (or replaces, emptied) an Event Hub.
    pub fn add_hub(&self, name: &str, partitions: u32) {
        let now = chrono::Utc::now().timestamp_millis();
        self.shared
            .hubs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Hub::new(name, partitions, now));
    }

    fn hub(&self, name: &str) -> Result<Arc<Hub>, EndpointError> {
        self.shared
            .hub(name)
            .ok_or_else(|| EndpointError::NotFound {
                hub: name.to_owned(),
                partition: None,
            })
    }

    /// Enqueues an event directly, as a producer would (for preloading benchmarks and tests that
    /// are not about the producer). Returns its partition and sequence number.
    pub fn publish(
        &self,
        hub: &str,
        to: PublishTo<'_>,
        body: impl Into<Vec<u8>>,
        properties: &[(&str, &str)],
    ) -> Result<(usize, i64), EndpointError> {
        let hub_ref = self.hub(hub)?;
        let (partition, key) = match to {
            PublishTo::Partition(p) => (p, None),
            PublishTo::Key(key) => (hub_ref.route(Some(key)), Some(key)),
        };
        let target = hub_ref
            .partitions
            .get(partition)
            .ok_or_else(|| EndpointError::NotFound {
                hub: hub.to_owned(),
                partition: Some(partition),
            })?;
        let mut message = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(format!(
                    "published-{}",
                    self.shared.next_id()
                ))),
                ..Properties::default()
            })
            .body(Body::Data(vec![Data(body.into().into())].into()))
            .build();
        if !properties.is_empty() {
            let mut builder = ApplicationProperties::builder();
            for (name, value) in properties {
                builder = builder.insert(*name, *value);
            }
            message.application_properties = Some(builder.build());
        }
        let numbers = target.append(vec![message], key, chrono::Utc::now().timestamp_millis());
        Ok((partition, numbers.first().copied().unwrap_or(-1)))
    }

    /// Every event of a partition, in order.
    pub fn events(&self, hub: &str, partition: usize) -> Result<Vec<StoredEvent>, EndpointError> {
        let hub_ref = self.hub(hub)?;
        let target = hub_ref
            .partitions
            .get(partition)
            .ok_or_else(|| EndpointError::NotFound {
                hub: hub.to_owned(),
                partition: Some(partition),
            })?;
        Ok(target.all().iter().map(|e| (**e).clone()).collect())
    }

    /// Up to `max` events of a partition from its `first` (0-based index), in order: what a
    /// reader polling the partition has not seen yet.
    pub fn events_from(
        &self,
        hub: &str,
        partition: usize,
        first: usize,
        max: usize,
    ) -> Result<Vec<StoredEvent>, EndpointError> {
        let hub_ref = self.hub(hub)?;
        let target = hub_ref
            .partitions
            .get(partition)
            .ok_or_else(|| EndpointError::NotFound {
                hub: hub.to_owned(),
                partition: Some(partition),
            })?;
        Ok(target
            .read(first, max)
            .iter()
            .map(|e| (**e).clone())
            .collect())
    }

    /// Every event of every partition of `hub`, partition by partition.
    pub fn all_events(&self, hub: &str) -> Result<Vec<StoredEvent>, EndpointError> {
        let hub_ref = self.hub(hub)?;
        Ok(hub_ref
            .partitions
            .iter()
            .flat_map(|p| p.all().iter().map(|e| (**e).clone()).collect::<Vec<_>>())
            .collect())
    }

    /// The last sequence number, offset and time of a partition.
    pub fn partition_state(
        &self,
        hub: &str,
        partition: usize,
    ) -> Result<PartitionState, EndpointError> {
        let hub_ref = self.hub(hub)?;
        hub_ref
            .partitions
            .get(partition)
            .map(|p| p.state())
            .ok_or_else(|| EndpointError::NotFound {
                hub: hub.to_owned(),
                partition: Some(partition),
            })
    }

    /// The number of partitions of `hub`.
    pub fn partition_count(&self, hub: &str) -> Result<usize, EndpointError> {
        Ok(self.hub(hub)?.partitions.len())
    }

    /// Fault injection: detaches every consumer link of `hub` with `amqp:link:detach-forced`.
    /// Returns how many were detached.
    pub fn detach_consumers(&self, hub: &str) -> usize {
        let prefix = hub.to_ascii_lowercase();
        let mut consumers = lock(&self.shared.consumers);
        let mut detached = 0;
        for ((hub_name, _, partition), entries) in consumers.iter_mut() {
            if *hub_name != prefix {
                continue;
            }
            for entry in entries.drain(..) {
                detached += 1;
                entry.kill.send_replace(Some(Kill {
                    condition: condition::DETACH_FORCED,
                    description: format!(
                        "link detached by the test endpoint (partition {partition})"
                    ),
                }));
            }
        }
        consumers.retain(|_, entries| !entries.is_empty());
        drop(consumers);
        self.shared.count(|s| s.forced_detaches += detached as u64);
        tracing::info!(hub, detached, "fault injected: consumer links detached");
        detached
    }

    /// Fault injection: drops every open connection (the socket is shut down under the AMQP
    /// connection). Returns how many were dropped.
    pub fn drop_connections(&self) -> usize {
        let connections: Vec<(u64, std::net::TcpStream)> =
            lock(&self.shared.connections).drain().collect();
        let dropped = connections.len();
        for (_, socket) in connections {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        self.shared
            .count(|s| s.dropped_connections += dropped as u64);
        tracing::info!(dropped, "fault injected: connections dropped");
        dropped
    }

    /// Fault injection: rejects the next `transfers` producer transfers with
    /// `com.microsoft:server-busy` (the client retries them).
    pub fn server_busy(&self, transfers: u64) {
        self.shared.busy_sends.store(transfers, Ordering::Release);
    }

    /// Consumer links attached to `hub` right now.
    pub fn consumers(&self, hub: &str) -> usize {
        let hub = hub.to_ascii_lowercase();
        lock(&self.shared.consumers)
            .iter()
            .filter(|((h, _, _), _)| *h == hub)
            .map(|(_, entries)| entries.len())
            .sum()
    }

    /// What the endpoint did so far.
    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.listener.abort();
        for (_, socket) in lock(&self.shared.connections).drain() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The body of an event as text, for readable test failures.
pub fn body_text(event: &StoredEvent) -> String {
    String::from_utf8_lossy(&event.body()).into_owned()
}

/// The AMQP types of `fe2o3-amqp`, for tests that inspect stored messages.
pub use fe2o3_amqp::types as amqp_types;
