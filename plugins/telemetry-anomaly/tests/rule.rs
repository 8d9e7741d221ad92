//! The rule, run through the SDK's native harness (the same batch runner as the component).
//! Every expected value below is worked out by hand from the readings, not by the rule's code.

use telemetry_anomaly::process;
use weir_sdk::serde_json::{Value, json};
use weir_sdk::testing::{Harness, Outcome, TestEvent};

/// 2024-05-01T12:00:00Z, in milliseconds since the Unix epoch.
const T0: i64 = 1_714_564_800_000;

/// A reading of `device` at 12:`minute`:`second` (event time and `Timestamp` agree).
fn reading(device: &str, temperature: f64, minute: i64, second: i64) -> TestEvent {
    TestEvent::json(&body(device, temperature, minute, second))
        .at(T0 + minute * 60_000 + second * 1_000)
}

fn body(device: &str, temperature: f64, minute: i64, second: i64) -> Value {
    json!({
        "DeviceId": device,
        "Location": "Plant A",
        "DeviceType": "TemperatureSensor",
        "Temperature": temperature,
        "Humidity": 41.5,
        "Pressure": 1013.25,
        "BatteryLevel": 87.0,
        "SignalStrength": -67.0,
        "Timestamp": timestamp(minute, second),
        "EventId": event_id(device, minute, second),
    })
}

fn timestamp(minute: i64, second: i64) -> String {
    format!("2024-05-01T12:{minute:02}:{second:02}Z")
}

fn event_id(device: &str, minute: i64, second: i64) -> String {
    format!("{device}-12{minute:02}{second:02}")
}

/// The alert the rule must send for a reading built by [`reading`].
fn alert(
    device: &str,
    temperature: f64,
    minute: i64,
    second: i64,
    previous: Option<f64>,
    delta: Option<f64>,
    severity: &str,
) -> Value {
    json!({
        "DeviceId": device,
        "Location": "Plant A",
        "Temperature": temperature,
        "PrevTemperature": previous,
        "TempDelta": delta,
        "EventTime": timestamp(minute, second),
        "AlertType": "TemperatureAnomaly",
        "Severity": severity,
        "EventId": event_id(device, minute, second),
    })
}

fn run(
    harness: &mut Harness<
        impl Fn(&weir_sdk::Event<'_>, &mut weir_sdk::Context) -> weir_sdk::Result<()>,
    >,
    events: Vec<TestEvent>,
) -> Vec<Outcome> {
    let outcomes = harness.run_batch(events.clone());
    for (outcome, event) in outcomes.iter().zip(&events) {
        if outcome.rejection().is_none() {
            let rows = outcome.output("rows");
            assert_eq!(rows.len(), 1, "every valid reading goes to rows once");
            assert!(rows[0].forwarded, "rows get the input unchanged");
            assert_eq!(rows[0].bytes, event.body);
        }
    }
    outcomes
}

fn alerts(outcome: &Outcome) -> Vec<Value> {
    outcome.json("alerts")
}

#[test]
fn first_reading_of_a_device_alerts_only_on_absolute_limits() {
    let mut harness = Harness::new(process);
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 25.0, 0, 0),
            reading("d2", 85.5, 0, 0),
            reading("d3", -3.5, 0, 0),
            reading("d4", 80.0, 0, 0),
            reading("d5", 0.0, 0, 0),
        ],
    );
    assert_eq!(alerts(&outcomes[0]), Vec::<Value>::new());
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d2", 85.5, 0, 0, None, None, "Critical")]
    );
    assert_eq!(
        alerts(&outcomes[2]),
        [alert("d3", -3.5, 0, 0, None, None, "Medium")]
    );
    assert_eq!(
        alerts(&outcomes[3]),
        Vec::<Value>::new(),
        "80 is not above 80"
    );
    assert_eq!(
        alerts(&outcomes[4]),
        Vec::<Value>::new(),
        "0 is not below 0"
    );
    assert_eq!(harness.counter("alerts"), 2);
    assert_eq!(
        harness.state::<Value>("d1"),
        Some(json!({"temperature": 25.0, "time": T0}))
    );
}

#[test]
fn a_delta_above_15_alerts_and_one_at_or_below_does_not() {
    let mut harness = Harness::new(process);
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 20.0, 0, 0),
            reading("d1", 35.25, 0, 10), // +15.25
            reading("d1", 20.5, 0, 20),  // -14.75
            reading("d1", 35.5, 0, 30),  // +15.0 exactly
            reading("d1", 20.25, 0, 40), // -15.25
        ],
    );
    assert_eq!(alerts(&outcomes[0]), Vec::<Value>::new());
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d1", 35.25, 0, 10, Some(20.0), Some(15.25), "Medium")]
    );
    assert_eq!(alerts(&outcomes[2]), Vec::<Value>::new());
    assert_eq!(
        alerts(&outcomes[3]),
        Vec::<Value>::new(),
        "15 is not above 15"
    );
    assert_eq!(
        alerts(&outcomes[4]),
        [alert(
            "d1",
            20.25,
            0,
            40,
            Some(35.5),
            Some(-15.25),
            "Medium"
        )]
    );
}

#[test]
fn the_previous_reading_counts_up_to_exactly_five_minutes() {
    let mut harness = Harness::new(process);
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 20.0, 0, 0),
            reading("d1", 40.0, 5, 0), // 300 s later: +20, inside the window
            reading("d1", 20.0, 10, 1), // 301 s after 12:05:00: no previous reading
        ],
    );
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d1", 40.0, 5, 0, Some(20.0), Some(20.0), "Medium")]
    );
    assert_eq!(alerts(&outcomes[2]), Vec::<Value>::new());

    // One millisecond past the window is past it.
    let late = TestEvent::json(&body("d1", 45.0, 15, 1)).at(T0 + 601_000 + 300_001);
    let outcome = harness.run_event(late);
    assert_eq!(alerts(&outcome), Vec::<Value>::new());
    assert_eq!(
        harness.state::<Value>("d1"),
        Some(json!({"temperature": 45.0, "time": T0 + 901_001}))
    );
}

#[test]
fn severities() {
    let mut harness = Harness::new(process);
    let outcomes = run(
        &mut harness,
        vec![
            reading("hot", 70.0, 0, 0),
            reading("hot", 81.0, 1, 0), // +11 but above 80
            reading("hot", 60.0, 2, 0), // -21
            reading("hot", 95.5, 3, 0), // +35.5 and above 80
            reading("up", 20.0, 0, 0),
            reading("up", 41.0, 1, 0), // +21
            reading("up", 61.0, 2, 0), // +20: not above 20
            reading("cold", 10.0, 0, 0),
            reading("cold", -1.0, 1, 0),  // below 0, -11
            reading("cold", -25.0, 2, 0), // below 0, -24
        ],
    );
    let severity = |i: usize| -> Vec<Value> {
        alerts(&outcomes[i])
            .iter()
            .map(|a| a["Severity"].clone())
            .collect()
    };
    assert_eq!(severity(0), Vec::<Value>::new());
    assert_eq!(severity(1), ["Critical"]);
    assert_eq!(
        alerts(&outcomes[2]),
        [alert("hot", 60.0, 2, 0, Some(81.0), Some(-21.0), "High")]
    );
    assert_eq!(
        alerts(&outcomes[3]),
        [alert("hot", 95.5, 3, 0, Some(60.0), Some(35.5), "Critical")]
    );
    assert_eq!(severity(5), ["High"]);
    assert_eq!(severity(6), ["Medium"]);
    assert_eq!(
        alerts(&outcomes[8]),
        [alert("cold", -1.0, 1, 0, Some(10.0), Some(-11.0), "Medium")]
    );
    assert_eq!(severity(9), ["High"]);
    assert_eq!(harness.counter("alerts"), 7);
}

#[test]
fn state_is_carried_across_batches_and_cached_within_one() {
    let mut harness = Harness::new(process);
    run(&mut harness, vec![reading("d1", 20.0, 0, 0)]);
    assert_eq!(
        harness.state_calls(),
        1,
        "one write call: the (small, here empty) state came whole with the cache check, no get"
    );

    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 36.0, 1, 0),
            reading("d1", 52.5, 1, 30),
            reading("d1", 53.0, 2, 0),
        ],
    );
    assert_eq!(
        alerts(&outcomes[0]),
        [alert("d1", 36.0, 1, 0, Some(20.0), Some(16.0), "Medium")]
    );
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d1", 52.5, 1, 30, Some(36.0), Some(16.5), "Medium")]
    );
    assert_eq!(alerts(&outcomes[2]), Vec::<Value>::new());
    assert_eq!(
        harness.state_calls(),
        2,
        "the device's state is cached from the first batch: one write call for the second"
    );
    assert_eq!(
        harness.state::<Value>("d1"),
        Some(json!({"temperature": 53.0, "time": T0 + 120_000}))
    );
}

#[test]
fn an_out_of_order_reading_is_checked_but_does_not_replace_the_latest() {
    let mut harness = Harness::new(process);
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 20.0, 2, 0),
            reading("d1", 90.0, 1, 0), // older than 12:02: no previous, but above 80
            reading("d1", 36.0, 3, 0), // compared with 20.0 at 12:02
        ],
    );
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d1", 90.0, 1, 0, None, None, "Critical")]
    );
    assert_eq!(
        alerts(&outcomes[2]),
        [alert("d1", 36.0, 3, 0, Some(20.0), Some(16.0), "Medium")]
    );
    assert_eq!(harness.counter("out_of_order_readings"), 1);
}

#[test]
fn a_duplicate_reading_does_not_alert_twice_on_delta() {
    let mut harness = Harness::new(process);
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 20.0, 0, 0),
            reading("d1", 40.0, 1, 0),
            reading("d1", 40.0, 1, 0),
        ],
    );
    assert_eq!(alerts(&outcomes[1]).len(), 1);
    assert_eq!(
        alerts(&outcomes[2]),
        Vec::<Value>::new(),
        "same time, delta 0"
    );
}

#[test]
fn invalid_readings_are_rejected_with_the_reason_and_change_nothing() {
    let mut harness = Harness::new(process);
    run(&mut harness, vec![reading("d1", 20.0, 0, 0)]);
    let without = |field: &str| {
        let mut value = body("d1", 99.0, 1, 0);
        if let Value::Object(map) = &mut value {
            map.remove(field);
        }
        TestEvent::json(&value).at(T0 + 60_000)
    };
    let events = vec![
        TestEvent::new(r#"{"DeviceId":"d1","Temperature":99.0"#).at(T0 + 60_000),
        without("DeviceId"),
        without("Temperature"),
        without("Timestamp"),
        without("EventId"),
        TestEvent::new(r#"{"DeviceId":"d1","Temperature":"hot"}"#).at(T0 + 60_000),
        TestEvent::new(r#"{"DeviceId":"d1","Temperature":99.0,"Humidity":"wet","Timestamp":"x","EventId":"y"}"#).at(T0 + 60_000),
        TestEvent::new(r#"{"DeviceId":"d1","Temperature":null}"#).at(T0 + 60_000),
        TestEvent::new("[1, 2]").at(T0 + 60_000),
    ];
    let outcomes = run(&mut harness, events);
    let reasons: Vec<Option<&str>> = outcomes.iter().map(Outcome::rejection).collect();
    assert_eq!(
        reasons,
        [
            Some("malformed JSON: EOF while parsing an object at line 1 column 35"),
            Some("missing field `DeviceId`"),
            Some("missing field `Temperature`"),
            Some("missing field `Timestamp`"),
            Some("missing field `EventId`"),
            Some(r#"invalid type: string "hot", expected f64 at line 1 column 36"#),
            Some(r#"invalid type: string "wet", expected f64 at line 1 column 52"#),
            Some("invalid type: null, expected f64 at line 1 column 35"),
            // serde reads an array as the struct's fields in order: DeviceId first.
            Some("invalid type: integer `1`, expected a string at line 1 column 2"),
        ]
    );
    for outcome in &outcomes {
        assert!(
            outcome.records.is_empty(),
            "a rejected reading goes neither to rows nor to alerts"
        );
    }
    assert_eq!(
        harness.state::<Value>("d1"),
        Some(json!({"temperature": 20.0, "time": T0}))
    );
}

#[test]
fn optional_fields_may_be_missing_or_null() {
    let mut harness = Harness::new(process);
    let body = r#"{"DeviceId":"d9","Temperature":81.5,"Timestamp":"2024-05-01T12:00:00Z","EventId":"e-1","Humidity":null}"#;
    let outcome = harness.run_event(TestEvent::new(body).at(T0));
    assert_eq!(
        outcome.json("alerts"),
        [json!({
            "DeviceId": "d9", "Location": null, "Temperature": 81.5, "PrevTemperature": null,
            "TempDelta": null, "EventTime": "2024-05-01T12:00:00Z", "AlertType": "TemperatureAnomaly",
            "Severity": "Critical", "EventId": "e-1",
        })]
    );
    assert!(outcome.forwarded_to("rows"));
}

#[test]
fn escaped_strings_are_accepted() {
    let mut harness = Harness::new(process);
    let body = r#"{"DeviceId":"d\"1","Location":"Caf\u00e9","Temperature":81.5,"Timestamp":"t","EventId":"e"}"#;
    let outcome = harness.run_event(TestEvent::new(body).at(T0));
    let alert = &outcome.json("alerts")[0];
    assert_eq!(alert["DeviceId"], "d\"1");
    assert_eq!(alert["Location"], "Café");
    assert!(harness.state::<Value>("d\"1").is_some());
}

#[test]
fn thresholds_come_from_the_stage_config() {
    let config = json!({
        "delta_threshold": 5.0,
        "high_delta": 8.0,
        "max_temperature": 30.0,
        "min_temperature": 10.0,
        "lag_window_seconds": 60,
    });
    let mut harness = Harness::new(process).with_config(config);
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 20.0, 0, 0),
            reading("d1", 25.5, 1, 0), // +5.5 within 60 s
            reading("d1", 31.0, 2, 0), // above 30
            reading("d1", 22.0, 3, 1), // -9, but 61 s later: outside the window
            reading("d1", 13.0, 4, 0), // -9 within 59 s: High
            reading("d1", 9.5, 4, 30), // below 10, -3.5
        ],
    );
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d1", 25.5, 1, 0, Some(20.0), Some(5.5), "Medium")]
    );
    assert_eq!(
        alerts(&outcomes[2]),
        [alert("d1", 31.0, 2, 0, Some(25.5), Some(5.5), "Critical")]
    );
    assert_eq!(alerts(&outcomes[3]), Vec::<Value>::new());
    assert_eq!(
        alerts(&outcomes[4]),
        [alert("d1", 13.0, 4, 0, Some(22.0), Some(-9.0), "High")]
    );
    assert_eq!(
        alerts(&outcomes[5]),
        [alert("d1", 9.5, 4, 30, Some(13.0), Some(-3.5), "Medium")]
    );
}

#[test]
fn a_partial_config_keeps_the_other_defaults() {
    let mut harness = Harness::new(process).with_config(json!({"max_temperature": 50.0}));
    let outcomes = run(
        &mut harness,
        vec![
            reading("d1", 20.0, 0, 0),
            reading("d1", 36.0, 1, 0),
            reading("d2", 55.0, 0, 0),
        ],
    );
    assert_eq!(
        alerts(&outcomes[1]),
        [alert("d1", 36.0, 1, 0, Some(20.0), Some(16.0), "Medium")]
    );
    assert_eq!(
        alerts(&outcomes[2]),
        [alert("d2", 55.0, 0, 0, None, None, "Critical")]
    );
}

#[test]
fn a_misspelt_setting_rejects_with_a_clear_reason() {
    let mut harness = Harness::new(process).with_config(json!({"max_temprature": 50.0}));
    let outcome = harness.run_event(reading("d1", 20.0, 0, 0));
    let reason = outcome.rejection().unwrap_or_default();
    assert!(
        reason.starts_with("invalid stage config: unknown field `max_temprature`, expected one of"),
        "{reason}"
    );
}
