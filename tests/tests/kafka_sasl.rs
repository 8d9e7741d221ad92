//! The Kafka source and sink authenticating with SASL PLAIN, as Event Hubs' Kafka endpoint asks
//! (user `$ConnectionString`, the connection string as password, here read from the environment
//! through `${NAME}`). The peer is a SASL PLAIN gateway in front of the broker (tansu, on
//! loopback) that speaks the Kafka protocol's SASL exchange (see `weir_tests::kafka_proxies` for
//! why not tansu itself); a wrong password is refused at start with the reason.

use std::time::Duration;

use weir_tests::kafka::{
    KafkaPipeline, create_topic, produce, telemetry_records, unique_json, use_sasl_plain,
};
use weir_tests::kafka_proxies::SaslPlainGateway;
use weir_tests::servers::{KafkaBroker, free_port};
use weir_tests::telemetry::{
    assert_alerts_match, assert_each_reading_once, expected_alerts, generated_readings,
};
use weir_tests::{WeirProcess, read_delta};

const USER: &str = "$ConnectionString";
const CONNECTION_STRING: &str = "Endpoint=sb://weir-test.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHM=";

#[test]
fn the_kafka_source_and_sink_authenticate_with_sasl_plain_and_a_wrong_password_is_refused() {
    let gateway_port = free_port();
    let broker_port = free_port();
    let _broker = KafkaBroker::start_advertising(broker_port, gateway_port);
    let gateway = SaslPlainGateway::start(gateway_port, broker_port, USER, CONNECTION_STRING);
    use_sasl_plain(USER, CONNECTION_STRING);
    let address = format!("127.0.0.1:{gateway_port}");
    create_topic(&address, "telemetry", 2);
    create_topic(&address, "alerts", 2);
    let readings = generated_readings(10, 60, 8);
    produce(&address, "telemetry", &telemetry_records(&readings, 2));
    let helpers_authenticated = gateway.authenticated();

    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = KafkaPipeline::new(&address, "telemetry");
    pipeline.stop_at_end = true;
    pipeline.alerts_topic = Some("alerts".to_owned());
    pipeline.source_extra = format!(
        "sasl = {{ mechanism = \"plain\", username = \"{USER}\", password = \"${{WEIR_TEST_KAFKA_PASSWORD}}\" }}"
    );
    pipeline.sink_extra = pipeline.source_extra.clone();
    let config = pipeline.write(dir.path(), "weir.toml");
    let process = WeirProcess::spawn_with_env(
        &["run", "--config"],
        &config,
        &[("WEIR_TEST_KAFKA_PASSWORD", CONNECTION_STRING)],
    );
    let status = process.wait(Duration::from_secs(300));
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(status.success(), "weir exited with {status}:\n{log}");
    assert!(
        gateway.authenticated() > helpers_authenticated,
        "Weir authenticated"
    );
    assert_eq!(gateway.refused(), 0, "{log}");
    assert_eq!(gateway.unauthenticated_requests(), 0, "{log}");
    assert_each_reading_once(
        &read_delta(&dir.path().join("delta/raw_telemetry")).rows,
        &readings,
    );
    let expected = expected_alerts(&readings);
    assert!(!expected.is_empty(), "the readings raise alerts");
    assert_alerts_match(&unique_json(&address, "alerts"), &expected);

    // A wrong password: refused at start, with the reason.
    pipeline.source_extra = format!(
        "sasl = {{ mechanism = \"plain\", username = \"{USER}\", password = \"wrong\" }}\ntimeout = \"3s\""
    );
    pipeline.sink_extra = pipeline.source_extra.clone();
    let wrong = pipeline.write(dir.path(), "wrong.toml");
    let refused_before = gateway.refused();
    let status = WeirProcess::run(&wrong).wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(wrong.with_extension("log")).unwrap_or_default();
    assert!(
        !status.success(),
        "a wrong password must be refused:\n{text}"
    );
    assert!(gateway.refused() > refused_before, "the gateway refused it");
    // The sinks connect first: the alerts sink is the one refused.
    assert!(
        text.contains("sink `alerts`") && text.contains("cannot connect to the brokers"),
        "{text}"
    );
    assert!(
        text.contains("SaslAuthenticationFailed")
            && text.contains("check `sasl.username` and `sasl.password`"),
        "the reason is logged:\n{text}"
    );
}
