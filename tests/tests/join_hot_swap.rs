//! Hot swap of a join stage through the `weir` binary (issue 4, for join stages): the bookings
//! workload of `examples/bookings.toml` (categorize, then seats ⋈ payments within 2 minutes) reads
//! a steady stream of bookings and payments while its join plugin is swapped by files written into
//! the watched plugins directory and by an upload to the admin API. The fact table in Delta is
//! exactly the join worked out relationally from the input written (every pair once, every seat
//! unpaid in time alone once), every row names the version that enriched it, versions follow the
//! swaps in every partition, and pairs whose booking arrived before a swap and whose payment after
//! it were joined by the new version (the buffered join sides carried over).
//!
//! Then automatic rollback: a join version that traps on every pair is uploaded; every pair it
//! traps on is enriched by the version it replaced, the slot rolls it back by itself (log,
//! metric, admin API), and no pair is lost or doubled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use weir_tests::bookings::{
    Arrival, Order, arrivals, assert_fact, expected_fact, generated_orders,
};
use weir_tests::examples::{Adapt, adapt_example};
use weir_tests::service::{
    self, Feeder, StagePaths, TOKEN, active_version, another_version,
    assert_automatic_rollback_reported, events_in, get_json, http, install_atomically,
    plugin_and_input, plugin_report, stage_records_out, upload_activated, version_of,
    version_origins, versions_by_row, wait_ready, wait_until,
};
use weir_tests::{WeirProcess, plugin_path, read_delta, read_jsonl_dir};

const WAIT: Duration = Duration::from_secs(240);
const PIPELINE: &str = "bookings";
const STAGE: &str = "join";
/// Orders appended after the stream, an hour later, to close every partition's pending joins.
const FLUSH_ORDERS: usize = 64;

/// The bookings example over a followed `bookings.jsonl` in 4 partitions, its join running
/// `initial` (copied to the watched `plugins/join.wasm`), the fact table also recording the
/// plugin version, partition and position of each row; admin API on a free port.
fn join_pipeline(dir: &Path, initial: &Path, probation_events: i64) -> StagePaths {
    let (plugin, input) = plugin_and_input(dir, "join.wasm", initial, "bookings.jsonl");
    let path = adapt_example(
        "bookings.toml",
        dir,
        &Adapt {
            pipelines: &[PIPELINE],
            input: &input,
            partitions: 4,
            key_field: "OrderId",
            checkpoint_interval: "300ms",
            batch_max_events: 64,
        },
    );
    let mut config: toml::Table = std::fs::read_to_string(&path)
        .expect("read config")
        .parse()
        .expect("config is TOML");
    let table = |text: &str| -> toml::Value { toml::Value::Table(text.parse().expect("TOML")) };
    config.insert(
        "plugins".into(),
        table(&format!(
            r#"
store_dir = "{store}"
watch_settle = "150ms"
rollback = {{ probation_events = {probation_events}, max_trap_ratio = 0.05, max_error_ratio = 0.5 }}
"#,
            store = dir.join("plugin-store").display()
        )),
    );
    config.insert(
        "admin".into(),
        table(&format!("address = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"")),
    );
    let source = config["sources"]["bookings"]
        .as_table_mut()
        .expect("the bookings source");
    source.insert("follow".into(), toml::Value::Boolean(true));
    let columns = config["sinks"]["bookings_fact"]["columns"]
        .as_array_mut()
        .expect("the fact table's columns");
    for (name, kind, value) in [
        ("PluginVersion", "string", "plugin_version"),
        ("Partition", "integer", "partition"),
        ("Position", "long", "position"),
    ] {
        columns.push(table(&format!(
            "name = \"{name}\"\ntype = \"{kind}\"\nvalue = \"{value}\""
        )));
    }
    let stages = config["pipelines"][PIPELINE]["stages"]
        .as_array_mut()
        .expect("stages");
    let join = stages
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|stage| stage.get("name").and_then(toml::Value::as_str) == Some(STAGE))
        .expect("the join stage");
    join.insert(
        "plugin".into(),
        toml::Value::String(plugin.display().to_string()),
    );
    std::fs::write(&path, toml::to_string(&config).expect("serialise")).expect("write config");
    StagePaths {
        config: path,
        input,
        plugin,
        table: dir.join("bookings_fact"),
        dead_letters: dir.join("dead_letters"),
    }
}

/// The input: `orders` generated orders' bookings and payments in arrival order.
struct Stream {
    orders: Vec<Order>,
    arrivals: Vec<Arrival>,
}

impl Stream {
    fn new(orders: usize, seed: u64) -> Stream {
        let orders = generated_orders(orders, seed);
        let arrivals = arrivals(&orders);
        Stream { orders, arrivals }
    }

    /// Feeds the arrivals into `input` at a steady pace: 16 lines every 20 ms.
    fn feed(&self, input: &Path) -> Feeder {
        let lines = self.arrivals.iter().map(|a| a.line.clone()).collect();
        Feeder::start_lines(input, lines, 16, Duration::from_millis(20))
    }

    /// The orders as the first `written` lines tell them: those whose booking was written, each
    /// without its payment if that was not written.
    fn written_orders(&self, written: usize) -> Vec<Order> {
        let mut booked = BTreeSet::new();
        let mut paid = BTreeSet::new();
        for arrival in &self.arrivals[..written] {
            if arrival.payment {
                paid.insert(arrival.order);
            } else {
                booked.insert(arrival.order);
            }
        }
        booked
            .into_iter()
            .map(|n| {
                let mut order = self.orders[n].clone();
                if !paid.contains(&n) {
                    order.payment = None;
                }
                order
            })
            .collect()
    }

    /// Where each order's booking and payment are among the lines written (by order id).
    fn lines_by_order(&self, written: usize) -> BTreeMap<String, (usize, Option<usize>)> {
        let mut lines: BTreeMap<String, (usize, Option<usize>)> = BTreeMap::new();
        for (line, arrival) in self.arrivals[..written].iter().enumerate() {
            let id = self.orders[arrival.order].order_id.clone();
            if arrival.payment {
                lines.entry(id).or_default().1 = Some(line);
            } else {
                lines.entry(id).or_default().0 = line;
            }
        }
        lines
    }
}

fn wait_for_more_events(admin: &str, count: u64) {
    service::wait_for_more_events(admin, PIPELINE, count, WAIT);
}

/// Stops the feeder, then appends [`FLUSH_ORDERS`] unpaid bookings an hour after the last one:
/// every partition's watermark passes the bound of every booking and payment written, so every
/// pending join side leaves (the unpaid seats are written alone). Waits until the join emitted
/// every seat of the orders written; returns those orders and the number of lines written.
fn stop_and_close_every_join(
    feeder: Feeder,
    stream: &Stream,
    paths: &StagePaths,
    admin: &str,
) -> (Vec<Order>, usize) {
    let written = feeder.stop();
    assert!(
        written < stream.arrivals.len(),
        "the stream flowed throughout"
    );
    let orders = stream.written_orders(written);
    let last = orders.iter().map(|o| o.time_ms).max().unwrap_or(0);
    let flush: Vec<Order> = (0..FLUSH_ORDERS)
        .map(|n| Order {
            order_id: format!("flush-{n:03}"),
            event_type: "Concert",
            seats: vec![("R1".to_owned(), 10.0)],
            time_ms: last + 3_600_000 + n as i64 * 1000,
            payment: None,
            venue: "V01".to_owned(),
        })
        .collect();
    let text: String = arrivals(&flush)
        .iter()
        .map(|a| format!("{}\n", a.line))
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&paths.input)
        .expect("open input");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("append the flush");
    // One record per seat, paired or alone, unless a pair went to the dead letters (then the
    // checks after this say which).
    let seats = expected_fact(&orders, &BTreeMap::new()).len() as u64;
    wait_until(
        WAIT,
        "every pending join side of the orders written left",
        || {
            events_in(admin, PIPELINE) == (written + FLUSH_ORDERS) as u64
                && stage_records_out(admin, STAGE) + dead_letters(admin) >= seats
        },
    );
    (orders, written)
}

/// Events and pairs of the pipeline that went to the dead letters, from `GET /pipelines`.
fn dead_letters(admin: &str) -> u64 {
    get_json(admin, "/pipelines")["pipelines"]
        .as_array()
        .expect("pipelines")
        .iter()
        .filter(|p| p["pipeline"] == PIPELINE)
        .flat_map(|p| p["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| p["dead_letters"].as_u64().expect("dead_letters"))
        .sum()
}

/// Checks that for each swap in `order` (from a version to the next), some pair was enriched by
/// the new version although its booking arrived, in its partition, before the old version's last
/// pair there: the booking waited in the join state across the swap. Arrival order comes from the
/// input lines, not from Weir.
fn assert_pairs_straddle_each_swap(
    rows: &[Value],
    lines: &BTreeMap<String, (usize, Option<usize>)>,
    order: &[&str],
) {
    // (version, partition) -> the line of each pair's booking and of its later side.
    let mut pairs: BTreeMap<(&str, i64), Vec<(usize, usize)>> = BTreeMap::new();
    for row in rows.iter().filter(|row| !row["PaymentId"].is_null()) {
        let id = row["OrderId"].as_str().expect("OrderId");
        let (booking, payment) = lines[id];
        let payment = payment.expect("a paired row's payment was written");
        pairs
            .entry((
                row["PluginVersion"].as_str().expect("PluginVersion"),
                row["Partition"].as_i64().expect("Partition"),
            ))
            .or_default()
            .push((booking, booking.max(payment)));
    }
    for swap in order.windows(2) {
        let (old, new) = (swap[0], swap[1]);
        let straddling: usize = pairs
            .iter()
            .filter(|((version, _), _)| *version == new)
            .map(|((_, partition), new_pairs)| {
                let old_last = pairs
                    .get(&(old, *partition))
                    .and_then(|old_pairs| old_pairs.iter().map(|(_, made)| *made).max());
                old_last.map_or(0, |old_last| {
                    new_pairs
                        .iter()
                        .filter(|(booking, _)| *booking < old_last)
                        .count()
                })
            })
            .sum();
        assert!(
            straddling > 0,
            "no pair joined by {new} had its booking waiting across the swap from {old}"
        );
    }
}

#[test]
fn join_plugin_swapped_by_file_and_api_under_load_keeps_waiting_sides_and_names_versions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let v1_path = plugin_path("booking_join");
    let v1_bytes = std::fs::read(&v1_path).expect("booking-join");
    // More versions: the same enrichment under other content hashes, so that the expected rows
    // do not depend on which version made them; the rows name their version.
    let write_version = |tag: &str| {
        let path = dir.path().join(format!("join-v{tag}.wasm"));
        std::fs::write(&path, another_version(&v1_bytes, tag.as_bytes())).expect("version");
        (version_of(&path), path)
    };
    let v1 = version_of(&v1_path);
    let (v2, v2_path) = write_version("2");
    let (v3, v3_path) = write_version("3");
    let (v4, v4_path) = write_version("4");
    assert_eq!(BTreeSet::from([&v1, &v2, &v3, &v4]).len(), 4);

    let paths = join_pipeline(dir.path(), &v1_path, 400);
    // An order a second of event time, about 400 a second of wall time: a payment comes up to
    // 2 minutes (some 0.3 s) after its booking, so bookings always wait across a swap.
    let stream = Stream::new(60_000, 21);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let feeder = stream.feed(&paths.input);
    wait_for_more_events(&admin, 1200);
    assert_eq!(active_version(&admin, PIPELINE, STAGE), v1);

    // 1. By file: a new component renamed into the watched directory.
    install_atomically(&v2_path, &paths.plugin);
    wait_until(WAIT, "v2 active", || {
        active_version(&admin, PIPELINE, STAGE) == v2
    });
    wait_for_more_events(&admin, 1200);

    // 2. By the admin API.
    upload_activated(
        &admin,
        PIPELINE,
        STAGE,
        &std::fs::read(&v3_path).expect("v3"),
    );
    assert_eq!(
        active_version(&admin, PIPELINE, STAGE),
        v3,
        "the upload answers once activated"
    );
    wait_for_more_events(&admin, 1200);

    // 3. By file again.
    install_atomically(&v4_path, &paths.plugin);
    wait_until(WAIT, "v4 active", || {
        active_version(&admin, PIPELINE, STAGE) == v4
    });
    wait_for_more_events(&admin, 1200);

    let (orders, written) = stop_and_close_every_join(feeder, &stream, &paths, &admin);
    let report = plugin_report(&admin, PIPELINE, STAGE);
    process.terminate();
    assert!(process.wait(WAIT).success(), "graceful stop");

    let origins = version_origins(&report);
    assert_eq!(
        origins,
        BTreeMap::from([
            (v1.clone(), "config".to_owned()),
            (v2.clone(), "file".to_owned()),
            (v3.clone(), "api".to_owned()),
            (v4.clone(), "file".to_owned()),
        ])
    );
    assert_eq!(report["world"], "weir:plugin/join-enrichment@0.3.0");

    // Exactly the relational join of what was written: each seat once, paired or alone.
    let rows = read_delta(&paths.table).rows;
    assert_fact(&rows, &orders);
    let order = [v1.as_str(), v2.as_str(), v3.as_str(), v4.as_str()];
    let used = versions_by_row(&rows, &order, &order);
    assert_eq!(used.len(), 4, "each version made rows: {used:?}");
    assert_pairs_straddle_each_swap(&rows, &stream.lines_by_order(written), &order);
    let letters = read_jsonl_dir(&paths.dead_letters);
    assert!(letters.is_empty(), "no dead letters: {letters:?}");
}

#[test]
fn join_version_that_traps_on_every_pair_is_rolled_back_by_itself_and_no_pair_is_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good_path = plugin_path("booking_join");
    let bad_path = plugin_path("join_trap_always");
    let (good, bad) = (version_of(&good_path), version_of(&bad_path));
    let paths = join_pipeline(dir.path(), &good_path, 300);
    let stream = Stream::new(60_000, 22);
    let process = WeirProcess::run(&paths.config);
    let admin = process.admin_address(0, WAIT);
    wait_ready(&admin, WAIT);
    let feeder = stream.feed(&paths.input);
    wait_for_more_events(&admin, 1200);

    let (status, body) = http(
        &admin,
        "POST",
        &format!("/plugins/{PIPELINE}/{STAGE}"),
        Some(TOKEN),
        &std::fs::read(&bad_path).expect("bad version"),
    );
    assert_eq!(status, 200, "a valid component is accepted: {body}");
    wait_until(WAIT, "the automatic rollback", || {
        plugin_report(&admin, PIPELINE, STAGE)["activations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["cause"] == "automatic_rollback"))
    });
    assert_eq!(active_version(&admin, PIPELINE, STAGE), good);
    let metrics = assert_automatic_rollback_reported(&admin, PIPELINE, STAGE, &good, &bad);
    assert!(
        metrics.contains(&format!(
            "weir_plugin_traps_total{{pipeline=\"{PIPELINE}\",stage=\"{STAGE}\",version=\"{bad}\"}}"
        )),
        "the bad version's traps are counted: {metrics}"
    );
    assert!(
        process
            .log_text()
            .contains("new plugin version failed its probation: rolled back automatically"),
        "the rollback is logged"
    );
    wait_for_more_events(&admin, 1200);

    let (orders, _) = stop_and_close_every_join(feeder, &stream, &paths, &admin);
    let pipelines = get_json(&admin, "/pipelines");
    process.terminate();
    assert!(process.wait(WAIT).success(), "graceful stop");
    assert!(
        pipelines["pipelines"][0]["partitions"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["dead_letters"] == 0)),
        "{pipelines}"
    );

    // No pair lost or doubled: exactly the relational join, none enriched by the bad version.
    let rows = read_delta(&paths.table).rows;
    assert_fact(&rows, &orders);
    let order = [good.as_str()];
    versions_by_row(&rows, &order, &order);
    let letters = read_jsonl_dir(&paths.dead_letters);
    assert!(
        letters.is_empty(),
        "the pairs the bad version trapped on were enriched by the previous one: {letters:?}"
    );
}
