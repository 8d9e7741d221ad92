//! The Kafka source over TLS: the broker is reached only through a TLS-terminating proxy whose
//! certificate (from a test CA) Weir trusts through `tls.ca_file`; without it, the connection is
//! refused at start with the reason.

use std::time::Duration;

use weir_tests::kafka::{KafkaPipeline, create_topic, produce, telemetry_records, use_tls};
use weir_tests::servers::{KafkaBroker, free_port};
use weir_tests::telemetry::generated_readings;
use weir_tests::tls::{TlsProxy, test_certificates};
use weir_tests::{WeirProcess, read_delta, run_to_completion};

#[test]
fn the_kafka_source_reads_through_tls_and_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = test_certificates(dir.path());
    let proxy_port = free_port();
    let broker_port = free_port();
    let _broker = KafkaBroker::start_advertising(broker_port, proxy_port);
    let _proxy = TlsProxy::start(proxy_port, broker_port, &cert, &key);
    use_tls(&ca);
    let address = format!("127.0.0.1:{proxy_port}");
    create_topic(&address, "telemetry", 2);
    let readings = generated_readings(10, 30, 4);
    produce(&address, "telemetry", &telemetry_records(&readings, 2));

    let mut pipeline = KafkaPipeline::new(&address, "telemetry");
    pipeline.stop_at_end = true;
    pipeline.source_extra = format!("tls = {{ ca_file = \"{}\" }}", ca.display());
    let config = pipeline.write(dir.path(), "weir.toml");
    run_to_completion(&config, Duration::from_secs(300));
    let table = read_delta(&dir.path().join("delta/raw_telemetry"));
    assert_eq!(table.rows.len(), readings.len());

    // The system's roots do not include the test CA.
    pipeline.source_extra = "tls = {}\ntimeout = \"5s\"".to_owned();
    let untrusted = pipeline.write(dir.path(), "untrusted.toml");
    let process = WeirProcess::run(&untrusted);
    let log = untrusted.with_extension("log");
    let status = process.wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !status.success(),
        "an untrusted certificate must be refused:\n{text}"
    );
    assert!(text.contains("source `telemetry` cannot start"), "{text}");
    assert!(
        text.contains("UnknownIssuer"),
        "the reason is logged:\n{text}"
    );
}
