//! Pipelines with several sources, through `weir run`: bookings and payments as two sources (two
//! files), joined in event time within 2 minutes into the Delta table `bookings_fact`, which
//! equals the join derived relationally from the same orders; the same when the payments pause
//! for far longer than the join's bound; the same row for row after SIGKILLs; the same from two
//! hubs of the Event Hubs test endpoint, from two Kafka topics (tansu on loopback) and from a hub
//! and a topic; the example's two simulators as one simulator of both streams; and what is
//! refused at start, with file, line and key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_tests::bookings::{
    Order, assert_fact, example_venue_cities, expected_fact, generated_orders, streams,
};
use weir_tests::eventhubs::TestEndpoint;
use weir_tests::servers::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, wait_for};
use weir_tests::{WeirProcess, plugin_path, read_delta, read_jsonl_dir, run_to_completion};

/// What a test varies in the two-source bookings pipeline.
struct Setup<'a> {
    /// The payments source is followed (`follow = true`).
    follow_payments: bool,
    checkpoint_interval: &'a str,
    partitions: (u32, u32),
    /// The two source tables, in place of the two files (two hubs of the test endpoint).
    sources: Option<&'a str>,
}

const DEFAULT: Setup<'static> = Setup {
    follow_payments: false,
    checkpoint_interval: "500ms",
    partitions: (4, 4),
    sources: None,
};

/// `dir/weir.toml`: the bookings workload of `examples/bookings.toml` reading bookings and
/// payments from two files: bookings enter the categorize stage, payments the join's right input
/// directly, each source with its own event-time table.
fn two_source_pipeline(dir: &Path, setup: &Setup<'_>) -> PathBuf {
    let categorize = plugin_path("booking_categorize");
    let join = plugin_path("booking_join");
    let venues = weir_tests::workspace_dir().join("examples/reference/venues.csv");
    let fact_columns = fact_columns();
    let text = format!(
        r#"[checkpoint]
dir = "{dir}/checkpoints"
interval = "{interval}"

[plugins]
store_dir = "{dir}/plugins"

[sources.bookings]
kind = "file"
path = "{dir}/bookings.jsonl"
partitions = {bookings_partitions}
key_field = "OrderId"

[sources.payments]
kind = "file"
path = "{dir}/payments.jsonl"
partitions = {payments_partitions}
key_field = "OrderId"
follow = {follow}

[sinks.bookings_fact]
kind = "delta"
path = "{dir}/bookings_fact"
partition_by = ["BookingDate"]
columns = [
{fact_columns}
]

[sinks.dead_letters]
kind = "file"
path = "{dir}/dead_letters"

[pipelines.bookings]
sources = ["bookings", "payments"]
dead_letter = "dead_letters"
batch = {{ max_events = 128, max_wait = "20ms" }}

[pipelines.bookings.event_time.sources.bookings]
field = "Timestamp"

# Payments arrive up to a second out of order.
[pipelines.bookings.event_time.sources.payments]
field = "Timestamp"
out_of_order = {{ tolerance = "5s", policy = "adjust" }}

[[pipelines.bookings.stages]]
name = "categorize"
plugin = "{categorize}"
input = "bookings"
outputs = {{ seats = "join.left" }}
reference = {{ venues = {{ path = "{venues}", key = "VenueId" }} }}

[[pipelines.bookings.stages]]
name = "join"
plugin = "{join}"
right = "payments"
join = {{ key = "OrderId", within = "2m", unmatched_left = "emit", unmatched_right = "drop" }}
outputs = {{ rows = "bookings_fact" }}
"#,
        dir = dir.display(),
        interval = setup.checkpoint_interval,
        bookings_partitions = setup.partitions.0,
        payments_partitions = setup.partitions.1,
        follow = setup.follow_payments,
        categorize = categorize.display(),
        join = join.display(),
        venues = venues.display(),
    );
    let text = match setup.sources {
        Some(sources) => {
            let start = text.find("[sources.bookings]").expect("sources");
            let end = text.find("[sinks.bookings_fact]").expect("sinks");
            format!("{}{sources}\n\n{}", &text[..start], &text[end..])
        }
        None => text,
    };
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The fact table's columns, as `examples/bookings.toml` has them.
fn fact_columns() -> String {
    let example = weir_tests::workspace_dir().join("examples/bookings.toml");
    let text = std::fs::read_to_string(example).expect("read example");
    let config: toml::Table = text.parse().expect("example is TOML");
    let columns = config["sinks"]["bookings_fact"]["columns"]
        .as_array()
        .expect("columns");
    columns
        .iter()
        .map(|c| format!("  {c},"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text).expect("write input");
}

/// Writes the orders' two streams into `dir`.
fn write_streams(dir: &Path, orders: &[Order]) -> (Vec<String>, Vec<String>) {
    let (bookings, payments) = streams(orders);
    write_lines(&dir.join("bookings.jsonl"), &bookings);
    write_lines(&dir.join("payments.jsonl"), &payments);
    (bookings, payments)
}

#[test]
fn two_sources_joined_give_the_fact_of_a_plain_fold_over_both_inputs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let orders = generated_orders(1200, 5);
    write_streams(dir.path(), &orders);
    let config = two_source_pipeline(dir.path(), &DEFAULT);
    let log = run_to_completion(&config, Duration::from_secs(180));
    let table = read_delta(&dir.path().join("bookings_fact"));
    assert_fact(&table.rows, &orders);
    assert!(
        read_jsonl_dir(&dir.path().join("dead_letters")).is_empty(),
        "{log}"
    );
}

#[test]
fn a_source_pausing_longer_than_the_join_bound_holds_the_watermark_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let orders = generated_orders(900, 11);
    let (_, payments) = write_streams(dir.path(), &orders);
    // Only the first third of the payments at first: the bookings run ahead by many times the
    // join's 2 minutes (in event time) while the payments pause.
    let first = payments.len() / 3;
    write_lines(&dir.path().join("payments.jsonl"), &payments[..first]);
    let config = two_source_pipeline(
        dir.path(),
        &Setup {
            follow_payments: true,
            ..DEFAULT
        },
    );
    let process = WeirProcess::run(&config);
    // Long enough for every booking to be read (a few thousand lines).
    std::thread::sleep(Duration::from_secs(4));
    // What was written meanwhile is right: no booking was given up on (written unpaid) while
    // its payment was still to come.
    let table = dir.path().join("bookings_fact");
    if table.join("_delta_log").exists() {
        let expected = expected_fact(&orders, &example_venue_cities());
        let rows = read_delta(&table).rows;
        assert!(
            rows.len() < expected.len(),
            "the paused payments were not all read"
        );
        for row in rows {
            let key = (
                row["OrderId"].as_str().expect("OrderId").to_owned(),
                row["SeatId"].as_str().expect("SeatId").to_owned(),
            );
            assert_eq!(
                row["PaymentId"], expected[&key]["PaymentId"],
                "a booking was written before its paused payment came: {row}"
            );
        }
    }
    // The rest of the payments, then far later ones for orders that do not exist (64 of them,
    // reaching every partition), so that each partition's payments watermark passes every
    // booking's bound (a followed file never ends). The join drops them (`unmatched_right =
    // "drop"`).
    let mut rest: Vec<String> = payments[first..].to_vec();
    // Two rounds further apart than the payments' 5 s tolerance, so that the first is released.
    for at in ["2026-11-23T18:00:00Z", "2026-11-23T18:00:10Z"] {
        for n in 0..64 {
            rest.push(format!(
                r#"{{"PaymentId":"p-x{n}","OrderId":"x{n}","Method":"Card","Amount":1.0,"Status":"Succeeded","Timestamp":"{at}"}}"#
            ));
        }
    }
    let mut appended = rest.join("\n");
    appended.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("payments.jsonl"))
        .expect("open payments");
    std::io::Write::write_all(&mut file, appended.as_bytes()).expect("append payments");
    let seats: usize = orders.iter().map(|o| o.seats.len()).sum();
    wait_for(
        "every seat in the fact table",
        Duration::from_secs(120),
        || table.join("_delta_log").exists() && read_delta(&table).rows.len() >= seats,
    );
    process.terminate();
    let log = process.log_text();
    let status = process.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_fact(&read_delta(&table).rows, &orders);
}

#[test]
fn when_every_source_goes_quiet_the_last_events_are_not_held_back() {
    // Both files followed (they never end), each source idle after 1 s: once both are quiet, the
    // merge lets go of what their clocks released, so every paid seat reaches the table without
    // new input (unpaid bookings wait for time to pass their bound, as with one source).
    let dir = tempfile::tempdir().expect("temp dir");
    let mut orders = generated_orders(300, 23);
    // A last order, booked and paid after every other event: its booking and its payment are
    // each source's last event, the ones a merge of quiet sources could hold back.
    let latest = orders
        .iter()
        .map(|o| o.time_ms + o.payment.map_or(0, |(delay, _)| delay.max(0)))
        .max()
        .expect("orders");
    let mut last = generated_orders(1, 29).remove(0);
    last.order_id = "o-99999".into();
    last.venue = "V01".into();
    last.time_ms = latest + 60_000;
    last.payment = Some((1_000, false));
    orders.push(last);
    write_streams(dir.path(), &orders);
    let config = two_source_pipeline(
        dir.path(),
        &Setup {
            follow_payments: true,
            // One partition: no other partition's watermark for the quiet one to follow.
            partitions: (1, 1),
            ..DEFAULT
        },
    );
    let text = std::fs::read_to_string(&config).expect("read config");
    let text = text
        .replace(
            "key_field = \"OrderId\"\n\n[sources.payments]",
            "key_field = \"OrderId\"\nfollow = true\n\n[sources.payments]",
        )
        .replace(
            "[pipelines.bookings.event_time.sources.bookings]\nfield = \"Timestamp\"",
            "[pipelines.bookings.event_time.sources.bookings]\nfield = \"Timestamp\"\nidle_timeout = \"1s\"",
        )
        .replace(
            "out_of_order = { tolerance = \"5s\", policy = \"adjust\" }",
            "idle_timeout = \"1s\"",
        );
    assert_eq!(text.matches("idle_timeout").count(), 2, "{text}");
    assert_eq!(text.matches("follow = true").count(), 2, "{text}");
    std::fs::write(&config, text).expect("write config");
    let expected = expected_fact(&orders, &example_venue_cities());
    let paid: Vec<_> = expected
        .iter()
        .filter(|(_, row)| !row["PaymentId"].is_null())
        .map(|(key, _)| key.clone())
        .collect();
    assert!(paid.len() > 100, "the orders have paid seats");
    let process = WeirProcess::run(&config);
    let table = dir.path().join("bookings_fact");
    let has_every_paid_seat = || {
        if !table.join("_delta_log").exists() {
            return false;
        }
        let keys: std::collections::BTreeSet<(String, String)> = read_delta(&table)
            .rows
            .iter()
            .map(|row| {
                (
                    row["OrderId"].as_str().unwrap_or_default().to_owned(),
                    row["SeatId"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        paid.iter().all(|key| keys.contains(key))
    };
    wait_for(
        "every paid seat in the fact table while both inputs are quiet",
        Duration::from_secs(45),
        has_every_paid_seat,
    );
    process.terminate();
    let log = process.log_text();
    let status = process.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let rows = read_delta(&table).rows;
    let mut seen = std::collections::BTreeSet::new();
    for row in &rows {
        let key = (
            row["OrderId"].as_str().expect("OrderId").to_owned(),
            row["SeatId"].as_str().expect("SeatId").to_owned(),
        );
        let want = &expected[&key];
        assert_eq!(row["PaymentId"], want["PaymentId"], "{row} vs {want}");
        assert!(seen.insert(key), "written twice: {row}");
    }
}

#[test]
fn killed_several_times_the_two_source_table_equals_the_uninterrupted_run() {
    let orders = generated_orders(12000, 13);
    let setup = Setup {
        checkpoint_interval: "150ms",
        ..DEFAULT
    };
    let reference = tempfile::tempdir().expect("temp dir");
    write_streams(reference.path(), &orders);
    let config = two_source_pipeline(reference.path(), &setup);
    run_to_completion(&config, Duration::from_secs(300));
    let mut reference_rows = read_delta(&reference.path().join("bookings_fact")).rows;

    let crashed = tempfile::tempdir().expect("temp dir");
    write_streams(crashed.path(), &orders);
    let config = two_source_pipeline(crashed.path(), &setup);
    let mut kills = 0;
    for (round, delay) in [400u64, 300, 500, 300].into_iter().enumerate() {
        let mut process = WeirProcess::run(&config);
        process.wait_for_start(round + 1, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(delay));
        if !process.is_running() {
            break;
        }
        process.kill9();
        kills += 1;
    }
    assert!(kills >= 2, "the run ended before it could be killed twice");
    run_to_completion(&config, Duration::from_secs(300));
    let mut rows = read_delta(&crashed.path().join("bookings_fact")).rows;
    let key = |row: &serde_json::Value| (row["OrderId"].to_string(), row["SeatId"].to_string());
    reference_rows.sort_by_key(key);
    rows.sort_by_key(key);
    assert_eq!(
        rows.len(),
        reference_rows.len(),
        "rows lost or written twice"
    );
    assert_eq!(rows, reference_rows, "the table differs row for row");
    assert_fact(&rows, &orders);
}

/// Runs `weir run` on `config` and returns its log once it has exited with a failure.
fn refused(config: &Path) -> String {
    let mut process = WeirProcess::run(config);
    wait_for("weir to exit", Duration::from_secs(60), || {
        !process.is_running()
    });
    let text = process.log_text();
    let status = process.wait(Duration::from_secs(5));
    assert!(!status.success(), "weir should refuse to start:\n{text}");
    text
}

/// The line of `config` that holds `needle`, as `weir.toml:<line>:`.
fn line_of(config: &Path, needle: &str) -> String {
    let text = std::fs::read_to_string(config).expect("config");
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .expect("the line");
    format!("weir.toml:{}:", line + 1)
}

#[test]
fn mismatched_partitions_unknown_sources_and_sourceless_join_sides_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_streams(dir.path(), &generated_orders(10, 1));
    let config = two_source_pipeline(
        dir.path(),
        &Setup {
            partitions: (4, 2),
            ..DEFAULT
        },
    );
    let log = refused(&config);
    assert!(
        log.contains(&line_of(&config, "sources = ["))
            && log.contains("`pipelines.bookings.sources`")
            && log.contains("`bookings` has 4 partitions, `payments` has 2"),
        "{log}"
    );

    let config = two_source_pipeline(dir.path(), &DEFAULT);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            r#"sources = ["bookings", "payments"]"#,
            r#"sources = ["bookings", "payment"]"#,
        ),
    )
    .expect("write");
    let log = refused(&config);
    assert!(
        log.contains(&line_of(&config, "sources = ["))
            && log.contains("`pipelines.bookings.sources[1]`: source `payment` is not defined"),
        "{log}"
    );

    std::fs::write(
        &config,
        text.replace(r#"right = "payments""#, r#"right = "payment""#),
    )
    .expect("write");
    let log = refused(&config);
    assert!(
        log.contains(&line_of(&config, "right = "))
            && log.contains(
                "`pipelines.bookings.stages[1].right`: `payment` is not a source of this pipeline (its sources: `bookings`, `payments`)"
            ),
        "{log}"
    );
}

#[test]
fn two_hubs_joined_give_the_fact_of_a_plain_fold_over_both_inputs() {
    let endpoint = TestEndpoint::start(&[("bookingstopic", 4), ("paymentstopic", 4)]);
    let orders = generated_orders(600, 17);
    let (bookings, payments) = streams(&orders);
    endpoint.publish_keyed("bookingstopic", &keyed(&bookings));
    endpoint.publish_keyed("paymentstopic", &keyed(&payments));
    let sources = format!(
        "{}\n{}",
        hub_source(&endpoint, "bookings", "bookingstopic", true),
        hub_source(&endpoint, "payments", "paymentstopic", true)
    );
    assert_two_source_fact(&sources, &orders);
}

/// The `[sources.NAME]` table of hub `hub` of the test endpoint, read from its start, and with
/// `stop_at_end` to its end.
fn hub_source(endpoint: &TestEndpoint, name: &str, hub: &str, stop_at_end: bool) -> String {
    format!(
        r#"[sources.{name}]
kind = "eventhubs"
connection_string = "{connection}"
custom_endpoint = "{custom}"
consumer_group = "$Default"
start_position = "earliest"
stop_at_end = {stop_at_end}
"#,
        connection = endpoint.endpoint.connection_string(hub),
        custom = endpoint.endpoint.custom_endpoint(),
    )
}

/// Owner per pipeline partition of pipeline `bookings`, from the store `config` names (only live
/// claims).
fn owners(config: &Path, expiry_ms: i64) -> std::collections::BTreeMap<u32, String> {
    let now = chrono::Utc::now().timestamp_millis();
    weir_tests::scale_out::claims_of(config, "bookings")
        .into_iter()
        .filter(|(_, (owner, renewed))| !owner.is_empty() && now - renewed < expiry_ms)
        .map(|(partition, (owner, _))| (partition, owner))
        .collect()
}

/// `(OrderId, line)` of each line, for publishing keyed by order.
fn keyed(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
            let key = value["OrderId"].as_str().expect("OrderId").to_owned();
            (key, line.clone())
        })
        .collect()
}

#[test]
fn three_processes_share_two_hubs_by_pipeline_partition_and_survive_one_being_killed() {
    scale_out_over_two_hubs(None);
}

#[test]
fn the_same_with_claims_and_checkpoints_in_blob_storage() {
    let azurite = Azurite::start();
    azurite.create_container("checkpoints");
    let store = format!(
        "azure_blob = {{ account = \"{AZURITE_ACCOUNT}\", container = \"checkpoints\", endpoint = \"{}\", options = {{ azure_storage_account_key = \"{AZURITE_KEY}\" }} }}",
        azurite.blob_endpoint()
    );
    scale_out_over_two_hubs(Some(&store));
}

/// Three processes read the two hubs of the bookings pipeline, claims and checkpoints in the
/// local store or in `store` (a `[checkpoint]` key); one is killed under load; the table is the
/// relational fact.
fn scale_out_over_two_hubs(store: Option<&str>) {
    const EXPIRY_MS: i64 = 3_000;
    let endpoint = TestEndpoint::start(&[("bookingstopic", 4), ("paymentstopic", 4)]);
    let orders = generated_orders(3000, 23);
    let (bookings, payments) = streams(&orders);
    let (bookings, payments) = (keyed(&bookings), keyed(&payments));
    let tenth = |records: &[(String, String)], n: usize| {
        let size = records.len().div_ceil(10);
        records
            .chunks(size)
            .nth(n)
            .map(<[(String, String)]>::to_vec)
            .unwrap_or_default()
    };
    let publish = |n: usize| {
        endpoint.publish_keyed("bookingstopic", &tenth(&bookings, n));
        endpoint.publish_keyed("paymentstopic", &tenth(&payments, n));
    };
    publish(0);
    let sources = format!(
        "{}\n{}",
        hub_source(&endpoint, "bookings", "bookingstopic", false),
        hub_source(&endpoint, "payments", "paymentstopic", false)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = two_source_pipeline(
        dir.path(),
        &Setup {
            sources: Some(&sources),
            checkpoint_interval: "200ms",
            ..DEFAULT
        },
    );
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[plugins]",
        &format!(
            "ownership = {{ expiry = \"{EXPIRY_MS}ms\", renew_interval = \"500ms\" }}\n{}\n\n[plugins]",
            store.unwrap_or_default()
        ),
    );
    let configs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let path = dir.path().join(format!("weir-{name}.toml"));
            std::fs::write(&path, &text).expect("write config");
            path
        })
        .collect();
    let mut processes: Vec<Option<WeirProcess>> = configs
        .iter()
        .map(|config| Some(WeirProcess::run(config)))
        .collect();
    let owners = || owners(&configs[1], EXPIRY_MS);
    // Shared: three owners of the four pipeline partitions.
    wait_for(
        "three owners of four partitions",
        Duration::from_secs(180),
        || {
            let owned = owners();
            let distinct: std::collections::BTreeSet<&String> = owned.values().collect();
            owned.len() == 4 && distinct.len() == 3
        },
    );
    publish(1);
    wait_for(
        "a checkpoint per partition",
        Duration::from_secs(180),
        || {
            weir_tests::scale_out::checkpoint_positions_of(
                &configs[1],
                "bookings",
                &(0..4).collect(),
            )
            .values()
            .all(Option::is_some)
        },
    );
    // Kill one while it holds claims, with more of both streams arriving.
    let victim = processes[0].take().expect("process a");
    let owner = weir_tests::logged_owner_id(&victim.log_text()).expect("owner id");
    wait_for(
        "the victim to hold a claim",
        Duration::from_secs(120),
        || owners().values().any(|o| *o == owner),
    );
    publish(2);
    victim.kill9();
    for n in 3..10 {
        publish(n);
        std::thread::sleep(Duration::from_millis(150));
    }
    // Far later bookings (without seats) and payments of orders that do not exist, on every
    // partition of both hubs, so that every partition's watermark passes every booking's bound.
    for at in ["2026-11-23T18:00:00Z", "2026-11-23T18:00:10Z"] {
        let mut late_bookings = Vec::new();
        let mut late_payments = Vec::new();
        for n in 0..64 {
            late_bookings.push((
                format!("x{n}"),
                format!(
                    r#"{{"OrderId":"x{n}","CustomerId":"c","EventName":"e","EventType":"Concert","VenueId":"V01","Venue":"v","Seats":[],"Timestamp":"{at}"}}"#
                ),
            ));
            late_payments.push((
                format!("x{n}"),
                format!(
                    r#"{{"PaymentId":"p-x{n}","OrderId":"x{n}","Method":"Card","Amount":1.0,"Status":"Succeeded","Timestamp":"{at}"}}"#
                ),
            ));
        }
        endpoint.publish_keyed("bookingstopic", &late_bookings);
        endpoint.publish_keyed("paymentstopic", &late_payments);
    }
    let seats: usize = orders.iter().map(|o| o.seats.len()).sum();
    let table = dir.path().join("bookings_fact");
    wait_for(
        "every seat in the fact table",
        Duration::from_secs(300),
        || {
            std::thread::sleep(Duration::from_secs(1));
            table.join("_delta_log").exists() && read_delta(&table).rows.len() >= seats
        },
    );
    for process in processes.iter().flatten() {
        process.terminate();
    }
    for (process, config) in processes.into_iter().zip(&configs) {
        let Some(process) = process else {
            continue;
        };
        let status = process.wait(Duration::from_secs(60));
        let log = std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
        assert!(status.success(), "a process failed ({status}):\n{log}");
    }
    // Nothing lost, nothing twice, every row as the relational join has it.
    assert_fact(&read_delta(&table).rows, &orders);
}

#[test]
fn a_plugin_reads_each_events_source_and_all_sources_enter_the_first_stage_by_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = |source: &str, count: usize| -> Vec<String> {
        (0..count)
            .map(|n| {
                format!(
                    r#"{{"id":"{source}-{n}","key":"k{}","at":{}}}"#,
                    n % 7,
                    1000 * n
                )
            })
            .collect()
    };
    write_lines(&dir.path().join("a.jsonl"), &lines("a", 300));
    write_lines(&dir.path().join("b.jsonl"), &lines("b", 200));
    let config = dir.path().join("weir.toml");
    let source = |name: &str| {
        format!(
            "[sources.{name}]\nkind = \"file\"\npath = \"{name}.jsonl\"\npartitions = 2\nkey_field = \"key\"\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            r#"[checkpoint]
dir = "checkpoints"

{}
{}
[sinks.out]
kind = "file"
path = "out"

[pipelines.tag]
sources = ["a", "b"]
dead_letter = "out"
event_time = {{ field = "at" }}

[[pipelines.tag.stages]]
name = "tag"
plugin = "{}"
outputs = {{ tagged = "out" }}
"#,
            source("a"),
            source("b"),
            plugin_path("source_tag").display()
        ),
    )
    .expect("write config");
    run_to_completion(&config, Duration::from_secs(120));
    let records = read_jsonl_dir(&dir.path().join("out"));
    assert_eq!(records.len(), 500, "every event of both sources, once");
    for record in &records {
        let id = record["event"]["id"].as_str().expect("id");
        let source = record["source"].as_str().expect("source");
        assert!(
            id.starts_with(&format!("{source}-")),
            "{id} is tagged with source {source}"
        );
    }
}

#[test]
fn a_line_that_cannot_be_decoded_is_a_dead_letter_at_the_merged_position_naming_its_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = |source: &str, count: usize| -> Vec<String> {
        (0..count)
            .map(|n| format!(r#"{{"id":"{source}-{n}","key":"k","at":{}}}"#, 1000 * n))
            .collect()
    };
    write_lines(&dir.path().join("a.jsonl"), &lines("a", 40));
    let mut b = lines("b", 30);
    // Far into b, at a byte offset larger than any merged position.
    b.insert(20, "{not json".to_owned());
    let bad_at: usize = b[..20].iter().map(|line| line.len() + 1).sum();
    write_lines(&dir.path().join("b.jsonl"), &b);
    let config = dir.path().join("weir.toml");
    let source = |name: &str| {
        format!("[sources.{name}]\nkind = \"file\"\npath = \"{name}.jsonl\"\nkey_field = \"key\"\n")
    };
    std::fs::write(
        &config,
        format!(
            r#"[checkpoint]
dir = "checkpoints"

{}
{}
[sinks.out]
kind = "file"
path = "out"

[sinks.dead_letters]
kind = "file"
path = "dead_letters"

[pipelines.tag]
sources = ["a", "b"]
dead_letter = "dead_letters"
event_time = {{ field = "at" }}

[[pipelines.tag.stages]]
name = "tag"
plugin = "{}"
outputs = {{ tagged = "out" }}
"#,
            source("a"),
            source("b"),
            plugin_path("source_tag").display()
        ),
    )
    .expect("write config");
    run_to_completion(&config, Duration::from_secs(120));
    assert_eq!(read_jsonl_dir(&dir.path().join("out")).len(), 70);
    let letters = read_jsonl_dir(&dir.path().join("dead_letters"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["kind"], "malformed", "{letter}");
    assert_eq!(letter["source"], "b", "{letter}");
    assert_eq!(letter["source_position"], bad_at, "{letter}");
    // The partition's merged position when it was read: among the 70 merged events' positions,
    // the domain the dead-letter sink's other records are in.
    let position = letter["position"].as_u64().expect("position");
    assert!(position <= 70, "{letter}");
}

/// The `[sources.NAME]` table of a Kafka topic on `broker`, read to its end.
fn kafka_source(name: &str, broker: &str, topic: &str) -> String {
    format!(
        r#"[sources.{name}]
kind = "kafka"
brokers = ["{broker}"]
topic = "{topic}"
stop_at_end = true
fetch_max_wait = "100ms"
"#
    )
}

/// `(partition, OrderId, line)` of each line, the partition taken from `partition_of` the order.
fn partitioned(lines: &[String], partition_of: impl Fn(&str) -> i32) -> Vec<(i32, String, String)> {
    keyed(lines)
        .into_iter()
        .map(|(key, line)| (partition_of(&key), key, line))
        .collect()
}

/// Runs the two-source bookings pipeline with `sources` in place of the two files, to the end of
/// its inputs, and checks its fact table against the plain fold over `orders`.
fn assert_two_source_fact(sources: &str, orders: &[Order]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = two_source_pipeline(
        dir.path(),
        &Setup {
            sources: Some(sources),
            ..DEFAULT
        },
    );
    let log = run_to_completion(&config, Duration::from_secs(240));
    assert_fact(&read_delta(&dir.path().join("bookings_fact")).rows, orders);
    assert!(
        read_jsonl_dir(&dir.path().join("dead_letters")).is_empty(),
        "{log}"
    );
}

#[test]
fn two_kafka_topics_joined_give_the_fact_of_a_plain_fold_over_both_inputs() {
    let broker = weir_tests::servers::KafkaBroker::start();
    let address = broker.address();
    weir_tests::kafka::create_topic(&address, "bookingstopic", 4);
    weir_tests::kafka::create_topic(&address, "paymentstopic", 4);
    let orders = generated_orders(600, 23);
    let (bookings, payments) = streams(&orders);
    // The producers of both topics spread orders the same way (co-partitioned, as a join needs).
    let partition_of = |key: &str| {
        let hash = key.bytes().fold(2_166_136_261u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16_777_619)
        });
        (hash % 4) as i32
    };
    weir_tests::kafka::produce(
        &address,
        "bookingstopic",
        &partitioned(&bookings, partition_of),
    );
    weir_tests::kafka::produce(
        &address,
        "paymentstopic",
        &partitioned(&payments, partition_of),
    );
    let sources = format!(
        "{}\n{}",
        kafka_source("bookings", &address, "bookingstopic"),
        kafka_source("payments", &address, "paymentstopic")
    );
    assert_two_source_fact(&sources, &orders);
}

#[test]
fn a_hub_and_a_topic_joined_give_the_fact_of_a_plain_fold_over_both_inputs() {
    let endpoint = TestEndpoint::start(&[("bookingstopic", 4)]);
    let broker = weir_tests::servers::KafkaBroker::start();
    let address = broker.address();
    weir_tests::kafka::create_topic(&address, "paymentstopic", 4);
    let orders = generated_orders(600, 29);
    let (bookings, payments) = streams(&orders);
    endpoint.publish_keyed("bookingstopic", &keyed(&bookings));
    // The payments' producer puts each order in the partition the hub hashed it to.
    let mut hub_partition = std::collections::BTreeMap::new();
    for partition in 0..4 {
        let events = endpoint
            .endpoint
            .events("bookingstopic", partition)
            .expect("hub events");
        for event in events {
            if let Some(key) = event.partition_key {
                hub_partition.insert(key, partition as i32);
            }
        }
    }
    let partition_of = |key: &str| hub_partition.get(key).copied().unwrap_or(0);
    weir_tests::kafka::produce(
        &address,
        "paymentstopic",
        &partitioned(&payments, partition_of),
    );
    let hub = hub_source(&endpoint, "bookings", "bookingstopic", true);
    let sources = format!(
        "{hub}\n{}",
        kafka_source("payments", &address, "paymentstopic")
    );
    assert_two_source_fact(&sources, &orders);
}

/// `examples/bookings.toml` as written (two bookings simulators, one per stream, one seed), its
/// outputs and checkpoints in `dir`, plugins from the test build and `orders` orders; with
/// `one_source`, its single-source form instead: one simulator carrying both streams.
fn simulated_bookings(dir: &Path, orders: i64, one_source: bool) -> PathBuf {
    use toml::{Table, Value};
    let example = weir_tests::workspace_dir().join("examples/bookings.toml");
    let text = std::fs::read_to_string(&example).expect("read example");
    let mut config: Table = text.parse().expect("example is TOML");
    let at = |name: &str| Value::String(dir.join(name).display().to_string());
    config["checkpoint"]["dir"] = at("checkpoints");
    config["checkpoint"]["interval"] = Value::String("500ms".into());
    config["plugins"]["store_dir"] = at("plugins");
    let sources = config["sources"].as_table_mut().expect("sources");
    for (_, source) in sources.iter_mut() {
        source["max_orders"] = Value::Integer(orders);
        source["rate"] = Value::Integer(50_000);
    }
    if one_source {
        sources.remove("payments");
        sources["bookings"]["stream"] = Value::String("both".into());
    }
    for (name, sink) in config["sinks"].as_table_mut().expect("sinks").iter_mut() {
        sink["path"] = at(name);
    }
    let pipeline = config["pipelines"]["bookings"]
        .as_table_mut()
        .expect("pipeline");
    if one_source {
        pipeline.remove("sources");
        pipeline.insert("source".into(), Value::String("bookings".into()));
    }
    for stage in pipeline["stages"].as_array_mut().expect("stages") {
        let plugin = stage["plugin"].as_str().expect("plugin").to_owned();
        let stem = Path::new(&plugin)
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        stage["plugin"] = Value::String(plugin_path(&stem).display().to_string());
        if let Some(tables) = stage.get_mut("reference").and_then(Value::as_table_mut) {
            for (_, table) in tables.iter_mut() {
                let relative = table["path"].as_str().expect("path").to_owned();
                let absolute = example.parent().expect("examples").join(relative);
                table["path"] = Value::String(absolute.display().to_string());
            }
        }
    }
    let path = dir.join("weir.toml");
    std::fs::write(&path, toml::to_string(&config).expect("TOML")).expect("write config");
    path
}

/// The rows of a table as sorted JSON texts (a multiset).
fn sorted_rows(rows: &[serde_json::Value]) -> Vec<String> {
    let mut rows: Vec<String> = rows.iter().map(ToString::to_string).collect();
    rows.sort_unstable();
    rows
}

#[test]
fn the_example_two_simulators_give_the_fact_table_of_one_simulator_carrying_both_streams() {
    let two = tempfile::tempdir().expect("temp dir");
    run_to_completion(
        &simulated_bookings(two.path(), 3000, false),
        Duration::from_secs(240),
    );
    let one = tempfile::tempdir().expect("temp dir");
    run_to_completion(
        &simulated_bookings(one.path(), 3000, true),
        Duration::from_secs(240),
    );
    let from_two = sorted_rows(&read_delta(&two.path().join("bookings_fact")).rows);
    let from_one = sorted_rows(&read_delta(&one.path().join("bookings_fact")).rows);
    assert!(from_two.len() > 3000, "{} rows", from_two.len());
    let paid = from_two
        .iter()
        .filter(|r| r.contains("\"Paid\":true"))
        .count();
    assert!(
        paid > 0 && paid < from_two.len(),
        "{paid} of {} paid",
        from_two.len()
    );
    eprintln!("{} fact rows, {paid} paid", from_two.len());
    assert_eq!(from_two.len(), from_one.len());
    assert!(from_two == from_one, "the two runs' fact tables differ");
}
