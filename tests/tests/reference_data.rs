//! Reference data end to end, through the `weir` binary and the `booking-categorize` plugin (which
//! looks the venue's city up by `VenueId`): a CSV table reloaded while the pipeline runs (later
//! events see the new rows, earlier ones kept the old), and a Delta table (written by Python's
//! `deltalake`, partitioned) read as reference data.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::{WeirProcess, plugin_path, python_command, read_jsonl_dir, run_to_completion};

fn booking(order: &str, venue: &str) -> String {
    json!({
        "OrderId": order, "CustomerId": "c1", "EventName": "Hamlet", "EventType": "Play",
        "VenueId": venue, "Seats": [{"SeatId": "A1", "Price": 30.0}],
        "Timestamp": "2026-11-22T18:00:00Z",
    })
    .to_string()
}

fn categorize_config(dir: &Path, table: &str, follow: bool) -> std::path::PathBuf {
    let text = format!(
        r#"
[checkpoint]
dir = "checkpoints"
interval = "200ms"

[sources.bookings]
kind = "file"
path = "bookings.jsonl"
follow = {follow}

[sinks.seats]
kind = "file"
path = "seats"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.bookings]
source = "bookings"
dead_letter = "dead_letters"
batch = {{ max_events = 16, max_wait = "20ms" }}

[[pipelines.bookings.stages]]
name = "categorize"
plugin = "{plugin}"
outputs = {{ seats = "seats", payments = "dead_letters" }}
reference = {{ venues = {table} }}
"#,
        plugin = plugin_path("booking_categorize").display(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn city_of(rows: &[Value], order: &str) -> Option<Value> {
    rows.iter()
        .find(|r| r["OrderId"] == order)
        .map(|r| r["VenueCity"].clone())
}

fn wait_for(process: &mut WeirProcess, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline && process.is_running(),
            "{what} did not happen; log:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_csv_reference_table_is_reloaded_while_the_pipeline_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let venues = dir.path().join("venues.csv");
    std::fs::write(&venues, "VenueId,City\nV01,London\nV02,Paris\n").expect("venues");
    let input = dir.path().join("bookings.jsonl");
    std::fs::write(
        &input,
        format!("{}\n{}\n", booking("o1", "V01"), booking("o2", "V03")),
    )
    .expect("input");
    let config = categorize_config(
        dir.path(),
        r#"{ path = "venues.csv", key = "VenueId", reload_interval = "100ms" }"#,
        true,
    );
    let mut process = WeirProcess::run(&config);
    let seats = dir.path().join("seats");
    wait_for(&mut process, "the first bookings' rows", || {
        read_jsonl_dir(&seats).len() == 2
    });
    let rows = read_jsonl_dir(&seats);
    assert_eq!(city_of(&rows, "o1"), Some(json!("London")));
    assert_eq!(
        city_of(&rows, "o2"),
        Some(Value::Null),
        "V03 is not in the table"
    );

    // The table changes: V01 moves, V03 appears. Once reloaded, new events see the new rows.
    std::fs::write(
        &venues,
        "VenueId,City\nV01,Leeds\nV03,\"Saint-Denis, Paris\"\n",
    )
    .expect("venues");
    wait_for(&mut process, "the reload", || {
        process_log_contains(&config, "reference table reloaded")
    });
    let mut appended = std::fs::read_to_string(&input).expect("input");
    appended.push_str(&format!(
        "{}\n{}\n",
        booking("o3", "V01"),
        booking("o4", "V03")
    ));
    std::fs::write(&input, appended).expect("append");
    wait_for(&mut process, "the later bookings' rows", || {
        read_jsonl_dir(&seats).len() == 4
    });
    process.terminate();
    assert!(process.wait(Duration::from_secs(60)).success());
    let rows = read_jsonl_dir(&seats);
    assert_eq!(
        city_of(&rows, "o1"),
        Some(json!("London")),
        "written before the change"
    );
    assert_eq!(city_of(&rows, "o3"), Some(json!("Leeds")));
    assert_eq!(city_of(&rows, "o4"), Some(json!("Saint-Denis, Paris")));
}

fn process_log_contains(config: &Path, text: &str) -> bool {
    std::fs::read_to_string(config.with_extension("log")).is_ok_and(|log| log.contains(text))
}

#[test]
fn a_delta_table_and_a_json_file_serve_as_reference_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A partitioned Delta table written by another tool.
    let script = r#"
import sys, pandas
from deltalake import write_deltalake
frame = pandas.DataFrame({"VenueId": ["V01", "V02", "V08"], "City": ["London", "London", "Saint-Denis"],
                          "Country": ["UK", "UK", "France"], "Capacity": [1400, 2256, 80698]})
write_deltalake(sys.argv[1], frame, partition_by=["Country"])
"#;
    let table = dir.path().join("venues_delta");
    let status = python_command(script)
        .arg(&table)
        .status()
        .expect("run python");
    assert!(status.success());
    let input = dir.path().join("bookings.jsonl");
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n{}\n",
            booking("o1", "V01"),
            booking("o2", "V08"),
            booking("o3", "V05")
        ),
    )
    .expect("input");
    let config = categorize_config(
        dir.path(),
        r#"{ path = "venues_delta", key = "VenueId" }"#,
        false,
    );
    run_to_completion(&config, Duration::from_secs(120));
    let rows = read_jsonl_dir(&dir.path().join("seats"));
    assert_eq!(city_of(&rows, "o1"), Some(json!("London")));
    assert_eq!(city_of(&rows, "o2"), Some(json!("Saint-Denis")));
    assert_eq!(city_of(&rows, "o3"), Some(Value::Null));

    // The same rows as JSON Lines.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("venues.jsonl"),
        "{\"VenueId\":\"V05\",\"City\":\"London\"}\n",
    )
    .expect("venues");
    std::fs::write(
        dir.path().join("bookings.jsonl"),
        format!("{}\n", booking("o3", "V05")),
    )
    .expect("input");
    let config = categorize_config(
        dir.path(),
        r#"{ path = "venues.jsonl", key = "VenueId" }"#,
        false,
    );
    run_to_completion(&config, Duration::from_secs(120));
    let rows = read_jsonl_dir(&dir.path().join("seats"));
    assert_eq!(city_of(&rows, "o3"), Some(json!("London")));
}
