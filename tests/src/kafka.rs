//! A Kafka client for the tests, independent of Weir's connector: rskafka used directly to create
//! topics, produce the input and read outputs back.

use std::collections::BTreeMap;
use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

/// One record read back.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, as text.
    pub key: Option<String>,
    /// Value, as text.
    pub value: String,
    /// Headers, values as text.
    pub headers: BTreeMap<String, String>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(broker: &str) -> Client {
    ClientBuilder::new(vec![broker.to_owned()])
        .build()
        .await
        .expect("connect to the broker")
}

/// Creates `topic` with `partitions` partitions.
pub fn create_topic(broker: &str, topic: &str, partitions: i32) {
    runtime().block_on(async {
        let client = client(broker).await;
        client
            .controller_client()
            .expect("controller")
            .create_topic(topic, partitions, 1, 10_000)
            .await
            .expect("create topic");
        // Wait until the metadata shows every partition.
        for _ in 0..100 {
            let topics = client.list_topics().await.expect("list topics");
            if topics
                .iter()
                .any(|t| t.name == topic && t.partitions.len() == partitions as usize)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("topic {topic} did not appear");
    });
}

/// Produces `(partition, key, value)` records in order, in batches.
pub fn produce(broker: &str, topic: &str, records: &[(i32, String, String)]) {
    runtime().block_on(async {
        let client = client(broker).await;
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for (partition, key, value) in records {
            by_partition.entry(*partition).or_default().push(Record {
                key: Some(key.clone().into_bytes()),
                value: Some(value.clone().into_bytes()),
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            });
        }
        for (partition, records) in by_partition {
            let partition_client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            for chunk in records.chunks(500) {
                partition_client
                    .produce(chunk.to_vec(), Compression::NoCompression)
                    .await
                    .expect("produce");
            }
        }
    });
}

/// Every record of every partition of `topic`.
pub fn read_all(broker: &str, topic: &str) -> Vec<ReadRecord> {
    runtime().block_on(async {
        let client = client(broker).await;
        let topics = client.list_topics().await.expect("list topics");
        let partitions = topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for partition in partitions {
            let partition_client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            let end = partition_client
                .get_offset(OffsetAt::Latest)
                .await
                .expect("latest offset");
            let mut offset = partition_client
                .get_offset(OffsetAt::Earliest)
                .await
                .expect("earliest offset");
            while offset < end {
                let (records, _) = partition_client
                    .fetch_records(offset, 1..4_000_000, 500)
                    .await
                    .expect("fetch");
                for record in records {
                    if record.offset < offset {
                        continue;
                    }
                    offset = record.offset + 1;
                    out.push(ReadRecord {
                        partition,
                        offset: record.offset,
                        key: record
                            .record
                            .key
                            .map(|k| String::from_utf8_lossy(&k).into_owned()),
                        value: String::from_utf8_lossy(&record.record.value.unwrap_or_default())
                            .into_owned(),
                        headers: record
                            .record
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                            .collect(),
                    });
                }
            }
        }
        out
    });
}

/// The latest offset (end) of every partition of `topic`, summed.
pub fn total_records(broker: &str, topic: &str) -> i64 {
    runtime().block_on(async {
        let client = client(broker).await;
        let topics = client.list_topics().await.expect("list topics");
        let partitions = topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.clone())
            .unwrap_or_default();
        let mut total = 0;
        for partition in partitions {
            let partition_client = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            total += partition_client
                .get_offset(OffsetAt::Latest)
                .await
                .expect("latest offset");
        }
        total
    })
}
