//! Kafka topics as real producers write them, on the tansu broker: librdkafka (the client most
//! Kafka users run, from the `confluent-kafka` package) writes a topic in every codec Kafka
//! defines, with keys, headers and timestamps; one `weir run` reads them all (a pipeline per
//! codec) into files and into Kafka topics written in the same codec, which librdkafka reads
//! back. Faults that retrying cannot fix (a topic that does not exist, a record batch that cannot
//! be decoded) stop the run within seconds, naming the cause, or dead-letter the batch when so
//! configured: never the outage loop until `max_outage`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::kafka::create_topic;
use weir_tests::kafka_proxies::CorruptingProxy;
use weir_tests::librdkafka::{self, BASE_TIMESTAMP_MS, CODECS};
use weir_tests::servers::{KafkaBroker, free_port};
use weir_tests::{WeirProcess, plugin_path, read_jsonl_dir, run_to_completion};

/// Events per codec.
const EVENTS: usize = 300;
/// Partitions of every topic.
const PARTITIONS: i32 = 2;

/// The `[checkpoint]` table and the dead-letter and file sinks every configuration here has.
fn common() -> String {
    r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sinks.files]
kind = "file"
path = "out"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"
"#
    .to_owned()
}

/// A pipeline `name` reading Kafka topic `topic` (with the source's `extra` lines) through the
/// passthrough plugin into `outputs`.
fn pipeline(broker: &str, name: &str, topic: &str, extra: &str, outputs: &str) -> String {
    format!(
        r#"
[sources.{name}]
kind = "kafka"
brokers = ["{broker}"]
topic = "{topic}"
stop_at_end = true
fetch_max_wait = "100ms"
{extra}

[pipelines.{name}]
source = "{name}"
dead_letter = "dead_letters"

[[pipelines.{name}.stages]]
name = "pass"
plugin = "{plugin}"
outputs = {{ out = {outputs} }}
"#,
        plugin = plugin_path("passthrough").display()
    )
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The sequence numbers of the events pipeline `name` wrote to the file sink.
fn file_sequence(dir: &Path, name: &str, codec: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    for partition in 0..PARTITIONS {
        let path = dir.join(format!("out/{name}-{partition}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).expect("a JSON event");
            assert_eq!(event["codec"], codec, "{line}");
            let seq = event["seq"].as_u64().expect("seq");
            assert_eq!(
                seq % PARTITIONS as u64,
                partition as u64,
                "event {seq} came through the partition it was produced to"
            );
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    seqs
}

#[test]
fn librdkafka_topics_in_every_codec_are_read_exactly_once_and_written_back_in_each_codec() {
    let broker = KafkaBroker::start();
    let address = broker.address();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common();
    for codec in CODECS {
        create_topic(&address, &format!("in-{codec}"), PARTITIONS);
        create_topic(&address, &format!("out-{codec}"), PARTITIONS);
        librdkafka::produce(&address, &format!("in-{codec}"), codec, EVENTS, PARTITIONS);
        config.push_str(&pipeline(
            &address,
            &format!("read_{codec}"),
            &format!("in-{codec}"),
            "",
            &format!("[\"files\", \"out_{codec}\"]"),
        ));
        config.push_str(&format!(
            "\n[sinks.out_{codec}]\nkind = \"kafka\"\nbrokers = [\"{address}\"]\ntopic = \"out-{codec}\"\npartition_by = \"source_partition\"\ncompression = \"{codec}\"\n"
        ));
    }
    let config = write_config(dir.path(), &config);
    run_to_completion(&config, Duration::from_secs(180));

    let expected: Vec<u64> = (0..EVENTS as u64).collect();
    for codec in CODECS {
        // Read: every event exactly once.
        assert_eq!(
            file_sequence(dir.path(), &format!("read_{codec}"), codec),
            expected,
            "{codec}: every event once in the file sink"
        );

        // Written in the same codec and read back by librdkafka: at least once, each record
        // with the input's key, headers and timestamp, repeats recognisable by their id.
        let mut by_id: BTreeMap<String, u64> = BTreeMap::new();
        for record in librdkafka::consume(&address, &format!("out-{codec}")) {
            let event: Value = serde_json::from_str(&record.value).expect("JSON value");
            let seq = event["seq"].as_u64().expect("seq");
            assert_eq!(event["codec"], codec);
            assert_eq!(
                record.key.as_deref(),
                Some(format!("device-{}", seq % 7).as_str()),
                "{codec}: the key of event {seq}"
            );
            assert_eq!(
                record.headers.get("source").map(String::as_str),
                Some("librdkafka")
            );
            assert_eq!(record.headers.get("seq"), Some(&seq.to_string()));
            assert_eq!(record.headers.get("codec").map(String::as_str), Some(codec));
            assert_eq!(
                record.timestamp,
                BASE_TIMESTAMP_MS + seq as i64 * 1000,
                "{codec}: the timestamp of event {seq}"
            );
            assert_eq!(record.partition as u64, seq % PARTITIONS as u64);
            let id = record
                .headers
                .get("weir-id")
                .expect("weir-id header")
                .clone();
            if let Some(previous) = by_id.insert(id.clone(), seq) {
                assert_eq!(
                    previous, seq,
                    "{codec}: a repeat of {id} carries the same event"
                );
            }
        }
        let seqs: BTreeSet<u64> = by_id.values().copied().collect();
        assert_eq!(by_id.len(), EVENTS, "{codec}: one id per event");
        assert_eq!(seqs.into_iter().collect::<Vec<_>>(), expected, "{codec}");
    }
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}

/// Runs `weir run` on `config`, which must fail within `within`; returns its log.
fn run_to_failure(config: &Path, within: Duration) -> String {
    let started = Instant::now();
    let status = WeirProcess::run(config).wait(within);
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(!status.success(), "weir should have failed; log:\n{log}");
    assert!(
        started.elapsed() < within,
        "weir took {:?} to fail; log:\n{log}",
        started.elapsed()
    );
    log
}

#[test]
fn a_topic_that_does_not_exist_stops_the_run_within_seconds_naming_it() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common()
        + &pipeline(
            &broker.address(),
            "missing",
            "no-such-topic",
            "max_outage = \"5m\"",
            "\"files\"",
        );
    let log = run_to_failure(&write_config(dir.path(), &config), Duration::from_secs(30));
    assert!(
        log.contains("topic `no-such-topic` does not exist"),
        "the cause is named:\n{log}"
    );
    assert!(!log.contains("reconnecting"), "no outage loop:\n{log}");
}

/// A broker whose fetch responses for topic `garbled` are corrupted by a proxy, the topic
/// written by librdkafka through it (in gzip, in many batches).
fn garbled_topic() -> (KafkaBroker, CorruptingProxy, String) {
    let (broker_port, proxy_port) = (free_port(), free_port());
    let broker = KafkaBroker::start_advertising(broker_port, proxy_port);
    let proxy = CorruptingProxy::start(proxy_port, broker_port, "garbled");
    let address = format!("127.0.0.1:{proxy_port}");
    create_topic(&address, "garbled", 1);
    librdkafka::produce(&address, "garbled", "gzip", EVENTS, 1);
    (broker, proxy, address)
}

#[test]
fn an_undecodable_batch_stops_the_run_within_seconds_naming_topic_partition_offset_and_cause() {
    let (_broker, proxy, address) = garbled_topic();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common() + &pipeline(&address, "garbled", "garbled", "", "\"files\"");
    let log = run_to_failure(&write_config(dir.path(), &config), Duration::from_secs(30));
    assert!(proxy.corrupted() > 0, "the proxy corrupted a batch");
    assert!(
        log.contains("cannot read topic `garbled` partition 0 at offset 0"),
        "topic, partition and offset are named:\n{log}"
    );
    assert!(
        log.contains("a record batch that cannot be decoded") && log.contains("CRC"),
        "the cause is named:\n{log}"
    );
    assert!(
        log.contains("on_undecodable"),
        "the way on is named:\n{log}"
    );
    assert!(!log.contains("reconnecting"), "no outage loop:\n{log}");
}

#[test]
fn an_undecodable_batch_is_dead_lettered_with_its_offsets_when_so_configured() {
    let (_broker, proxy, address) = garbled_topic();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common()
        + &pipeline(
            &address,
            "garbled",
            "garbled",
            "on_undecodable = \"dead_letter\"",
            "\"files\"",
        );
    let config = write_config(dir.path(), &config);
    let started = Instant::now();
    run_to_completion(&config, Duration::from_secs(60));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(proxy.corrupted() > 0, "the proxy corrupted a batch");
    // Every batch of the topic is corrupt: the dead letters cover every offset once, in ranges
    // named in their reasons, and nothing reached the file sink.
    let letters = read_jsonl_dir(&dir.path().join("dead_letters"));
    assert!(!letters.is_empty());
    let mut covered = Vec::new();
    for letter in &letters {
        assert_eq!(letter["kind"], "undecodable", "{letter}");
        assert_eq!(letter["pipeline"], "garbled", "{letter}");
        let reason = letter["reason"].as_str().expect("reason");
        assert!(reason.contains("topic `garbled` partition 0"), "{reason}");
        assert!(reason.contains("CRC"), "{reason}");
        let range = reason
            .split_once("at offsets ")
            .and_then(|(_, rest)| rest.split_once(':'))
            .map(|(range, _)| range)
            .expect("an offset range");
        let (first, last) = range.split_once("..=").expect("first..=last");
        let (first, last): (u64, u64) =
            (first.parse().expect("first"), last.parse().expect("last"));
        assert_eq!(letter["position"], first, "{letter}");
        covered.extend(first..=last);
    }
    covered.sort_unstable();
    assert_eq!(covered, (0..EVENTS as u64).collect::<Vec<_>>());
    assert!(read_jsonl_dir(&dir.path().join("out")).is_empty());

    // The checkpoint moved past the batches: a second run sets nothing aside again.
    let first_run = std::fs::read_to_string(config.with_extension("log")).expect("log");
    let log = run_to_completion(&config, Duration::from_secs(60));
    let second_run = &log[first_run.len()..];
    assert!(
        second_run.contains("resuming from checkpoint"),
        "{second_run}"
    );
    assert!(
        !second_run.contains("cannot be decoded"),
        "nothing read again:\n{second_run}"
    );
    assert_eq!(
        read_jsonl_dir(&dir.path().join("dead_letters")).len(),
        letters.len()
    );
}
