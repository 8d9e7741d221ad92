//! The telemetry anomaly pipeline end to end, through the `weir` binary: alerts equal the rule's,
//! the Delta table (read by Python's `deltalake`) holds exactly the input's rows, and bad input
//! lands in the dead letters with a reason while the rest goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use weir_tests::telemetry::{
    PipelineOptions, Reading, anomaly_pipeline, assert_alerts_match, expected_alerts,
    generated_readings, hand_checked_scenario, timestamp, write_input,
};
use weir_tests::{read_delta, read_jsonl_dir, run_to_completion};

#[test]
fn hand_checked_anomalies_and_a_generated_stream_give_exactly_the_rules_alerts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut readings, hand_expected) = hand_checked_scenario();
    readings.extend(generated_readings(40, 60, 7));
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());

    run_to_completion(&paths.config, Duration::from_secs(120));

    // The hand-worked cases, field by field.
    let alerts = read_jsonl_dir(&paths.alerts);
    let by_id: BTreeMap<&str, &Value> = alerts
        .iter()
        .map(|a| (a["EventId"].as_str().expect("EventId"), a))
        .collect();
    for (event_id, severity, prev, delta) in &hand_expected {
        let alert = by_id
            .get(event_id)
            .unwrap_or_else(|| panic!("no alert for {event_id}"));
        assert_eq!(alert["Severity"], *severity, "{event_id}");
        assert!(
            weir_tests::close(&alert["PrevTemperature"], &serde_json::json!(prev)),
            "{event_id}: {alert}"
        );
        assert!(
            weir_tests::close(&alert["TempDelta"], &serde_json::json!(delta)),
            "{event_id}: {alert}"
        );
    }
    for quiet in ["a1", "a4", "c1", "c2", "c5"] {
        assert!(!by_id.contains_key(quiet), "reading {quiet} must not alert");
    }
    // Everything, against the rule derived independently in the test.
    assert_alerts_match(&alerts, &expected_alerts(&readings));

    // The raw table holds exactly the input's rows, partitioned by EventDate.
    let table = read_delta(&paths.raw_table);
    assert_eq!(table.partition_columns, ["EventDate"]);
    assert_eq!(table.rows.len(), readings.len());
    let mut by_event: BTreeMap<&str, &Value> = BTreeMap::new();
    for row in &table.rows {
        let id = row["EventId"].as_str().expect("EventId");
        assert!(by_event.insert(id, row).is_none(), "row {id} written twice");
        assert!(
            row["IngestionTime"].is_string(),
            "IngestionTime filled: {row}"
        );
    }
    for reading in &readings {
        let row = by_event
            .get(reading.event_id.as_str())
            .unwrap_or_else(|| panic!("row {} missing", reading.event_id));
        assert_eq!(row["DeviceId"], reading.device.as_str());
        assert!(weir_tests::close(
            &row["Temperature"],
            &serde_json::json!(reading.temperature)
        ));
        assert_eq!(row["EventDate"], timestamp(reading.time_ms)[..10]);
    }
    assert!(
        read_jsonl_dir(&paths.dead_letters).is_empty(),
        "no dead letters for clean input"
    );
}

#[test]
fn bad_input_goes_to_the_dead_letters_with_a_reason_and_nothing_else_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good: Vec<Reading> = generated_readings(8, 25, 11);
    let oversized = format!(
        r#"{{"DeviceId":"device-big","Temperature":20.0,"Timestamp":"2026-11-01T00:00:00.000Z","EventId":"big","Padding":"{}"}}"#,
        "x".repeat(5000)
    );
    let bad = [
        r#"{"DeviceId":"device-000","Temperature":21.5,"Timestamp":"2026-11-01T00:00:00.000Z","EventId":"trunc""#,
        r#"{"DeviceId":"device-001","Location":"X","Timestamp":"2026-11-01T00:01:00.000Z","EventId":"no-temp"}"#,
        r#"{"DeviceId":"device-002","Location":"X","Temperature":"hot","Timestamp":"2026-11-01T00:02:00.000Z","EventId":"wrong-type"}"#,
        r#"{"DeviceId":"device-003","Location":"X","Temperature":20.0,"Timestamp":"yesterday","EventId":"bad-time"}"#,
        oversized.as_str(),
    ];
    let input = dir.path().join("telemetry.jsonl");
    // Bad lines in the middle of good ones: the pipeline must go on after each.
    write_with_lines_in_the_middle(&input, &good, bad);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());

    run_to_completion(&paths.config, Duration::from_secs(120));

    let letters = read_jsonl_dir(&paths.dead_letters);
    let mut by_body: BTreeMap<String, &Value> = BTreeMap::new();
    for letter in &letters {
        by_body.insert(
            letter["body"]
                .as_str()
                .expect("original body kept")
                .to_owned(),
            letter,
        );
    }
    assert_eq!(
        letters.len(),
        bad.len(),
        "one dead letter per bad event: {letters:#?}"
    );
    let expectations = [
        (bad[0], "malformed", "malformed JSON"),
        (bad[1], "rejected", "missing field `Temperature`"),
        (bad[2], "rejected", "invalid type: string \"hot\""),
        (bad[3], "event_time", "not an RFC 3339 timestamp"),
        (
            bad[4],
            "oversized",
            "exceeds the pipeline's max_event_bytes of 4096",
        ),
    ];
    for (body, kind, reason) in expectations {
        let letter = by_body
            .get(body)
            .unwrap_or_else(|| panic!("no dead letter for {body:.60}"));
        assert_eq!(letter["kind"], kind, "{letter}");
        let text = letter["reason"].as_str().expect("reason");
        assert!(
            text.contains(reason),
            "reason `{text}` should mention `{reason}`"
        );
        assert_eq!(letter["pipeline"], "telemetry");
        assert!(
            letter["partition"].is_u64() && letter["position"].is_u64(),
            "{letter}"
        );
        if kind == "rejected" {
            assert_eq!(letter["stage"], "anomaly");
            assert!(letter["plugin_version"].is_string());
        }
    }
    // Every good reading made it, after the bad ones too.
    let table = read_delta(&paths.raw_table);
    assert_eq!(table.rows.len(), good.len());
    assert_alerts_match(&read_jsonl_dir(&paths.alerts), &expected_alerts(&good));
}

#[test]
fn records_for_an_output_with_no_route_are_dead_letters_naming_the_stage_and_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut readings, _) = hand_checked_scenario();
    readings.extend(generated_readings(20, 40, 11));
    let input = dir.path().join("telemetry.jsonl");
    write_input(&input, &readings, &[]);
    let paths = anomaly_pipeline(dir.path(), &input, &PipelineOptions::default());
    // The plugin's `alerts` output is routed under a misspelt name: its records have no route.
    let config = std::fs::read_to_string(&paths.config).expect("config");
    let misrouted = config.replace(
        r#"outputs = { alerts = "alerts","#,
        r#"outputs = { alert = "alerts","#,
    );
    assert_ne!(config, misrouted, "the test changed the routes");
    std::fs::write(&paths.config, misrouted).expect("config");

    run_to_completion(&paths.config, Duration::from_secs(120));

    let version = weir::plugin::content_version(
        &std::fs::read(weir_tests::plugin_path("telemetry_anomaly")).expect("plugin"),
    );
    let expected = expected_alerts(&readings);
    assert!(!expected.is_empty(), "the input raises alerts");
    let dead = read_jsonl_dir(&paths.dead_letters);
    assert_eq!(dead.len(), expected.len(), "one dead letter per alert");
    for letter in &dead {
        assert_eq!(letter["kind"], "unrouted", "{letter}");
        assert_eq!(letter["stage"], "anomaly", "{letter}");
        assert_eq!(letter["plugin_version"], version.as_str(), "{letter}");
        let reason = letter["reason"].as_str().expect("reason");
        assert!(reason.contains("output `alerts`"), "{reason}");
    }
    // The alerts themselves are in the dead letters' bodies, and the rows went on to Delta.
    let bodies: Vec<Value> = dead
        .iter()
        .map(|l| serde_json::from_str(l["body"].as_str().expect("body")).expect("alert JSON"))
        .collect();
    assert_alerts_match(&bodies, &expected);
    assert!(read_jsonl_dir(&paths.alerts).is_empty());
    assert_eq!(read_delta(&paths.raw_table).rows.len(), readings.len());
}

/// The reason the anomaly plugin gives for `body` when it reads the whole body (no projection).
fn body_reason(body: &str) -> String {
    match serde_json::from_str::<telemetry_anomaly::Reading>(body) {
        Ok(_) => panic!("{body} is a valid reading"),
        Err(e) => weir_sdk::Error::from(e).to_string(),
    }
}

/// After its first batch the plugin reads its struct's fields from the host's projection
/// (issue 15): alerts and dead letters must be exactly those of reading every body whole,
/// whichever way each event goes (projected, projected but refused, left to the body).
#[test]
fn projected_fields_give_the_answers_and_reasons_of_reading_the_whole_body() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good: Vec<Reading> = generated_readings(12, 60, 29);
    let time = "2026-11-01T00:00:00.000Z";
    let refused = [
        // Projected, refused by the struct: the reasons are serde_json's on the body.
        format!(
            r#"{{"DeviceId":"p-1","Temperature":"hot","Timestamp":"{time}","EventId":"wrong-type"}}"#
        ),
        format!(r#"{{"DeviceId":"p-2","Location":"X","Timestamp":"{time}","EventId":"no-temp"}}"#),
        format!(
            r#"{{"DeviceId":"p-3","Temperature":null,"Timestamp":"{time}","EventId":"null-temp"}}"#
        ),
        format!(
            r#"{{"DeviceId":"p-4","Temperature":20.0,"Humidity":"wet","Timestamp":"{time}","EventId":"wet"}}"#
        ),
        format!(
            r#"{{"DeviceId":"p-5","Temperature":20.0,"Extra":{{"a":[1,{{"b":null}}]}},"Timestamp":"{time}","EventId":7}}"#
        ),
        format!(
            r#"{{"Temperature":20.0,"Timestamp":"{time}","EventId":"no-device","DeviceId":["p-6"]}}"#
        ),
        // Not projected (a field repeated; an escape): the plugin reads the body.
        format!(
            r#"{{"DeviceId":"p-7","Temperature":20.0,"Temperature":21.0,"Timestamp":"{time}","EventId":"twice"}}"#
        ),
        format!(
            r#"{{"DeviceId":"p-8","Location":"\"quoted\"","Temperature":"hot","Timestamp":"{time}","EventId":"escaped-wrong"}}"#
        ),
    ];
    // Valid readings of new devices, odd in form: one alerts (above 80), the others do not.
    let accepted = [
        format!(
            r#"{{"DeviceId":"q-1","Temperature":95,"Timestamp":"{time}","EventId":"hot-integer"}}"#
        ),
        format!(
            r#"{{"DeviceId":"q-\u0032","Location":"Lyon","Temperature":2.05e1,"Timestamp":"{time}","EventId":"escaped-ok"}}"#
        ),
        format!(
            r#"{{ "EventId" : "spaced" , "Timestamp" : "{time}" , "Temperature" : -0.0e0 , "DeviceId" : "q-3" , "Location" : null }}"#
        ),
    ];
    let input = dir.path().join("telemetry.jsonl");
    write_with_lines_in_the_middle(
        &input,
        &good,
        refused.iter().chain(&accepted).map(String::as_str),
    );
    // One partition, so that the odd events come after the batches the plugin learnt from.
    let options = PipelineOptions {
        partitions: 1,
        batch_max_events: 64,
        ..PipelineOptions::default()
    };
    let paths = anomaly_pipeline(dir.path(), &input, &options);

    run_to_completion(&paths.config, Duration::from_secs(120));

    let letters = read_jsonl_dir(&paths.dead_letters);
    let reasons: BTreeMap<&str, (&str, &str)> = letters
        .iter()
        .map(|letter| {
            (
                letter["body"].as_str().expect("body"),
                (
                    letter["kind"].as_str().expect("kind"),
                    letter["reason"].as_str().expect("reason"),
                ),
            )
        })
        .collect();
    assert_eq!(letters.len(), refused.len(), "{letters:#?}");
    for body in &refused {
        let (kind, reason) = reasons
            .get(body.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {body}"));
        assert_eq!(*kind, "rejected", "{body}");
        let expected = body_reason(body);
        assert!(
            reason.contains(&expected),
            "{body}: reason `{reason}`, reading the body gives `{expected}`"
        );
    }
    let alerts = read_jsonl_dir(&paths.alerts);
    let (odd, generated): (Vec<Value>, Vec<Value>) = alerts
        .into_iter()
        .partition(|a| a["DeviceId"].as_str().is_some_and(|d| d.starts_with("q-")));
    assert_alerts_match(&generated, &expected_alerts(&good));
    assert_eq!(odd.len(), 1, "{odd:#?}");
    assert_eq!(odd[0]["EventId"], "hot-integer");
    assert_eq!(odd[0]["Severity"], "Critical");
    assert_eq!(odd[0]["Temperature"], 95.0);
    let table = read_delta(&paths.raw_table);
    assert_eq!(table.rows.len(), good.len() + accepted.len());
}

/// Writes `good` readings to `input` as JSON Lines, with `lines` as they are between their two
/// halves.
fn write_with_lines_in_the_middle<'a>(
    input: &std::path::Path,
    good: &[Reading],
    lines: impl IntoIterator<Item = &'a str>,
) {
    let (head, tail) = good.split_at(good.len() / 2);
    let mut text = String::new();
    for reading in head {
        text.push_str(&reading.to_json());
        text.push('\n');
    }
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    for reading in tail {
        text.push_str(&reading.to_json());
        text.push('\n');
    }
    std::fs::write(input, text).expect("write input");
}
