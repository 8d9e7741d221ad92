//! The hubs' partitions: append-only logs of events in memory, each event numbered by sequence
//! number and byte offset and stamped with its enqueued time, as Event Hubs does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fe2o3_amqp::types::messaging::{Body, Message, MessageAnnotations, annotations::OwnedKey};
use fe2o3_amqp::types::primitives::{Symbol, Timestamp, Value};
use tokio::sync::watch;

use crate::selector::{SelectorField, StartFilter};

/// The message annotation names Event Hubs stamps on every event.
pub(crate) mod annotation {
    pub(crate) const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
    pub(crate) const OFFSET: &str = "x-opt-offset";
    pub(crate) const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
    pub(crate) const PARTITION_KEY: &str = "x-opt-partition-key";
}

/// One event as the endpoint stored it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Sequence number in its partition, from 0.
    pub sequence_number: i64,
    /// Byte offset in its partition (the sum of the encoded sizes of the events before it).
    pub offset: i64,
    /// When the endpoint enqueued it, in milliseconds since the Unix epoch.
    pub enqueued_time: i64,
    /// The partition key it was sent with.
    pub partition_key: Option<String>,
    /// The message as receivers get it, with the annotations above.
    pub message: Message<Body<Value>>,
}

impl StoredEvent {
    /// The body bytes (the first data section), or the text of an `amqp-value` string body.
    pub fn body(&self) -> Vec<u8> {
        match &self.message.body {
            Body::Data(batch) => batch
                .iter()
                .next()
                .map(|d| d.0.to_vec())
                .unwrap_or_default(),
            Body::Value(value) => match &value.0 {
                Value::String(text) => text.clone().into_bytes(),
                Value::Binary(bytes) => bytes.to_vec(),
                other => format!("{other:?}").into_bytes(),
            },
            _ => Vec::new(),
        }
    }

    /// The application properties as text (string values as they are, others debug-printed).
    pub fn properties(&self) -> Vec<(String, String)> {
        use fe2o3_amqp::types::primitives::SimpleValue;
        self.message
            .application_properties
            .as_ref()
            .map(|props| {
                props
                    .0
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            SimpleValue::String(s) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Message annotation `name` as receivers get it, as text (`x-opt-offset` is a string there;
    /// a number is printed).
    pub fn annotation(&self, name: &str) -> Option<String> {
        message_annotation(&self.message, name).map(|value| match value {
            Value::String(text) => text.clone(),
            Value::Long(n) => n.to_string(),
            other => format!("{other:?}"),
        })
    }

    /// The message id, when it is a string.
    pub fn message_id(&self) -> Option<String> {
        use fe2o3_amqp::types::messaging::MessageId;
        match self.message.properties.as_ref()?.message_id.as_ref()? {
            MessageId::String(id) => Some(id.clone()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// What a partition reports through `$management`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// First sequence number still held (always 0: nothing expires here).
    pub begin_sequence_number: i64,
    /// Last sequence number enqueued, -1 when empty.
    pub last_sequence_number: i64,
    /// Offset of the last event, -1 when empty.
    pub last_offset: i64,
    /// Enqueued time of the last event (ms), 0 when empty.
    pub last_enqueued_time: i64,
}

/// One partition's log.
#[derive(Debug)]
pub(crate) struct Partition {
    log: Mutex<Vec<Arc<StoredEvent>>>,
    next_offset: Mutex<i64>,
    /// The number of events in the log, for receivers waiting for more.
    length: watch::Sender<usize>,
}

impl Partition {
    fn new() -> Self {
        Partition {
            log: Mutex::new(Vec::new()),
            next_offset: Mutex::new(0),
            length: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<StoredEvent>>> {
        // A panic while holding the lock cannot leave the log half-appended (push is the last
        // step), so a poisoned lock is still consistent.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends messages (one producer transfer) and returns their sequence numbers.
    pub(crate) fn append(
        &self,
        messages: Vec<Message<Body<Value>>>,
        partition_key: Option<&str>,
        now_ms: i64,
    ) -> Vec<i64> {
        let mut log = self.lock();
        let mut next_offset = self.next_offset.lock().unwrap_or_else(|e| e.into_inner());
        // Enqueued times never go backwards within a partition, as on the service.
        let time = log
            .last()
            .map_or(now_ms, |last| last.enqueued_time.max(now_ms));
        let mut numbers = Vec::with_capacity(messages.len());
        for mut message in messages {
            let sequence_number = i64::try_from(log.len()).unwrap_or(i64::MAX);
            let offset = *next_offset;
            let key = partition_key.map(str::to_owned).or_else(|| {
                message_annotation(&message, annotation::PARTITION_KEY).and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
            });
            let annotations = message
                .message_annotations
                .get_or_insert_with(|| MessageAnnotations(Default::default()));
            let mut put = |name: &str, value: Value| {
                annotations
                    .0
                    .insert(OwnedKey::Symbol(Symbol::from(name)), value);
            };
            put(annotation::SEQUENCE_NUMBER, Value::Long(sequence_number));
            put(annotation::OFFSET, Value::String(offset.to_string()));
            put(
                annotation::ENQUEUED_TIME,
                Value::Timestamp(Timestamp::from_milliseconds(time)),
            );
            if let Some(key) = &key {
                put(annotation::PARTITION_KEY, Value::String(key.clone()));
            }
            let size = encoded_size(&message);
            *next_offset += i64::try_from(size).unwrap_or(i64::MAX).max(1);
            log.push(Arc::new(StoredEvent {
                sequence_number,
                offset,
                enqueued_time: time,
                partition_key: key,
                message,
            }));
            numbers.push(sequence_number);
        }
        let length = log.len();
        drop(log);
        drop(next_offset);
        self.length.send_replace(length);
        numbers
    }

    /// The index of the first event a receiver with `filter` gets.
    pub(crate) fn start_index(&self, filter: &StartFilter) -> usize {
        let log = self.lock();
        match filter {
            StartFilter::Earliest => 0,
            StartFilter::Latest => log.len(),
            StartFilter::From {
                field,
                value,
                inclusive,
            } => {
                let key = |event: &StoredEvent| match field {
                    SelectorField::Offset => event.offset,
                    SelectorField::SequenceNumber => event.sequence_number,
                    SelectorField::EnqueuedTime => event.enqueued_time,
                };
                // Every key increases along the log (enqueued times never decrease).
                log.partition_point(|event| {
                    if *inclusive {
                        key(event) < *value
                    } else {
                        key(event) <= *value
                    }
                })
            }
        }
    }

    /// Up to `max` events from `index`.
    pub(crate) fn read(&self, index: usize, max: usize) -> Vec<Arc<StoredEvent>> {
        let log = self.lock();
        log.iter().skip(index).take(max).cloned().collect()
    }

    /// Every event, in order.
    pub(crate) fn all(&self) -> Vec<Arc<StoredEvent>> {
        self.lock().clone()
    }

    /// Watches the number of events.
    pub(crate) fn watch_length(&self) -> watch::Receiver<usize> {
        self.length.subscribe()
    }

    pub(crate) fn state(&self) -> PartitionState {
        let log = self.lock();
        match log.last() {
            Some(last) => PartitionState {
                begin_sequence_number: 0,
                last_sequence_number: last.sequence_number,
                last_offset: last.offset,
                last_enqueued_time: last.enqueued_time,
            },
            None => PartitionState {
                begin_sequence_number: 0,
                last_sequence_number: -1,
                last_offset: -1,
                last_enqueued_time: 0,
            },
        }
    }
}

/// An Event Hub: its partitions and when it was created.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) name: String,
    pub(crate) created_at: i64,
    pub(crate) partitions: Vec<Partition>,
    round_robin: AtomicUsize,
}

impl Hub {
    pub(crate) fn new(name: &str, partitions: u32, created_at: i64) -> Self {
        Hub {
            name: name.to_owned(),
            created_at,
            partitions: (0..partitions.max(1)).map(|_| Partition::new()).collect(),
            round_robin: AtomicUsize::new(0),
        }
    }

    /// The partition an event sent to the hub goes to: its key's hash, or the next one in turn.
    pub(crate) fn route(&self, partition_key: Option<&str>) -> usize {
        let count = self.partitions.len().max(1);
        match partition_key {
            // FNV-1a: any stable hash will do; the service's own is not documented.
            Some(key) => {
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for byte in key.as_bytes() {
                    hash ^= u64::from(*byte);
                    hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                }
                usize::try_from(hash % count as u64).unwrap_or(0)
            }
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % count,
        }
    }
}

/// Every hub, by lower-case name (Event Hubs names are case-insensitive).
#[derive(Debug, Default)]
pub(crate) struct Hubs {
    hubs: HashMap<String, Arc<Hub>>,
}

impl Hubs {
    pub(crate) fn insert(&mut self, hub: Hub) {
        self.hubs
            .insert(hub.name.to_ascii_lowercase(), Arc::new(hub));
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Hub>> {
        self.hubs.get(&name.to_ascii_lowercase()).cloned()
    }
}

/// The value of message annotation `name`, if present.
pub(crate) fn message_annotation<'m, B>(message: &'m Message<B>, name: &str) -> Option<&'m Value> {
    message
        .message_annotations
        .as_ref()?
        .0
        .iter()
        .find(|(key, _)| matches!(key, OwnedKey::Symbol(s) if s.as_str() == name))
        .map(|(_, value)| value)
}

fn encoded_size(message: &Message<Body<Value>>) -> usize {
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    serde_amqp::to_vec(&Serializable(message)).map_or(0, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::Data;

    fn message(body: &str) -> Message<Body<Value>> {
        Message::builder()
            .body(Body::Data(
                vec![Data(body.as_bytes().to_vec().into())].into(),
            ))
            .build()
    }

    #[test]
    fn events_are_numbered_and_start_filters_find_them() {
        let partition = Partition::new();
        let first = partition.append(vec![message("a"), message("bb")], None, 1_000);
        let second = partition.append(vec![message("ccc")], Some("k"), 900);
        assert_eq!(first, [0, 1]);
        assert_eq!(second, [2]);
        let events = partition.all();
        assert_eq!(events[0].offset, 0);
        assert!(events[1].offset > events[0].offset);
        assert!(events[2].offset > events[1].offset);
        // The clock went back: the enqueued time does not.
        assert_eq!(events[2].enqueued_time, 1_000);
        assert_eq!(events[2].partition_key.as_deref(), Some("k"));
        assert_eq!(
            message_annotation(&events[1].message, annotation::SEQUENCE_NUMBER),
            Some(&Value::Long(1))
        );

        let from = |field, value, inclusive| StartFilter::From {
            field,
            value,
            inclusive,
        };
        assert_eq!(partition.start_index(&StartFilter::Earliest), 0);
        assert_eq!(partition.start_index(&StartFilter::Latest), 3);
        assert_eq!(
            partition.start_index(&from(SelectorField::SequenceNumber, 1, false)),
            2
        );
        assert_eq!(
            partition.start_index(&from(SelectorField::SequenceNumber, 1, true)),
            1
        );
        let offset = events[1].offset;
        assert_eq!(
            partition.start_index(&from(SelectorField::Offset, offset, true)),
            1
        );
        assert_eq!(
            partition.start_index(&from(SelectorField::Offset, offset, false)),
            2
        );
        assert_eq!(
            partition.start_index(&from(SelectorField::EnqueuedTime, 999, false)),
            0
        );
        assert_eq!(
            partition.start_index(&from(SelectorField::EnqueuedTime, 1_000, false)),
            3
        );
        assert_eq!(partition.state().last_sequence_number, 2);
        assert_eq!(Partition::new().state().last_sequence_number, -1);
    }

    #[test]
    fn keys_always_reach_the_same_partition_and_keyless_events_rotate() {
        let hub = Hub::new("h", 4, 0);
        let device = hub.route(Some("device-7"));
        assert!((0..20).all(|_| hub.route(Some("device-7")) == device));
        let spread: std::collections::BTreeSet<usize> = (0..8).map(|_| hub.route(None)).collect();
        assert_eq!(spread.len(), 4);
    }
}
