//! The AMQP side: connections, sessions and links, and what each kind of link does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAnonymousMechanism,
    SessionAcceptor,
};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::definitions::{Error as AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Delivery, Receiver, Sendable, Sender};
use tokio::sync::mpsc;

use crate::selector::{self, StartFilter};
use crate::store::{Hub, annotation, message_annotation};
use crate::{Kill, Shared, condition};

/// The message format of a producer batch: one AMQP message whose data sections are messages.
const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;
/// Events read from a partition log at a time for one consumer.
const READ_CHUNK: usize = 256;

/// Accepts connections until the endpoint is dropped.
pub(crate) async fn listen(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let id = shared.next_id();
            // Keep a duplicate of the socket so that a fault can shut it down under the
            // connection engine.
            let stream = match duplicate(stream) {
                Ok((stream, control)) => {
                    shared.add_connection(id, control);
                    stream
                }
                Err(e) => {
                    tracing::warn!(error = %e, %peer, "cannot duplicate the socket");
                    return;
                }
            };
            // Through the relay that holds back answers to the client's detaches (see `relay`).
            serve_connection(shared.clone(), crate::relay::spawn(stream)).await;
            shared.remove_connection(id);
        });
    }
}

fn duplicate(
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let control = std_stream.try_clone()?;
    let _ = std_stream.set_nodelay(true);
    Ok((tokio::net::TcpStream::from_std(std_stream)?, control))
}

/// Where the responses of `$cbs` and `$management` requests go: the sender link whose target is
/// the request's `reply-to` address.
#[derive(Debug, Default)]
struct ReplyRoutes {
    routes: Mutex<HashMap<String, mpsc::Sender<Message<Body<Value>>>>>,
}

impl ReplyRoutes {
    fn insert(&self, address: String, sender: mpsc::Sender<Message<Body<Value>>>) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address, sender);
    }

    /// The live route to `address`: a link that ended leaves none.
    fn get(&self, address: &str) -> Option<mpsc::Sender<Message<Body<Value>>>> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
            .filter(|route| !route.is_closed())
            .cloned()
    }

    /// Removes the route to `address` if it is still `sender`'s (a newer link with the same
    /// address, such as the next `$cbs` client's, keeps its own).
    fn remove(&self, address: &str, sender: &mpsc::Sender<Message<Body<Value>>>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.get(address).is_some_and(|r| r.same_channel(sender)) {
            routes.remove(address);
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::io::DuplexStream) {
    let acceptor = ConnectionAcceptor::builder()
        .container_id("weir-eventhubs-endpoint")
        .sasl_acceptor(SaslAnonymousMechanism::new())
        .build();
    let mut connection = match acceptor.accept(stream).await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::debug!(error = %e, "connection not opened");
            return;
        }
    };
    let routes = Arc::new(ReplyRoutes::default());
    let session_acceptor = SessionAcceptor::new();
    while let Some(incoming) = connection.next_incoming_session().await {
        match session_acceptor
            .accept_incoming_session(incoming, &mut connection)
            .await
        {
            Ok(session) => {
                tokio::spawn(serve_session(shared.clone(), routes.clone(), session));
            }
            Err(e) => {
                tracing::debug!(error = %e, "session not begun");
                break;
            }
        }
    }
    let _ = connection.close().await;
}

/// What an address names.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Cbs,
    Management,
    /// `<hub>` or `<hub>/Partitions/<n>`.
    Producer {
        hub: String,
        partition: Option<usize>,
    },
    /// `<hub>/ConsumerGroups/<group>/Partitions/<n>`.
    Consumer {
        hub: String,
        group: String,
        partition: usize,
    },
}

/// Parses a link address, a full URL (`amqps://host/hub/...`) or a path.
fn parse_address(address: &str) -> Option<Node> {
    let path = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => address,
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is = |part: &str, name: &str| part.eq_ignore_ascii_case(name);
    match parts.as_slice() {
        ["$cbs"] => Some(Node::Cbs),
        ["$management"] => Some(Node::Management),
        [hub] if !hub.is_empty() => Some(Node::Producer {
            hub: (*hub).to_owned(),
            partition: None,
        }),
        [hub, p, n] if is(p, "Partitions") => Some(Node::Producer {
            hub: (*hub).to_owned(),
            partition: Some(n.parse().ok()?),
        }),
        [hub, g, group, p, n] if is(g, "ConsumerGroups") && is(p, "Partitions") => {
            Some(Node::Consumer {
                hub: (*hub).to_owned(),
                group: (*group).to_owned(),
                partition: n.parse().ok()?,
            })
        }
        _ => None,
    }
}

fn amqp_error(condition: &str, description: impl Into<String>) -> AmqpError {
    AmqpError::new(
        ErrorCondition::Custom(Symbol::from(condition)),
        Some(description.into()),
        None,
    )
}

/// The first string inside a value (the selector filter is a described string).
fn first_string(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Described(described) => first_string(&described.value),
        _ => None,
    }
}

async fn serve_session(
    shared: Arc<Shared>,
    routes: Arc<ReplyRoutes>,
    mut session: ListenerSessionHandle,
) {
    let link_acceptor = LinkAcceptor::builder()
        // The client sizes its batches by the peer's max-message-size and fails without one.
        .max_message_size(shared.config.max_message_size)
        .build();
    while let Some(attach) = session.next_incoming_attach().await {
        let remote = AttachInfo::of(&attach);
        match link_acceptor
            .accept_incoming_attach(attach, &mut session)
            .await
        {
            Ok(LinkEndpoint::Sender(sender)) => {
                tokio::spawn(serve_outgoing(
                    shared.clone(),
                    routes.clone(),
                    sender,
                    remote,
                ));
            }
            Ok(LinkEndpoint::Receiver(receiver)) => {
                tokio::spawn(serve_incoming(
                    shared.clone(),
                    routes.clone(),
                    receiver,
                    remote,
                ));
            }
            Err(e) => tracing::debug!(error = %e, "link not attached"),
        }
    }
    let _ = session.end().await;
}

/// What the attach said, kept before the acceptor consumes it.
#[derive(Debug, Clone)]
struct AttachInfo {
    source: Option<String>,
    target: Option<String>,
    selector: Option<String>,
    owner_level: Option<i64>,
}

impl AttachInfo {
    fn of(attach: &Attach) -> AttachInfo {
        let source = attach.source.as_ref();
        let target = attach.target.as_ref().and_then(|t| match t.as_ref() {
            fe2o3_amqp::types::messaging::TargetArchetype::Target(target) => target.address.clone(),
            #[allow(
                unreachable_patterns,
                reason = "transaction coordinators are not served"
            )]
            _ => None,
        });
        let selector = source
            .and_then(|s| s.filter.as_ref())
            .and_then(|filter| filter.values().find_map(first_string))
            .map(str::to_owned);
        let owner_level = attach.properties.as_ref().and_then(|props| {
            props
                .iter()
                .find(|(k, _)| k.as_str() == "com.microsoft:epoch")
                .and_then(|(_, v)| match v {
                    Value::Long(l) => Some(*l),
                    Value::Int(i) => Some(i64::from(*i)),
                    _ => None,
                })
        });
        AttachInfo {
            source: source.and_then(|s| s.address.clone()),
            target,
            selector,
            owner_level,
        }
    }
}

/// A link on which the endpoint sends: a consumer, or the reply side of `$cbs`/`$management`.
async fn serve_outgoing(
    shared: Arc<Shared>,
    routes: Arc<ReplyRoutes>,
    mut sender: Sender,
    remote: AttachInfo,
) {
    let node = remote.source.as_deref().and_then(parse_address);
    match node {
        Some(Node::Cbs | Node::Management) => {
            let Some(reply_to) = remote.target.clone() else {
                let _ = sender
                    .close_with_error(amqp_error(
                        condition::NOT_FOUND,
                        "a reply link needs a target address",
                    ))
                    .await;
                return;
            };
            let (replies, mut pending) = mpsc::channel(16);
            routes.insert(reply_to.clone(), replies.clone());
            let mut closed = true;
            loop {
                tokio::select! {
                    reply = pending.recv() => {
                        let Some(reply) = reply else { break };
                        let sendable = Sendable::builder().message(reply).settled(true).build();
                        if sender.send(sendable).await.is_err() {
                            break;
                        }
                    }
                    detached = sender.on_detach() => {
                        closed = closed_by_remote(&detached);
                        break;
                    }
                }
            }
            // Replies to this address now wait for the client's next reply link.
            routes.remove(&reply_to, &replies);
            drop(pending);
            if closed {
                let _ = sender.close().await;
            } else {
                let _ = sender.detach().await;
            }
        }
        Some(Node::Consumer {
            hub,
            group,
            partition,
        }) => serve_consumer(shared, sender, remote, &hub, &group, partition).await,
        _ => {
            let _ = sender
                .close_with_error(amqp_error(
                    condition::NOT_FOUND,
                    format!("no such source: {:?}", remote.source),
                ))
                .await;
        }
    }
}

async fn serve_consumer(
    shared: Arc<Shared>,
    mut sender: Sender,
    remote: AttachInfo,
    hub_name: &str,
    group: &str,
    partition: usize,
) {
    let Some(hub) = shared.hub(hub_name) else {
        let _ = sender
            .close_with_error(amqp_error(
                condition::NOT_FOUND,
                format!("The messaging entity '{hub_name}' could not be found."),
            ))
            .await;
        return;
    };
    let Some(log) = hub.partitions.get(partition) else {
        let _ = sender
            .close_with_error(amqp_error(
                condition::NOT_FOUND,
                format!("event hub `{hub_name}` has no partition {partition}"),
            ))
            .await;
        return;
    };
    let filter = match remote.selector.as_deref().map(selector::parse) {
        None => StartFilter::Latest,
        Some(Ok(filter)) => filter,
        Some(Err(reason)) => {
            let _ = sender
                .close_with_error(amqp_error(condition::DECODE_ERROR, reason))
                .await;
            return;
        }
    };
    let (id, mut killed) = match shared.register_consumer(
        hub_name,
        group,
        partition,
        remote.owner_level,
    ) {
        Ok(registered) => registered,
        Err(kill) => {
            tracing::debug!(hub = hub_name, partition, reason = %kill.description, "consumer refused");
            let _ = sender
                .close_with_error(amqp_error(kill.condition, kill.description))
                .await;
            return;
        }
    };
    let mut next = log.start_index(&filter);
    let mut length = log.watch_length();
    tracing::debug!(hub = hub_name, group, partition, start = next, owner_level = ?remote.owner_level, "consumer attached");
    // How the link ends: killed by the endpoint, or ended by the client (detached or closed).
    let mut remote_closed = true;
    let kill: Option<Kill> = 'serve: loop {
        let chunk = log.read(next, READ_CHUNK);
        if chunk.is_empty() {
            length.mark_unchanged();
            if log.read(next, 1).is_empty() {
                tracing::trace!(
                    hub = hub_name,
                    partition,
                    next,
                    "consumer waiting for events"
                );
                tokio::select! {
                    changed = length.changed() => if changed.is_err() { break 'serve None },
                    detached = sender.on_detach() => {
                        tracing::debug!(hub = hub_name, partition, reason = %detached, "consumer detached by the client");
                        remote_closed = closed_by_remote(&detached);
                        break 'serve None;
                    }
                    _ = killed.changed() => break 'serve killed.borrow().clone(),
                }
            }
            continue;
        }
        for event in chunk {
            // Events go pre-settled, as Event Hubs sends them; `send` waits for link credit.
            let sendable = Sendable::builder()
                .message(event.message.clone())
                .settled(true)
                .build();
            tokio::select! {
                sent = sender.send(sendable) => {
                    if let Err(e) = sent {
                        tracing::debug!(hub = hub_name, partition, error = %e, "consumer link failed");
                        remote_closed = match &e {
                            fe2o3_amqp::link::SendError::Detached(detached) => closed_by_remote(detached),
                            fe2o3_amqp::link::SendError::LinkStateError(state) => !detached_by_remote(state),
                            _ => true,
                        };
                        break 'serve None;
                    }
                    tracing::trace!(hub = hub_name, partition, sequence_number = event.sequence_number, "event sent");
                    next += 1;
                }
                _ = killed.changed() => break 'serve killed.borrow().clone(),
            }
        }
    };
    shared.unregister_consumer(id);
    match kill {
        Some(kill) => {
            tracing::debug!(
                hub = hub_name,
                partition,
                condition = kill.condition,
                "consumer detached by the endpoint"
            );
            let _ = sender
                .close_with_error(amqp_error(kill.condition, kill.description))
                .await;
        }
        // Answer a detach with a detach and a close with a close: a client that detached and
        // gets a close back re-attaches to close properly, which races its own bookkeeping.
        None if remote_closed => {
            let _ = sender.close().await;
        }
        None => {
            let _ = sender.detach().await;
        }
    }
}

fn closed_by_remote(error: &fe2o3_amqp::link::DetachError) -> bool {
    use fe2o3_amqp::link::DetachError;
    !matches!(
        error,
        DetachError::DetachedByRemote | DetachError::RemoteDetachedWithError(_)
    )
}

fn detached_by_remote(error: &fe2o3_amqp::link::LinkStateError) -> bool {
    use fe2o3_amqp::link::LinkStateError;
    matches!(
        error,
        LinkStateError::RemoteDetached | LinkStateError::RemoteDetachedWithError(_)
    )
}

/// A link on which the endpoint receives: a producer, or the request side of `$cbs` and
/// `$management`.
async fn serve_incoming(
    shared: Arc<Shared>,
    routes: Arc<ReplyRoutes>,
    mut receiver: Receiver,
    remote: AttachInfo,
) {
    let node = remote.target.as_deref().and_then(parse_address);
    let producer = match node {
        Some(Node::Producer { hub, partition }) => match shared.hub(&hub) {
            Some(hub) if partition.is_none_or(|p| p < hub.partitions.len()) => {
                Some((hub, partition))
            }
            _ => {
                let _ = receiver
                    .close_with_error(amqp_error(
                        condition::NOT_FOUND,
                        format!("The messaging entity '{hub}' (partition {partition:?}) could not be found."),
                    ))
                    .await;
                return;
            }
        },
        Some(Node::Cbs | Node::Management) => None,
        _ => {
            let _ = receiver
                .close_with_error(amqp_error(
                    condition::NOT_FOUND,
                    format!("no such target: {:?}", remote.target),
                ))
                .await;
            return;
        }
    };
    let delay = shared.config.settle_delay;
    let disposer = receiver.disposer();
    tracing::debug!(target_address = ?remote.target, "incoming link attached");
    let mut remote_closed = true;
    loop {
        let delivery: Delivery<Body<Value>> = match receiver.recv().await {
            Ok(delivery) => delivery,
            Err(e) => {
                tracing::debug!(error = %e, "incoming link ended");
                if let fe2o3_amqp::link::RecvError::LinkStateError(state) = &e {
                    remote_closed = !detached_by_remote(state);
                }
                break;
            }
        };
        let format = delivery.message_format().unwrap_or(0);
        let (info, message) = delivery.into_parts();
        match &producer {
            Some((hub, partition)) => {
                let outcome = store_transfer(&shared, hub, *partition, message, format);
                tracing::trace!(hub = %hub.name, ?partition, ok = outcome.is_ok(), "transfer stored");
                match outcome {
                    Ok(()) => accept_later(disposer.clone(), info, delay),
                    Err(error) => {
                        // Rejections are rare (fault injection): settle them in line.
                        tokio::time::sleep(delay).await;
                        if receiver.reject(info, error).await.is_err() {
                            break;
                        }
                    }
                }
            }
            None => {
                accept_later(disposer.clone(), info, delay);
                let reply_to = message.properties.as_ref().and_then(|p| p.reply_to.clone());
                let reply = respond(&shared, &message);
                if let Some(reply_to) = reply_to {
                    deliver_reply(&routes, &reply_to, reply).await;
                }
            }
        }
    }
    if remote_closed {
        let _ = receiver.close().await;
    } else {
        let _ = receiver.detach().await;
    }
}

/// Accepts a client's transfer after `delay`, without holding up the next one.
///
/// The client (fe2o3-amqp 0.16) registers a transfer as awaiting its outcome only after handing
/// it to its session, so a disposition that arrives before that is lost and the send waits
/// forever. Settling after a delay makes that window practically unreachable (it was hit on
/// loopback with 5 ms under heavy load).
fn accept_later(disposer: fe2o3_amqp::ReceiverDisposer, info: DeliveryInfo, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = disposer.accept(info).await;
    });
}

/// Stores a producer transfer (one message, or a batch) in its partition.
fn store_transfer(
    shared: &Shared,
    hub: &Hub,
    partition: Option<usize>,
    message: Message<Body<Value>>,
    format: u32,
) -> Result<(), AmqpError> {
    if shared.take_busy() {
        shared.count(|s| s.busy_rejections += 1);
        return Err(amqp_error(
            condition::SERVER_BUSY,
            "The server is busy. Please retry the operation (test endpoint fault injection).",
        ));
    }
    let envelope_key = message_annotation(&message, annotation::PARTITION_KEY)
        .and_then(first_string)
        .map(str::to_owned);
    let messages = if format == BATCH_MESSAGE_FORMAT {
        let Body::Data(sections) = message.body else {
            return Err(amqp_error(
                condition::DECODE_ERROR,
                "a batch must carry its events in data sections",
            ));
        };
        let mut messages = Vec::new();
        for section in sections.iter() {
            let inner: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&section.0)
                .map_err(|e| {
                    amqp_error(
                        condition::DECODE_ERROR,
                        format!("an event in the batch is not an AMQP message: {e}"),
                    )
                })?;
            messages.push(inner.0);
        }
        messages
    } else {
        vec![message]
    };
    let key = envelope_key.or_else(|| {
        messages.first().and_then(|m| {
            message_annotation(m, annotation::PARTITION_KEY)
                .and_then(first_string)
                .map(str::to_owned)
        })
    });
    let index = partition.unwrap_or_else(|| hub.route(key.as_deref()));
    let Some(target) = hub.partitions.get(index) else {
        return Err(amqp_error(condition::NOT_FOUND, "no such partition"));
    };
    target.append(
        messages,
        key.as_deref(),
        chrono::Utc::now().timestamp_millis(),
    );
    shared.count(|s| s.transfers += 1);
    Ok(())
}

async fn deliver_reply(routes: &ReplyRoutes, reply_to: &str, mut reply: Message<Body<Value>>) {
    // The client attaches its reply link before it sends, but the link's task may not have
    // registered its route yet, and the `$cbs` client uses one reply address for every link:
    // a reply must not go to the route of an earlier link that has ended (it was lost there, and
    // the client waited for its put-token answer forever). Allow a moment for the live route.
    for _ in 0..100 {
        if let Some(route) = routes.get(reply_to) {
            match route.send(reply).await {
                Ok(()) => return,
                // The link ended meanwhile.
                Err(mpsc::error::SendError(back)) => reply = back,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(reply_to, "no reply link for a request");
}

fn property<'m>(message: &'m Message<Body<Value>>, name: &str) -> Option<&'m SimpleValue> {
    message.application_properties.as_ref()?.0.get(name)
}

fn property_text<'m>(message: &'m Message<Body<Value>>, name: &str) -> Option<&'m str> {
    match property(message, name)? {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The response to a `$cbs` or `$management` request.
fn respond(shared: &Shared, request: &Message<Body<Value>>) -> Message<Body<Value>> {
    let correlation = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone());
    let operation = property_text(request, "operation").unwrap_or_default();
    let (status, description, body) = match operation {
        "put-token" => put_token(shared, request),
        "READ" => read(shared, request),
        other => (
            501,
            format!("operation `{other}` is not implemented by the test endpoint"),
            Value::Null,
        ),
    };
    reply(status, &description, body, correlation)
}

/// A `$cbs` put-token: any token is good enough for a test endpoint, unless it is configured
/// with the one bearer token it accepts (Entra ID sign-in tests).
fn put_token(shared: &Shared, request: &Message<Body<Value>>) -> (i32, String, Value) {
    let Some(expected) = &shared.config.bearer_token else {
        return (202, "Accepted".to_owned(), Value::Null);
    };
    let kind = property_text(request, "type").unwrap_or_default();
    let token = match &request.body {
        Body::Value(AmqpValue(Value::String(token))) => token.as_str(),
        _ => "",
    };
    if kind == "jwt" && token == expected {
        (202, "Accepted".to_owned(), Value::Null)
    } else {
        (
            401,
            format!("Unauthorized: expected the test bearer token (type `jwt`), got type `{kind}`"),
            Value::Null,
        )
    }
}

fn reply(
    status: i32,
    description: &str,
    body: Value,
    correlation: Option<MessageId>,
) -> Message<Body<Value>> {
    Message::builder()
        .properties(Properties {
            correlation_id: correlation,
            ..Properties::default()
        })
        .application_properties(
            ApplicationProperties::builder()
                .insert("status-code", SimpleValue::Int(status))
                .insert("status-description", description)
                .build(),
        )
        .body(Body::Value(AmqpValue(body)))
        .build()
}

/// `$management` READ of `com.microsoft:eventhub` or `com.microsoft:partition`.
fn read(shared: &Shared, request: &Message<Body<Value>>) -> (i32, String, Value) {
    let entity = property_text(request, "type").unwrap_or_default();
    let Some(name) = property_text(request, "name") else {
        return (400, "missing `name`".to_owned(), Value::Null);
    };
    let Some(hub) = shared.hub(name) else {
        return (
            404,
            format!("The messaging entity '{name}' could not be found."),
            Value::Null,
        );
    };
    let mut map: OrderedMap<Value, Value> = OrderedMap::new();
    let mut put = |key: &str, value: Value| {
        map.insert(Value::String(key.to_owned()), value);
    };
    match entity {
        "com.microsoft:eventhub" => {
            put("name", Value::String(hub.name.clone()));
            put(
                "created_at",
                Value::Timestamp(Timestamp::from_milliseconds(hub.created_at)),
            );
            put(
                "partition_count",
                Value::Int(i32::try_from(hub.partitions.len()).unwrap_or(i32::MAX)),
            );
            put(
                "partition_ids",
                Value::Array(Array::from(
                    (0..hub.partitions.len())
                        .map(|p| Value::String(p.to_string()))
                        .collect::<Vec<_>>(),
                )),
            );
        }
        "com.microsoft:partition" => {
            let partition = property_text(request, "partition").unwrap_or_default();
            let Some(log) = partition
                .parse::<usize>()
                .ok()
                .and_then(|p| hub.partitions.get(p))
            else {
                return (
                    404,
                    format!("event hub `{name}` has no partition `{partition}`"),
                    Value::Null,
                );
            };
            let state = log.state();
            put("name", Value::String(hub.name.clone()));
            put("partition", Value::String(partition.to_owned()));
            put("type", Value::String(entity.to_owned()));
            put(
                "begin_sequence_number",
                Value::Long(state.begin_sequence_number),
            );
            put(
                "last_enqueued_sequence_number",
                Value::Long(state.last_sequence_number),
            );
            put("last_enqueued_sequence_number_epoch", Value::Long(0));
            put(
                "last_enqueued_offset",
                Value::String(state.last_offset.to_string()),
            );
            put(
                "last_enqueued_time_utc",
                Value::Timestamp(Timestamp::from_milliseconds(state.last_enqueued_time)),
            );
            put(
                "is_partition_empty",
                Value::Bool(state.last_sequence_number < 0),
            );
        }
        other => {
            return (
                404,
                format!("entity type `{other}` is not served by the test endpoint"),
                Value::Null,
            );
        }
    }
    (200, "OK".to_owned(), Value::Map(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_their_node() {
        assert_eq!(parse_address("$cbs"), Some(Node::Cbs));
        assert_eq!(
            parse_address("amqps://localhost/$management"),
            Some(Node::Management)
        );
        assert_eq!(
            parse_address("amqps://localhost/telemetry"),
            Some(Node::Producer {
                hub: "telemetry".into(),
                partition: None
            })
        );
        assert_eq!(
            parse_address("amqps://localhost/telemetry/Partitions/3"),
            Some(Node::Producer {
                hub: "telemetry".into(),
                partition: Some(3)
            })
        );
        assert_eq!(
            parse_address("amqps://localhost/telemetry/ConsumerGroups/$Default/Partitions/1"),
            Some(Node::Consumer {
                hub: "telemetry".into(),
                group: "$Default".into(),
                partition: 1
            })
        );
        assert_eq!(
            parse_address("amqps://localhost/telemetry/Partitions/x"),
            None
        );
        assert_eq!(parse_address("amqps://localhost/a/b"), None);
    }
}
