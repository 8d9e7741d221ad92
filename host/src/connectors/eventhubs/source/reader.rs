//! One Event Hubs partition: a task that receives events over its own connection and queues
//! them, and the [`PartitionReader`] that hands them to the partition worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::{AmqpSimpleValue, ReceivedEventData};
use azure_messaging_eventhubs::{
    ConsumerClient, EventHubsError, OpenReceiverOptions, StartLocation,
    StartPosition as ClientStartPosition,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use crate::config::{EventHubsSourceConfig, StartPosition};
use crate::connectors::eventhubs::connection::{self, Connection};
use crate::event::{Event, PartitionId, Position, now_millis};
use crate::source::{PartitionReader, PartitionStart, ReadOutcome, SourceError, SourceErrorKind};

/// The property that carries an event's Event Hubs offset (its sequence number is the position).
pub const OFFSET_PROPERTY: &str = "x-opt-offset";

/// Events queued per message between the receiving task and the reader.
const CHUNK_EVENTS: usize = 512;
/// Chunks queued ahead of the partition worker (with the client's prefetch, the read-ahead).
const QUEUED_CHUNKS: usize = 8;
/// Consecutive failed connection attempts before the reader reports an error to its worker.
const MAX_FAILED_ATTEMPTS: u32 = 12;
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a receiver waiting for events checks that the partition has none newer.
const STALL_CHECK: Duration = Duration::from_secs(5);
/// Marks a lag figure that is not known yet.
const UNKNOWN: i64 = i64::MIN;

/// What every reader of one source shares.
#[derive(Debug)]
pub(super) struct ReaderSettings {
    pub(super) source_name: String,
    pub(super) connection: Connection,
    pub(super) config: EventHubsSourceConfig,
    pub(super) properties: PropertiesClient,
}

/// The connection that reads partition properties for every reader of a source.
///
/// Management requests run on a connection of their own: on a receiver's connection, a
/// management request in flight while the client recovers the connection was seen to hold up
/// the receiver's re-attach until the request timed out.
pub(super) struct PropertiesClient {
    connection: Connection,
    consumer_group: String,
    client: tokio::sync::Mutex<Option<ConsumerClient>>,
}

impl std::fmt::Debug for PropertiesClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropertiesClient")
            .field("connection", &self.connection)
            .field("consumer_group", &self.consumer_group)
            .finish_non_exhaustive()
    }
}

/// How long one partition-properties read may take.
const PROPERTIES_TIMEOUT: Duration = Duration::from_secs(10);

impl PropertiesClient {
    pub(super) fn new(connection: Connection, consumer_group: String) -> Self {
        PropertiesClient {
            connection,
            consumer_group,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The first and last sequence numbers of partition `id`; a failure drops the connection,
    /// and the next read opens another.
    async fn bounds(&self, id: &str) -> Result<(i64, i64), String> {
        let mut client = self.client.lock().await;
        if client.is_none() {
            *client = Some(self.connection.consumer(&self.consumer_group).await?);
        }
        let Some(open) = client.as_ref() else {
            return Err("no connection".to_owned());
        };
        let read = tokio::time::timeout(PROPERTIES_TIMEOUT, open.get_partition_properties(id))
            .await
            .map_err(|_| format!("no answer within {PROPERTIES_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match read {
            Ok(properties) => Ok((
                properties.beginning_sequence_number,
                properties.last_enqueued_sequence_number,
            )),
            Err(reason) => {
                if let Some(failed) = client.take() {
                    tokio::spawn(connection::close_consumer(failed));
                }
                Err(reason)
            }
        }
    }
}

/// The partition's first and last sequence numbers, as the last partition-properties read said.
#[derive(Debug)]
struct PartitionBounds {
    begin: AtomicI64,
    last: AtomicI64,
}

/// Reads one partition from the queue its receiving task fills.
#[derive(Debug)]
pub(super) struct EventHubsReader {
    partition: PartitionId,
    settings: Arc<ReaderSettings>,
    queue: mpsc::Receiver<Result<Vec<Event>, SourceError>>,
    pending: VecDeque<Event>,
    /// The last position handed to the worker (or the checkpoint's, before the first).
    delivered: Option<Position>,
    /// The offset of the event at `delivered`, when it was read here.
    delivered_offset: Option<String>,
    bounds: Arc<PartitionBounds>,
    failed: bool,
    /// The error that ended the receiving task, until it is reported.
    failure: Option<SourceError>,
    refreshing: tokio::task::JoinHandle<()>,
}

impl Drop for EventHubsReader {
    fn drop(&mut self) {
        // The receiving task sees its queue close and stops by itself.
        self.refreshing.abort();
    }
}

impl EventHubsReader {
    /// Starts the receiving task of partition `id` and returns its reader.
    pub(super) fn open(
        settings: Arc<ReaderSettings>,
        start: PartitionStart,
        id: String,
    ) -> EventHubsReader {
        let (sender, queue) = mpsc::channel(QUEUED_CHUNKS);
        let bounds = Arc::new(PartitionBounds {
            begin: AtomicI64::new(UNKNOWN),
            last: AtomicI64::new(UNKNOWN),
        });
        let refreshing = tokio::spawn(refresh_bounds(settings.clone(), id.clone(), bounds.clone()));
        let receiving = Receiving {
            settings: settings.clone(),
            partition: start.partition,
            id,
            resume: start.after.map_or(Resume::Configured, Resume::After),
            sender,
            bounds: bounds.clone(),
        };
        tokio::spawn(receiving.run());
        EventHubsReader {
            partition: start.partition,
            settings,
            queue,
            pending: VecDeque::new(),
            delivered: start.after,
            delivered_offset: None,
            bounds,
            failed: false,
            failure: None,
            refreshing,
        }
    }

    fn take(&mut self, max: usize) -> Vec<Event> {
        let count = self.pending.len().min(max.max(1));
        let events: Vec<Event> = self.pending.drain(..count).collect();
        if let Some(last) = events.last() {
            self.delivered = Some(last.position);
            self.delivered_offset = last
                .properties
                .iter()
                .find(|(name, _)| name == OFFSET_PROPERTY)
                .map(|(_, offset)| offset.clone());
        }
        events
    }
}

#[async_trait]
impl PartitionReader for EventHubsReader {
    fn partition(&self) -> PartitionId {
        self.partition
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<ReadOutcome, SourceError> {
        if self.pending.is_empty() {
            if let Some(error) = self.failure.take() {
                return Err(error);
            }
            if self.failed {
                return Err(self.read_error("the reader already failed"));
            }
            match tokio::time::timeout(wait, self.queue.recv()).await {
                Err(_) if self.settings.config.stop_at_end && self.at_end() => {
                    return Ok(ReadOutcome::End);
                }
                Err(_) => return Ok(ReadOutcome::Idle),
                Ok(None) => {
                    self.failed = true;
                    return Err(self.read_error("the receiving task stopped"));
                }
                Ok(Some(Err(error))) => {
                    self.failed = true;
                    return Err(error);
                }
                Ok(Some(Ok(chunk))) => self.pending.extend(chunk),
            }
        }
        // Take what is already queued, without waiting, up to `max`.
        while self.pending.len() < max {
            match self.queue.try_recv() {
                Ok(Ok(chunk)) => self.pending.extend(chunk),
                Ok(Err(error)) => {
                    // Deliver what came before the error; the next call reports it.
                    self.failed = true;
                    self.failure = Some(error);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(ReadOutcome::Events(self.take(max)))
    }

    fn lag(&self) -> Option<u64> {
        let last = self.bounds.last.load(Ordering::Acquire);
        if last == UNKNOWN {
            return None;
        }
        let lag = match self.delivered {
            Some(position) => last - i64::try_from(position).unwrap_or(i64::MAX),
            None => match self.settings.config.start_position {
                StartPosition::Earliest => {
                    let begin = self.bounds.begin.load(Ordering::Acquire);
                    if begin == UNKNOWN {
                        return None;
                    }
                    last - begin + 1
                }
                StartPosition::Latest => 0,
                // The first event to read is known by number: count from it (or from the
                // partition's beginning, when older events have expired).
                StartPosition::SequenceNumber(start) => {
                    let first = if self.settings.config.start_inclusive {
                        start
                    } else {
                        start.saturating_add(1)
                    };
                    let begin = self.bounds.begin.load(Ordering::Acquire);
                    let first = if begin == UNKNOWN {
                        first
                    } else {
                        first.max(begin)
                    };
                    last.saturating_sub(first).saturating_add(1)
                }
                // An offset or a time does not say how many events follow it: unknown until
                // the first event is read (the README says so).
                StartPosition::Offset(_) | StartPosition::EnqueuedTime(_) => return None,
            },
        };
        Some(u64::try_from(lag).unwrap_or(0))
    }

    fn source_offset(&self, position: Position) -> Option<String> {
        if self.delivered == Some(position) {
            self.delivered_offset.clone()
        } else {
            None
        }
    }
}

impl EventHubsReader {
    /// Whether everything up to the last sequence number the partition properties reported was
    /// delivered (an empty partition counts as read).
    fn at_end(&self) -> bool {
        let last = self.bounds.last.load(Ordering::Acquire);
        let begin = self.bounds.begin.load(Ordering::Acquire);
        if last == UNKNOWN {
            return false;
        }
        match self.delivered {
            Some(position) => i64::try_from(position).is_ok_and(|p| p >= last),
            // Service convention: an empty partition reports a last sequence number below its
            // beginning one.
            None => begin != UNKNOWN && last < begin,
        }
    }

    fn read_error(&self, reason: &str) -> SourceError {
        SourceError::read(
            SourceErrorKind::Unavailable,
            &self.settings.source_name,
            self.partition,
            reason,
        )
    }
}

/// Where the next receiver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Where the configuration says (no event read or checkpointed yet).
    Configured,
    /// After this sequence number.
    After(Position),
}

/// How one connection's receiving ended.
#[derive(Debug)]
enum Ended {
    /// The reader was dropped: stop.
    ReaderGone,
    /// A failure nothing will fix: report it and stop.
    Fatal(SourceErrorKind, String),
    /// A reader with a higher owner level took the partition: report it and stop (the worker
    /// gives the partition up; the process goes on).
    Lost(String),
    /// A failure a new connection may fix.
    Reconnect {
        reason: String,
        /// Whether events were queued on this connection.
        progressed: bool,
    },
}

/// The receiving task of one partition.
struct Receiving {
    settings: Arc<ReaderSettings>,
    partition: PartitionId,
    id: String,
    resume: Resume,
    sender: mpsc::Sender<Result<Vec<Event>, SourceError>>,
    bounds: Arc<PartitionBounds>,
}

impl Receiving {
    /// Whether the partition properties show events after the last one queued (a receiver
    /// waiting for events then is stalled, not idle).
    fn behind(&self) -> bool {
        let Resume::After(last) = self.resume else {
            return false;
        };
        let end = self.bounds.last.load(Ordering::Acquire);
        end != UNKNOWN && i64::try_from(last).is_ok_and(|last| end > last)
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let reason = match self.receive_on_new_connection().await {
                Ended::ReaderGone => return,
                Ended::Fatal(kind, reason) => {
                    self.fail_as(kind, reason).await;
                    return;
                }
                Ended::Lost(reason) => {
                    self.lose(reason).await;
                    return;
                }
                Ended::Reconnect { reason, progressed } => {
                    failures = if progressed { 1 } else { failures + 1 };
                    reason
                }
            };
            if failures >= MAX_FAILED_ATTEMPTS {
                self.fail(format!("{reason} ({failures} attempts in a row)"))
                    .await;
                return;
            }
            let backoff = Duration::from_millis(100u64 << failures.min(7)).min(MAX_BACKOFF);
            tracing::warn!(
                source = %self.settings.source_name, partition = self.partition, %reason,
                resume = ?self.resume, retry_in_ms = backoff.as_millis() as u64,
                "Event Hubs receiver lost; reconnecting"
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.sender.closed() => return,
            }
        }
    }

    async fn fail(&self, reason: String) {
        self.fail_as(SourceErrorKind::Unavailable, reason).await;
    }

    async fn fail_as(&self, kind: SourceErrorKind, reason: String) {
        tracing::error!(source = %self.settings.source_name, partition = self.partition, %reason, "Event Hubs partition failed");
        let _ = self
            .sender
            .send(Err(SourceError::read(
                kind,
                &self.settings.source_name,
                self.partition,
                reason,
            )))
            .await;
    }

    async fn lose(&self, reason: String) {
        tracing::warn!(
            source = %self.settings.source_name, partition = self.partition,
            new_owner_level = ?new_owner_level(&reason), %reason,
            "Event Hubs partition taken by a reader with a higher owner level; giving it up"
        );
        let _ = self
            .sender
            .send(Err(SourceError::Lost {
                source_name: self.settings.source_name.clone(),
                partition: self.partition,
                reason,
            }))
            .await;
    }

    /// Where to start receiving; a position that cannot be one is `Unreadable` (a checkpoint's)
    /// or `Misconfigured` (the configuration's).
    fn start_position(&self) -> Result<ClientStartPosition, (SourceErrorKind, String)> {
        let config = &self.settings.config;
        let inclusive = config.start_inclusive;
        Ok(match (self.resume, &config.start_position) {
            (Resume::After(position), _) => ClientStartPosition {
                location: StartLocation::SequenceNumber(i64::try_from(position).map_err(|_| {
                    (
                        SourceErrorKind::Unreadable,
                        format!("position {position} is not a sequence number"),
                    )
                })?),
                inclusive: false,
            },
            (Resume::Configured, StartPosition::Earliest) => ClientStartPosition {
                location: StartLocation::Earliest,
                inclusive: false,
            },
            (Resume::Configured, StartPosition::Latest) => ClientStartPosition {
                location: StartLocation::Latest,
                inclusive: false,
            },
            (Resume::Configured, StartPosition::SequenceNumber(n)) => ClientStartPosition {
                location: StartLocation::SequenceNumber(*n),
                inclusive,
            },
            (Resume::Configured, StartPosition::Offset(offset)) => ClientStartPosition {
                location: StartLocation::Offset(offset.clone()),
                inclusive,
            },
            (Resume::Configured, StartPosition::EnqueuedTime(time)) => {
                let time = chrono::DateTime::parse_from_rfc3339(time).map_err(|e| {
                    (
                        SourceErrorKind::Misconfigured,
                        format!("start_position.enqueued_time `{time}`: {e}"),
                    )
                })?;
                let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
                ClientStartPosition {
                    location: StartLocation::EnqueuedTime(
                        UNIX_EPOCH + Duration::from_millis(millis),
                    ),
                    inclusive,
                }
            }
        })
    }

    /// Opens a connection and a receiver where `resume` says, queues events until something
    /// fails, and closes both.
    async fn receive_on_new_connection(&mut self) -> Ended {
        let config = &self.settings.config;
        let client = match self
            .settings
            .connection
            .consumer(&config.consumer_group)
            .await
        {
            Ok(client) => client,
            Err(reason) => {
                return Ended::Reconnect {
                    reason,
                    progressed: false,
                };
            }
        };
        let ended = self.receive_with(&client).await;
        connection::close_consumer(client).await;
        ended
    }

    async fn receive_with(&mut self, client: &ConsumerClient) -> Ended {
        let config = &self.settings.config;
        let start = match self.start_position() {
            Ok(start) => start,
            Err((kind, reason)) => return Ended::Fatal(kind, reason),
        };
        let options = OpenReceiverOptions {
            owner_level: config.owner_level,
            prefetch: Some(config.prefetch),
            start_position: Some(start.clone()),
            receive_timeout: None,
        };
        let receiver = match client
            .open_receiver_on_partition(self.id.clone(), Some(options))
            .await
        {
            Ok(receiver) => receiver,
            Err(e) if matches!(e.kind, ErrorKind::ConsumerDisconnected(_)) => {
                return self.classify(&e, false);
            }
            Err(e) => {
                return Ended::Reconnect {
                    reason: format!("cannot open a receiver on partition {}: {e}", self.id),
                    progressed: false,
                };
            }
        };
        tracing::debug!(source = %self.settings.source_name, partition = self.partition, ?start, "Event Hubs receiver opening");
        let ended = {
            let mut stream = receiver.stream_events();
            let mut progressed = false;
            // The client re-attaches a lost link by itself, but from the position the receiver
            // was opened with; sequence numbers go up by one, so any other step means the link
            // restarted elsewhere, and this receiver is replaced by one opened after the last
            // queued event. The first event of a new receiver may follow a gap (expired events).
            let mut fresh = true;
            loop {
                // A link can die without the client noticing (seen after dropped connections):
                // waiting while the partition properties show newer events, for two checks in a
                // row, counts as a lost receiver.
                let mut stalled_checks = 0;
                let first = loop {
                    tokio::select! {
                        item = stream.next() => break Ok(item),
                        _ = self.sender.closed() => break Err(Ended::ReaderGone),
                        () = tokio::time::sleep(STALL_CHECK) => {
                            stalled_checks = if self.behind() { stalled_checks + 1 } else { 0 };
                            if stalled_checks >= 2 {
                                break Err(Ended::Reconnect {
                                    reason: format!(
                                        "no event for {:?} although the partition holds newer ones",
                                        STALL_CHECK * 2
                                    ),
                                    progressed,
                                });
                            }
                        }
                    }
                };
                let first = match first {
                    Ok(item) => item,
                    Err(ended) => break ended,
                };
                let mut items = vec![first];
                while items.len() < CHUNK_EVENTS {
                    match stream.next().now_or_never() {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                let mut chunk = Vec::with_capacity(items.len());
                let mut stop = None;
                for item in items {
                    let received = match item {
                        Some(Ok(received)) => received,
                        Some(Err(error)) => {
                            stop = Some(self.classify(&error, progressed || !chunk.is_empty()));
                            break;
                        }
                        None => {
                            stop = Some(Ended::Reconnect {
                                reason: "the event stream ended".to_owned(),
                                progressed: progressed || !chunk.is_empty(),
                            });
                            break;
                        }
                    };
                    let Some(sequence) = received
                        .sequence_number()
                        .and_then(|n| Position::try_from(n).ok())
                    else {
                        tracing::warn!(source = %self.settings.source_name, partition = self.partition, "event without a sequence number skipped");
                        continue;
                    };
                    if let Resume::After(last) = self.resume {
                        let expected = last.saturating_add(1);
                        if sequence <= last && fresh {
                            // Already queued: the new receiver started a little early.
                            continue;
                        }
                        if !fresh && sequence != expected {
                            stop = Some(Ended::Reconnect {
                                reason: format!(
                                    "the link restarted at sequence number {sequence} after {last}"
                                ),
                                progressed: progressed || !chunk.is_empty(),
                            });
                            break;
                        }
                    }
                    fresh = false;
                    chunk.push(to_event(&received, self.partition, sequence));
                    self.resume = Resume::After(sequence);
                }
                if !chunk.is_empty() {
                    if self.sender.send(Ok(chunk)).await.is_err() {
                        break Ended::ReaderGone;
                    }
                    progressed = true;
                }
                if let Some(stop) = stop {
                    break stop;
                }
            }
        };
        let _ = tokio::time::timeout(connection::CLOSE_TIMEOUT, receiver.close()).await;
        ended
    }

    fn classify(&self, error: &EventHubsError, progressed: bool) -> Ended {
        if matches!(error.kind, ErrorKind::ConsumerDisconnected(_)) {
            return Ended::Lost(format!(
                "a reader of consumer group `{}` with a higher owner level (epoch) holds it: {error}",
                self.settings.config.consumer_group
            ));
        }
        Ended::Reconnect {
            reason: format!("receive failed: {error}"),
            progressed,
        }
    }
}

/// The owner level (epoch) of the reader that took a partition, as the service's message says it:
/// "New receiver ... with higher epoch of '5' is created hence current receiver ... is getting
/// disconnected" (or "... created with epoch of '5' ..." when an attach is refused).
fn new_owner_level(message: &str) -> Option<i64> {
    let (_, after) = message.split_once("epoch of '")?;
    after.split('\'').next()?.parse().ok()
}

/// Refreshes the partition's first and last sequence numbers, for the consumer lag.
async fn refresh_bounds(settings: Arc<ReaderSettings>, id: String, bounds: Arc<PartitionBounds>) {
    loop {
        match settings.properties.bounds(&id).await {
            Ok((begin, last)) => {
                bounds.begin.store(begin, Ordering::Release);
                bounds.last.store(last, Ordering::Release);
            }
            Err(reason) => {
                tracing::debug!(source = %settings.source_name, partition = %id, %reason, "partition properties not read");
            }
        }
        tokio::time::sleep(settings.config.lag_interval.get()).await;
    }
}

/// A received event as Weir's [`Event`]: position = sequence number, key = partition key,
/// application properties as text, the offset as property `x-opt-offset`.
fn to_event(received: &ReceivedEventData, partition: PartitionId, sequence: Position) -> Event {
    let data = received.event_data();
    let mut properties: Vec<(String, String)> = data
        .properties()
        .map(|properties| {
            properties
                .iter()
                .map(|(name, value)| (name.clone(), property_text(value)))
                .collect()
        })
        .unwrap_or_default();
    // Application properties come from a map: give them a stable order.
    properties.sort();
    if let Some(offset) = received.offset() {
        properties.push((OFFSET_PROPERTY.to_owned(), offset.clone()));
    }
    Event {
        partition,
        position: sequence,
        source: crate::event::no_source(),
        key: received
            .partition_key()
            .as_ref()
            .map(|key| Bytes::copy_from_slice(key.as_bytes())),
        event_time: None,
        enqueued_time: received
            .enqueued_time()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .and_then(|since| i64::try_from(since.as_millis()).ok())
            .unwrap_or_else(now_millis),
        properties,
        body: data.body().map(Bytes::copy_from_slice).unwrap_or_default(),
    }
}

/// An application property value as text.
fn property_text(value: &AmqpSimpleValue) -> String {
    match value {
        AmqpSimpleValue::String(text) => text.clone(),
        AmqpSimpleValue::Symbol(symbol) => String::from(symbol),
        AmqpSimpleValue::Boolean(b) => b.to_string(),
        AmqpSimpleValue::Byte(n) => n.to_string(),
        AmqpSimpleValue::UByte(n) => n.to_string(),
        AmqpSimpleValue::Short(n) => n.to_string(),
        AmqpSimpleValue::UShort(n) => n.to_string(),
        AmqpSimpleValue::Int(n) => n.to_string(),
        AmqpSimpleValue::UInt(n) => n.to_string(),
        AmqpSimpleValue::Long(n) => n.to_string(),
        AmqpSimpleValue::ULong(n) => n.to_string(),
        AmqpSimpleValue::Float(n) => n.to_string(),
        AmqpSimpleValue::Double(n) => n.to_string(),
        AmqpSimpleValue::Char(c) => c.to_string(),
        AmqpSimpleValue::Uuid(uuid) => uuid.to_string(),
        AmqpSimpleValue::TimeStamp(time) => time
            .0
            .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| {
                chrono::DateTime::from_timestamp_millis(i64::try_from(d.as_millis()).ok()?)
            })
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default(),
        AmqpSimpleValue::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::new_owner_level;

    #[test]
    fn the_new_owner_level_is_read_from_the_services_message() {
        assert_eq!(
            new_owner_level(
                "New receiver 'nil' with higher epoch of '5' is created hence current receiver 'nil' with epoch '0' is getting disconnected."
            ),
            Some(5)
        );
        assert_eq!(
            new_owner_level(
                "At least one receiver for the endpoint is created with epoch of '12', and so non-epoch or lower epoch receiver is not allowed"
            ),
            Some(12)
        );
        assert_eq!(new_owner_level("link stolen"), None);
    }
}
