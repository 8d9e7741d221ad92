//! The unit of data that flows from sources through stages to sinks.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;

/// Index of a partition within a source (0-based).
pub type PartitionId = u32;

/// Where an event sits in its partition: an offset or sequence number that only increases.
///
/// Positions are what checkpoints record and what Delta transaction versions are derived from, so
/// a source must hand out the same position to the same event when it is replayed.
pub type Position = u64;

/// One event read from a source.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The partition the event belongs to.
    pub partition: PartitionId,
    /// The name of the source the event was read from (the pipeline's name for it in the
    /// configuration); set by the partition worker when it reads the event, empty before.
    pub source: Arc<str>,
    /// Its position in that partition.
    pub position: Position,
    /// The partition key, when the source has one.
    pub key: Option<Bytes>,
    /// Event time in milliseconds since the Unix epoch, once known (see [`crate::pipeline`]).
    pub event_time: Option<i64>,
    /// When the event entered Weir or its broker, in milliseconds since the Unix epoch.
    pub enqueued_time: i64,
    /// Application properties (Event Hubs properties, Kafka headers, HTTP headers).
    pub properties: Vec<(String, String)>,
    /// The payload, usually one JSON object.
    pub body: Bytes,
}

impl Event {
    /// An event with only a body and a position; the rest is filled with defaults.
    pub fn new(partition: PartitionId, position: Position, body: impl Into<Bytes>) -> Self {
        Event {
            partition,
            source: no_source(),
            position,
            key: None,
            event_time: None,
            enqueued_time: now_millis(),
            properties: Vec::new(),
            body: body.into(),
        }
    }

    /// The time used for windows and rules: the event time, or the enqueued time without one.
    pub fn time(&self) -> i64 {
        self.event_time.unwrap_or(self.enqueued_time)
    }
}

/// The source name of an event not read from a source yet (empty), shared rather than allocated
/// per event.
pub fn no_source() -> Arc<str> {
    static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The partition a key belongs to, stable across processes and releases (FNV-1a, 64 bit).
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let partitions = u64::from(partitions.max(1));
    // The remainder is below `partitions`, which came from a u32.
    u32::try_from(hash % partitions).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_for_key_is_stable_and_in_range() {
        // Fixed expectations: a change here re-partitions every user's data.
        // (Computed independently: FNV-1a 64 of the key, modulo the partition count.)
        assert_eq!(partition_for_key(b"device-001", 4), 1);
        assert_eq!(partition_for_key(b"device-002", 4), 0);
        assert_eq!(partition_for_key(b"a", 8), 4);
        let spread: std::collections::BTreeSet<_> = (0..100)
            .map(|i| partition_for_key(format!("device-{i:03}").as_bytes(), 4))
            .collect();
        assert_eq!(
            spread.len(),
            4,
            "100 keys should reach every one of 4 partitions"
        );
        assert!((0..1000).all(|i| partition_for_key(&[i as u8, 7], 3) < 3));
        assert_eq!(partition_for_key(b"", 1), 0);
    }
}

/// Who reads a stream, as the Azure SDKs name it in their checkpoint store: the blob layout is
/// `<namespace>/<hub>/<consumer group>/{checkpoint,ownership}/<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerScope {
    /// The fully qualified namespace (`myns.servicebus.windows.net`) or, for Kafka, the cluster.
    pub namespace: String,
    /// The Event Hub or Kafka topic.
    pub hub: String,
    /// The consumer group.
    pub consumer_group: String,
}

impl ConsumerScope {
    /// The scope of `pipeline` reading `source`, a source that is no shared stream (a file, HTTP,
    /// a generator): in Weir's own namespace, the source's name as the stream.
    pub fn local(source: &str, pipeline: &str) -> Self {
        ConsumerScope {
            namespace: "weir".to_owned(),
            hub: source.to_owned(),
            consumer_group: pipeline.to_owned(),
        }
    }

    /// The blob-name prefix of this scope: namespace, hub and group folded to ASCII lower case, as
    /// the Azure SDKs do (Event Hubs treats those names case-insensitively).
    pub fn prefix(&self) -> String {
        format!(
            "{}/{}/{}",
            self.namespace.to_ascii_lowercase(),
            self.hub.to_ascii_lowercase(),
            self.consumer_group.to_ascii_lowercase()
        )
    }
}
