//! The telemetry pipeline on Event Hubs, through the `weir` binary and the real
//! `azure_messaging_eventhubs` client, against the Event Hubs-compatible test endpoint on
//! loopback: input from one hub, alerts to another, the raw table in Delta (read by Python's
//! deltalake).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::eventhubs::{EventHubsPipeline, TestEndpoint, keyed_records, rows_by_event};
use weir_tests::servers::wait_for;
use weir_tests::telemetry::{
    PipelineOptions, anomaly_pipeline, assert_alerts_match, expected_alerts, generated_readings,
    write_input,
};
use weir_tests::{WeirProcess, read_delta, read_jsonl_dir, run_to_completion};

/// Alerts keyed by EventId.
fn alerts_by_event(alerts: &[Value]) -> BTreeMap<String, Value> {
    alerts
        .iter()
        .map(|a| {
            (
                a["EventId"].as_str().expect("EventId").to_owned(),
                a.clone(),
            )
        })
        .collect()
}

#[test]
fn event_hubs_in_and_alerts_out_give_the_same_table_and_alerts_as_the_file_run() {
    let readings = generated_readings(40, 150, 23);

    // The reference: the same events from a JSON Lines file.
    let file_dir = tempfile::tempdir().expect("temp dir");
    let input = file_dir.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let paths = anomaly_pipeline(file_dir.path(), &input, &PipelineOptions::default());
    run_to_completion(&paths.config, Duration::from_secs(300));
    let file_rows = rows_by_event(&read_delta(&paths.raw_table).rows);
    let file_alerts = alerts_by_event(&read_jsonl_dir(&paths.alerts));

    // The same events on a hub of 4 partitions, keyed by device as an IoT client sends them.
    let endpoint = TestEndpoint::start(&[("telemetry", 4), ("alerts", 2)]);
    endpoint.publish_keyed("telemetry", &keyed_records(&readings));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipeline = EventHubsPipeline::new(&endpoint, "telemetry", "alerts");
    pipeline.stop_at_end = true;
    let config = pipeline.write(dir.path());
    let log = run_to_completion(&config, Duration::from_secs(300));
    assert!(log.contains("partition acquired"), "{log}");

    let table = read_delta(&dir.path().join("delta/raw_telemetry"));
    assert_eq!(table.partition_columns, ["EventDate"]);
    let rows = rows_by_event(&table.rows);
    assert_eq!(rows.len(), readings.len(), "every event once in Delta");
    assert_eq!(rows, file_rows, "the Delta table equals the file run's");

    let alerts = endpoint.unique_json("alerts");
    assert_alerts_match(&alerts, &expected_alerts(&readings));
    assert_eq!(
        alerts_by_event(&alerts),
        file_alerts,
        "the alerts equal the file run's"
    );
    // Alerts were sent in batches by partition key: the key is the device.
    for event in endpoint.events("alerts") {
        let alert: Value = serde_json::from_slice(&event.body()).expect("JSON alert");
        assert_eq!(
            event.partition_key.as_deref(),
            alert["DeviceId"].as_str(),
            "partition key of {alert}"
        );
    }
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}

#[test]
fn link_detaches_and_connection_drops_mid_stream_lose_nothing() {
    let readings = generated_readings(40, 200, 29);
    let records = keyed_records(&readings);
    let (first, second) = records.split_at(records.len() / 3);
    let endpoint = TestEndpoint::start(&[("telemetry", 4), ("alerts", 2)]);
    endpoint.publish_keyed("telemetry", first);

    let dir = tempfile::tempdir().expect("temp dir");
    // Small batches, so that faults land between many of them.
    let mut pipeline = EventHubsPipeline::new(&endpoint, "telemetry", "alerts");
    pipeline.batch_max_events = 64;
    let config = pipeline.write(dir.path());
    let process = WeirProcess::run(&config);
    weir_tests::wait_for_first_checkpoint(
        &dir.path().join("checkpoints/telemetry"),
        Duration::from_secs(180),
    );

    // The rest arrives in chunks; between chunks, every consumer link is detached by the
    // service, or every connection (receivers' and the alerts producers') is dropped.
    for (i, chunk) in second.chunks(500).enumerate() {
        endpoint.publish_keyed("telemetry", chunk);
        std::thread::sleep(Duration::from_millis(300));
        if i % 2 == 0 {
            endpoint.endpoint.detach_consumers("telemetry");
        } else {
            endpoint.endpoint.drop_connections();
        }
    }
    let stats = endpoint.endpoint.stats();
    assert!(stats.forced_detaches > 0, "links were detached: {stats:?}");
    assert!(
        stats.dropped_connections > 0,
        "connections were dropped: {stats:?}"
    );

    // Wait until the table holds as many rows as events were sent (a reader that lost events
    // never gets there; one that repeated them is caught below).
    let deadline = Instant::now() + Duration::from_secs(300);
    let table = loop {
        let table = read_delta(&dir.path().join("delta/raw_telemetry"));
        if table.rows.len() >= readings.len() {
            break table;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} rows arrived; log:\n{}",
            table.rows.len(),
            readings.len(),
            process.log_text()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let expected = expected_alerts(&readings);
    wait_for("every alert", Duration::from_secs(120), || {
        endpoint.unique_json("alerts").len() >= expected.len()
    });
    let log = process.log_text();
    process.terminate();
    assert!(
        log.contains("reconnecting"),
        "the source reconnected:\n{log}"
    );

    let rows = rows_by_event(&table.rows);
    assert_eq!(rows.len(), readings.len(), "every event exactly once");
    for reading in &readings {
        assert!(rows.contains_key(&reading.event_id), "{}", reading.event_id);
    }
    assert_alerts_match(&endpoint.unique_json("alerts"), &expected);
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());
}

#[test]
fn the_readmes_azure_architecture_configuration_is_valid() {
    // examples/azure.toml is the configuration the README shows for the seed's architecture.
    let path = weir_tests::workspace_dir().join("examples/azure.toml");
    let example = std::fs::read_to_string(&path).expect("example");
    // The plugin as this build made it (the example names where `scripts/build-plugins` puts it).
    let text = ["telemetry_anomaly", "telemetry_aggregates"]
        .into_iter()
        .fold(example.clone(), |text, plugin| {
            text.replace(
                &format!("../target/plugins/{plugin}.wasm"),
                &weir_tests::plugin_path(plugin).display().to_string(),
            )
        });
    let loaded = weir::config::load_str(&text, &path, path.parent().expect("examples"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = &loaded.config;
    assert!(matches!(
        config.sources["telemetry"],
        weir::config::SourceConfig::EventHubs(ref hub) if hub.partitions == Some(4)
    ));
    assert!(matches!(
        config.sinks["alerts"],
        weir::config::SinkConfig::EventHubs(_)
    ));
    assert!(matches!(
        config.sinks["raw_telemetry"],
        weir::config::SinkConfig::Delta(ref delta) if delta.path.starts_with("abfss://")
    ));
    assert!(matches!(
        config.sinks["aggregated_metrics"],
        weir::config::SinkConfig::Delta(ref delta) if delta.path.starts_with("abfss://")
    ));
    // The aggregates: a window stage on the same hub, as a consumer group of their own.
    let aggregates = &config.pipelines["aggregates"];
    assert!(matches!(
        config.sources[&aggregates.sources[0]],
        weir::config::SourceConfig::EventHubs(ref hub) if hub.event_hub.as_deref() == Some("telemetry")
    ));
    assert!(
        aggregates
            .stages
            .iter()
            .any(|stage| matches!(stage.kind, weir::config::StageKind::Window { .. }))
    );
    assert!(config.checkpoint.azure_blob.is_some());
    let readme =
        std::fs::read_to_string(weir_tests::workspace_dir().join("README.md")).expect("README");
    assert!(
        readme.contains(example.trim()),
        "the README shows examples/azure.toml as it is"
    );
}
