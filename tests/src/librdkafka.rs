//! librdkafka, the client most Kafka users run, as an independent producer and consumer: the
//! `confluent-kafka` Python package (it ships librdkafka in its wheel), run with the project's
//! interpreter. The Kafka codec tests write topics with it in every codec and read Weir's sink
//! output back with it.

use std::collections::BTreeMap;

use serde_json::Value;

/// Every record batch codec Kafka defines, as `compression.type` and Weir's `compression` spell
/// them.
pub const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// The timestamp of the first produced event, in epoch milliseconds; event `i` is `i` seconds
/// later.
pub const BASE_TIMESTAMP_MS: i64 = 1_767_225_600_000;

const PRODUCER: &str = r#"
import json, sys
from confluent_kafka import Producer
broker, topic, codec, count, partitions, base = sys.argv[1:7]
count, partitions, base = int(count), int(partitions), int(base)
# Lingering groups records into batches of many records, so that the codec compresses them.
producer = Producer({"bootstrap.servers": broker, "compression.type": codec,
                     "linger.ms": 20, "batch.num.messages": 100, "acks": "all"})
failures = []
def delivered(err, msg):
    if err is not None:
        failures.append(str(err))
for i in range(count):
    producer.produce(topic, partition=i % partitions, key=f"device-{i % 7}",
                     value=json.dumps({"seq": i, "codec": codec}),
                     headers=[("source", b"librdkafka"), ("seq", str(i).encode()),
                              ("codec", codec.encode())],
                     timestamp=base + i * 1000, on_delivery=delivered)
    producer.poll(0)
left = producer.flush(30)
if left or failures:
    sys.exit(f"{left} records undelivered, failures: {failures[:3]}")
"#;

const CONSUMER: &str = r#"
import json, sys
from confluent_kafka import Consumer, TopicPartition, KafkaError
from confluent_kafka.admin import AdminClient
broker, topic = sys.argv[1:3]
partitions = AdminClient({"bootstrap.servers": broker}).list_topics(topic, timeout=10).topics[topic].partitions
consumer = Consumer({"bootstrap.servers": broker, "group.id": "weir-tests", "enable.auto.commit": False,
                     "enable.partition.eof": True, "auto.offset.reset": "earliest"})
consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
open_partitions = set(partitions)
while open_partitions:
    message = consumer.poll(10)
    if message is None:
        sys.exit(f"no record nor end within 10 s; partitions left: {sorted(open_partitions)}")
    if message.error():
        if message.error().code() == KafkaError._PARTITION_EOF:
            open_partitions.discard(message.partition())
            continue
        sys.exit(str(message.error()))
    print(json.dumps({
        "partition": message.partition(), "offset": message.offset(),
        "key": None if message.key() is None else message.key().decode(),
        "headers": {k: v.decode() for k, v in (message.headers() or [])},
        "timestamp": message.timestamp()[1], "value": message.value().decode(),
    }))
consumer.close()
"#;

/// Produces `count` JSON events `{"seq": i, "codec": codec}` to `topic` with librdkafka in
/// `codec`: event `i` goes to partition `i % partitions`, keyed `device-{i % 7}`, with headers
/// `source = librdkafka`, `seq = i` and `codec`, stamped [`BASE_TIMESTAMP_MS`] + `i` seconds.
pub fn produce(broker: &str, topic: &str, codec: &str, count: usize, partitions: i32) {
    let output = crate::python_command(PRODUCER)
        .args([
            broker,
            topic,
            codec,
            &count.to_string(),
            &partitions.to_string(),
            &BASE_TIMESTAMP_MS.to_string(),
        ])
        .output()
        .expect("run the librdkafka producer");
    assert!(
        output.status.success(),
        "the librdkafka producer failed on {topic} ({codec}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One record as librdkafka's consumer read it.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, as text.
    pub key: Option<String>,
    /// Headers, values as text.
    pub headers: BTreeMap<String, String>,
    /// Timestamp, epoch milliseconds.
    pub timestamp: i64,
    /// Value, as text.
    pub value: String,
}

/// Every record of `topic`, read from the start of each partition to its end by librdkafka's
/// consumer.
pub fn consume(broker: &str, topic: &str) -> Vec<Consumed> {
    let output = crate::python_command(CONSUMER)
        .args([broker, topic])
        .output()
        .expect("run the librdkafka consumer");
    assert!(
        output.status.success(),
        "the librdkafka consumer failed on {topic}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("a JSON line");
            Consumed {
                partition: record["partition"].as_i64().expect("partition") as i32,
                offset: record["offset"].as_i64().expect("offset"),
                key: record["key"].as_str().map(str::to_owned),
                headers: record["headers"]
                    .as_object()
                    .expect("headers")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
                timestamp: record["timestamp"].as_i64().expect("timestamp"),
                value: record["value"].as_str().expect("value").to_owned(),
            }
        })
        .collect()
}
