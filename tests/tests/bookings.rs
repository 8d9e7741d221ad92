//! The bookings workload, as `examples/bookings.toml` configures it (categorize, then the interval
//! join of seats with payments within 2 minutes), on bookings and payments generated here: the
//! Delta table `bookings_fact`, read back with Python's `deltalake`, equals the join derived
//! relationally from the same orders; the run's summary counts pairs and unmatched events. Then
//! crash recovery: `weir` killed with SIGKILL while joins are pending gives the same table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use weir_tests::bookings::{JOIN_WITHIN_MS, Order, assert_fact, generated_orders, write_orders};
use weir_tests::examples::{Adapt, adapt_example};
use weir_tests::{WeirProcess, read_delta, read_jsonl_dir, run_to_completion};

fn bookings_pipeline(dir: &Path, input: &Path, checkpoint_interval: &str) -> PathBuf {
    adapt_example(
        "bookings.toml",
        dir,
        &Adapt {
            pipelines: &["bookings"],
            input,
            partitions: 4,
            key_field: "OrderId",
            checkpoint_interval,
            batch_max_events: 128,
        },
    )
}

#[test]
fn bookings_fact_equals_the_join_of_seats_with_payments_within_two_minutes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let orders = generated_orders(1500, 3);
    let input = dir.path().join("bookings.jsonl");
    write_orders(&input, &orders);
    let config = bookings_pipeline(dir.path(), &input, "500ms");
    let log = run_to_completion(&config, Duration::from_secs(180));

    let table = read_delta(&dir.path().join("bookings_fact"));
    assert_eq!(table.partition_columns, ["BookingDate"]);
    assert_fact(&table.rows, &orders);
    assert!(read_jsonl_dir(&dir.path().join("dead_letters")).is_empty());

    // The summary counts what the join did, worked out from the orders.
    let in_time = |o: &&Order| o.payment.is_some_and(|(d, _)| d <= JOIN_WITHIN_MS);
    let pairs: usize = orders.iter().filter(in_time).map(|o| o.seats.len()).sum();
    let alone: usize = orders
        .iter()
        .filter(|o| !in_time(o))
        .map(|o| o.seats.len())
        .sum();
    let late_payments = orders
        .iter()
        .filter(|o| o.payment.is_some_and(|(d, _)| d > JOIN_WITHIN_MS))
        .count();
    assert!(pairs > 0 && alone > 0 && late_payments > 0);
    let summary = format!(
        "{pairs} joined pairs, {alone} unmatched emitted alone, {late_payments} unmatched dropped"
    );
    assert!(log.contains(&summary), "expected `{summary}` in:\n{log}");
}

#[test]
fn killed_with_pending_joins_and_restarted_gives_the_same_fact_table() {
    // Large enough that three kills land before the input ends, even when the stream runs fast.
    let orders = generated_orders(14000, 9);
    let reference = tempfile::tempdir().expect("temp dir");
    let input = reference.path().join("bookings.jsonl");
    write_orders(&input, &orders);
    let config = bookings_pipeline(reference.path(), &input, "150ms");
    run_to_completion(&config, Duration::from_secs(300));
    let reference_rows = read_delta(&reference.path().join("bookings_fact")).rows;

    let crashed = tempfile::tempdir().expect("temp dir");
    let config = bookings_pipeline(crashed.path(), &input, "150ms");
    let mut kills = 0;
    for (round, delay) in [400u64, 300, 500, 300].into_iter().enumerate() {
        let mut process = WeirProcess::run(&config);
        process.wait_for_start(round + 1, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(delay));
        if process.is_running() {
            process.kill9();
            kills += 1;
        } else {
            break;
        }
    }
    run_to_completion(&config, Duration::from_secs(300));
    assert!(
        kills >= 3,
        "killed only {kills} times: the input is too small"
    );
    let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(log.contains("resuming from checkpoint"));

    let rows = read_delta(&crashed.path().join("bookings_fact")).rows;
    let canonical = |rows: &[Value]| {
        let mut all: Vec<String> = rows.iter().map(Value::to_string).collect();
        all.sort();
        all
    };
    let (got, want) = (canonical(&rows), canonical(&reference_rows));
    let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).collect();
    let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).collect();
    assert!(
        extra.is_empty() && missing.is_empty() && got.len() == want.len(),
        "after {kills} kills, {} rows against {}:\nnot in the uninterrupted run: {extra:#?}\nmissing: {missing:#?}",
        got.len(),
        want.len()
    );
    assert_fact(&rows, &orders);
}
