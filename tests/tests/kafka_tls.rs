//! The Kafka source and sink over TLS: the broker is reached only through a TLS-terminating proxy
//! whose certificate (from a test CA) Weir trusts through `tls.ca_file`; without it, the
//! connection is refused at start with the reason.

use std::time::Duration;

use weir_tests::kafka::{
    KafkaPipeline, create_topic, produce, telemetry_records, unique_json, use_tls,
};
use weir_tests::servers::{KafkaBroker, free_port};
use weir_tests::telemetry::{assert_alerts_match, expected_alerts, generated_readings};
use weir_tests::tls::{TlsProxy, test_certificates};
use weir_tests::{WeirProcess, read_delta, run_to_completion};

#[test]
fn the_kafka_source_and_sink_go_through_tls_and_refuse_an_untrusted_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_certificates(dir.path());
    let proxy_port = free_port();
    let broker_port = free_port();
    let _broker = KafkaBroker::start_advertising(broker_port, proxy_port);
    let _proxy = TlsProxy::start(proxy_port, broker_port, &cert, &key);
    use_tls(&ca);
    let address = format!("127.0.0.1:{proxy_port}");
    create_topic(&address, "telemetry", 2);
    create_topic(&address, "alerts", 2);
    let readings = generated_readings(10, 30, 4);
    produce(&address, "telemetry", &telemetry_records(&readings, 2));

    let mut pipeline = KafkaPipeline::new(&address, "telemetry");
    pipeline.stop_at_end = true;
    pipeline.source_extra = format!("tls = {{ ca_file = \"{}\" }}", ca.display());
    pipeline.alerts_topic = Some("alerts".to_owned());
    pipeline.sink_extra = pipeline.source_extra.clone();
    let config = pipeline.write(dir.path(), "weir.toml");
    run_to_completion(&config, Duration::from_secs(300));
    let table = read_delta(&dir.path().join("delta/raw_telemetry"));
    assert_eq!(table.rows.len(), readings.len());

    // The alerts the sink produced through TLS, read back (through TLS) by the test's client.
    let expected = expected_alerts(&readings);
    assert!(!expected.is_empty(), "the readings raise alerts");
    assert_alerts_match(&unique_json(&address, "alerts"), &expected);

    // The system's roots do not include the test CA: the sink (connected first), then the
    // source, each refused alone.
    let trusted = pipeline.source_extra.clone();
    let untrusted = "tls = {}\ntimeout = \"5s\"".to_owned();
    for (file, source, sink, refused) in [
        ("untrusted_sink.toml", &trusted, &untrusted, "sink `alerts`"),
        (
            "untrusted_source.toml",
            &untrusted,
            &trusted,
            "source `telemetry` cannot start",
        ),
    ] {
        pipeline.source_extra = source.clone();
        pipeline.sink_extra = sink.clone();
        let config = pipeline.write(dir.path(), file);
        let status = WeirProcess::run(&config).wait(Duration::from_secs(120));
        let text = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
        assert!(
            !status.success(),
            "an untrusted certificate must be refused:\n{text}"
        );
        assert!(text.contains(refused), "{refused}:\n{text}");
        assert!(
            text.contains("UnknownIssuer"),
            "the reason is logged:\n{text}"
        );
    }
}
