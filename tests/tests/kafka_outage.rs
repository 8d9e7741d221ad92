//! A Kafka broker outage while the telemetry pipeline runs: every connection between Weir and
//! the broker (tansu, on loopback) is cut mid-stream and new ones are refused for longer than the
//! connection's `timeout`, through a TCP proxy that the broker advertises (the broker itself is
//! not restarted: its memory storage would lose the topic). The source reconnects with backoff
//! and resumes from its last offset, the sink produces again, and the Delta table (read by
//! Python's deltalake) holds every event exactly once.

use std::path::Path;
use std::time::Duration;

use weir_tests::kafka::{
    KafkaPipeline, create_topic, produce, read_all, telemetry_records, unique_json,
};
use weir_tests::kafka_proxies::FaultProxy;
use weir_tests::servers::{KafkaBroker, free_port, wait_for};
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
};
use weir_tests::{WeirProcess, read_delta, read_jsonl_dir};

/// Once the Delta table at `table` holds `rows` rows, stops `process` and returns its log; it
/// must have exited cleanly.
fn stop_when_complete(process: WeirProcess, table: &Path, rows: usize) -> String {
    // Each look starts Python: not too often.
    wait_for("every reading in Delta", Duration::from_secs(300), || {
        let done = read_delta(table).rows.len() >= rows;
        if !done {
            std::thread::sleep(Duration::from_secs(1));
        }
        done
    });
    let log = process.log_text();
    process.terminate();
    let status = process.wait(Duration::from_secs(120));
    assert!(status.success(), "weir exited with {status}:\n{log}");
    log
}

/// Asserts that Weir met the outage on `request` (`fetch_records` or `produce`): either the
/// client's own retries outlasted it (rskafka's nested retries were seen to ride out 20 s now
/// and then), or they gave up and Weir logged `gave_up`, reconnected and logged `recovered`.
/// Returns whether Weir's own retry ran.
fn assert_met_outage(log: &str, request: &str, gave_up: &str, recovered: &str) -> bool {
    let retried = log.contains(gave_up);
    assert!(
        retried || log.contains(&format!("request_name=\"{request}\"")),
        "no {request} request met the outage:\n{log}"
    );
    if retried {
        assert!(
            log.contains(recovered),
            "no `{recovered}` after `{gave_up}`:\n{log}"
        );
    }
    retried
}

/// How many distinct alerts (by `weir-id`) are on the broker's `alerts` topic.
fn alert_ids(address: &str) -> usize {
    read_all(address, "alerts")
        .into_iter()
        .filter_map(|r| r.headers.get("weir-id").cloned())
        .collect::<std::collections::BTreeSet<String>>()
        .len()
}

#[test]
fn the_kafka_source_and_sink_ride_out_a_broker_outage_without_loss_or_duplicates() {
    let proxy_port = free_port();
    let broker_port = free_port();
    let _broker = KafkaBroker::start_advertising(broker_port, proxy_port);
    let mut proxy = FaultProxy::start(proxy_port, broker_port);
    let address = format!("127.0.0.1:{proxy_port}");
    create_topic(&address, "telemetry", 4);
    create_topic(&address, "alerts", 2);
    let readings = generated_readings(20, 300, 5);
    let records = telemetry_records(&readings, 4);
    let (first, second) = records.split_at(records.len() / 2);
    produce(&address, "telemetry", first);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&address, "telemetry");
    pipeline.alerts_topic = Some("alerts".to_owned());
    // rskafka's own retries give up after about `timeout` of backoff (its nested connection
    // retries make that a few seconds of wall time): the outage outlasts them several times over.
    pipeline.source_extra = "timeout = \"1s\"\nmax_outage = \"120s\"".to_owned();
    pipeline.sink_extra = pipeline.source_extra.clone();
    let config = pipeline.write(dir.path(), "weir.toml");
    let process = WeirProcess::run(&config);
    weir_tests::wait_for_first_checkpoint(
        &dir.path().join("checkpoints/telemetry"),
        Duration::from_secs(120),
    );

    // The outage: every open connection cut, new ones refused for 20 s.
    let cut = proxy.outage(Duration::from_secs(20));
    assert!(cut > 0, "the outage cut Weir's open connections");
    // The second half arrives after the broker is back.
    produce(&address, "telemetry", second);

    let table = dir.path().join("delta/raw_telemetry");
    let log = stop_when_complete(process, &table, readings.len());
    let refetched = assert_met_outage(
        &log,
        "fetch_records",
        "Kafka fetch failed; reconnecting and fetching from the same offset",
        "Kafka broker reachable again; reading on",
    );
    assert!(!log.contains("partition worker failed"), "{log}");
    // The readers rode it out: no partition changed hands (a handover would resume from the
    // checkpoint, which is not what this test is about).
    assert_eq!(log.matches("partition acquired").count(), 4, "{log}");
    assert_each_reading_once(&read_delta(&table).rows, &readings);

    // Alerts on Kafka: at least once; repeats carry the same id and the same payload.
    assert_alerts_match(
        &unique_json(&address, "alerts"),
        &expected_alerts(&readings),
    );
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
    eprintln!(
        "outage cut {cut} connections; the source {} its fetches; the sink {} a failed produce",
        if refetched {
            "reconnected and repeated"
        } else {
            "rode it out in the client's retries of"
        },
        if log.contains("Kafka produce failed") {
            "retried"
        } else {
            "did not meet"
        }
    );
}

/// The Kafka sink alone: the telemetry pipeline reads a growing file and produces its alerts to
/// Kafka through the proxy; the outage starts before the second half of the file arrives, so the
/// alerts of that half meet a broker that is away, and are produced once it is back.
#[test]
fn the_kafka_sink_retries_through_a_broker_outage_and_loses_no_alert() {
    use std::io::Write as _;
    use weir_tests::telemetry::{PipelineOptions, anomaly_pipeline, write_input};

    let proxy_port = free_port();
    let broker_port = free_port();
    let _broker = KafkaBroker::start_advertising(broker_port, proxy_port);
    let mut proxy = FaultProxy::start(proxy_port, broker_port);
    let address = format!("127.0.0.1:{proxy_port}");
    create_topic(&address, "alerts", 2);
    let readings = generated_readings(20, 200, 9);
    let (first, second) = readings.split_at(readings.len() / 2);
    let expected_first = expected_alerts(first);
    let expected_all = expected_alerts(&readings);
    assert!(
        expected_all.len() > expected_first.len() && !expected_first.is_empty(),
        "both halves raise alerts"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, first, &[]);
    let options = PipelineOptions {
        source_extra: "follow = true".to_owned(),
        ..PipelineOptions::default()
    };
    let paths = anomaly_pipeline(dir.path(), &input, &options);
    let text = std::fs::read_to_string(&paths.config).expect("config");
    let kafka_sink = format!(
        "kind = \"kafka\"\nbrokers = [\"{address}\"]\ntopic = \"alerts\"\nkey_field = \"DeviceId\"\ntimeout = \"1s\"\nmax_outage = \"120s\""
    );
    let text = text.replace("kind = \"file\"\npath = \"alerts\"", &kafka_sink);
    assert!(text.contains("topic = \"alerts\""), "{text}");
    std::fs::write(&paths.config, text).expect("config");
    let process = WeirProcess::run(&paths.config);

    // The first half's alerts are on the broker.
    wait_for("the first half's alerts", Duration::from_secs(180), || {
        let done = alert_ids(&address) >= expected_first.len();
        if !done {
            std::thread::sleep(Duration::from_millis(500));
        }
        done
    });

    // The broker goes away; meanwhile the second half arrives.
    let outage = std::thread::spawn(move || {
        let cut = proxy.outage(Duration::from_secs(20));
        (proxy, cut)
    });
    wait_for(
        "the proxy to refuse connections",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err(),
    );
    let mut text = String::new();
    for reading in second {
        text.push_str(&reading.to_json());
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .expect("append the second half");
    let (_proxy, _cut) = outage.join().expect("outage");

    wait_for(
        "every alert on the broker",
        Duration::from_secs(300),
        || {
            let done = alert_ids(&address) >= expected_all.len();
            if !done {
                std::thread::sleep(Duration::from_millis(500));
            }
            done
        },
    );
    let log = stop_when_complete(process, &paths.raw_table, readings.len());
    assert_met_outage(
        &log,
        "produce",
        "Kafka produce failed; reconnecting and producing the batch again",
        "Kafka broker reachable again; producing on",
    );

    assert_alerts_match(&unique_json(&address, "alerts"), &expected_all);
    assert_each_reading_once(&read_delta(&paths.raw_table).rows, &readings);
    assert!(read_jsonl_dir(&paths.dead_letters).is_empty());
}
