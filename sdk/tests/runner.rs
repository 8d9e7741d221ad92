//! The batch runner's contract with the host, checked through the public native entry points
//! (`Harness`, `NativeRunner`), which run the same runner as the Wasm export.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_sdk::testing::{
    EventBatch, Harness, LogRecord, NativeRunner, Outcome, Property, TestEvent, batch_of,
};
use weir_sdk::{Context, Error, Event, Level, Result, columns};

/// Emits to `a` and `b`, writes state, then rejects when the body says so.
fn emit_then_maybe_reject(event: &Event, ctx: &mut Context) -> Result<()> {
    let value = event.value()?;
    ctx.emit("a", &json!({"n": value["n"]}))?;
    ctx.emit_raw("b", b"raw")?;
    ctx.forward("a");
    ctx.put("k", &value["n"])?;
    ctx.counter("seen", 1);
    if value["reject"] == true {
        return Err(Error::reject(format!("rejected {}", value["n"])));
    }
    Ok(())
}

#[test]
fn a_rejected_event_leaves_no_records_and_no_state_writes() {
    let mut harness = Harness::new(emit_then_maybe_reject);
    let outcomes = harness.run_batch(vec![
        TestEvent::json(&json!({"n": 1})),
        TestEvent::json(&json!({"n": 2, "reject": true})),
        TestEvent::json(&json!({"n": 3})),
        TestEvent::json(&json!({"n": 4, "reject": true})),
    ]);
    assert_eq!(outcomes[0].json("a"), [json!({"n": 1}), json!({"n": 1})]);
    assert_eq!(outcomes[1].rejection(), Some("rejected 2"));
    assert!(outcomes[1].records.is_empty());
    assert_eq!(outcomes[2].json("a"), [json!({"n": 3}), json!({"n": 3})]);
    assert_eq!(outcomes[2].output("b")[0].bytes, b"raw");
    assert_eq!(outcomes[3].rejection(), Some("rejected 4"));
    // The last write that was kept is event 3's: event 4's was rolled back.
    assert_eq!(harness.state::<u64>("k"), Some(3));
    // Counters are observations: the rejected events' stay.
    assert_eq!(harness.counter("seen"), 4);

    // The encoding the host decodes: payloads back to back, forwards empty, ends increasing.
    let output = harness.last_output();
    assert_eq!(output.targets, ["a", "b"]);
    assert_eq!(output.payloads, br#"{"n":1}raw{"n":3}raw"#);
    let emitted: Vec<(u32, u32, u32, bool)> = columns::emitted(&output.emitted)
        .map(|e| (e.event, e.target, e.payload_end, e.forward))
        .collect();
    assert_eq!(
        emitted,
        [
            (0, 0, 7, false),
            (0, 1, 10, false),
            (0, 0, 10, true),
            (2, 0, 17, false),
            (2, 1, 20, false),
            (2, 0, 20, true)
        ]
    );
    let rejected: Vec<(u32, &str)> = output
        .rejected
        .iter()
        .map(|r| (r.event, r.reason.as_str()))
        .collect();
    assert_eq!(rejected, [(1, "rejected 2"), (3, "rejected 4")]);
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tally {
    count: u64,
}

fn tally(event: &Event, ctx: &mut Context) -> Result<()> {
    let key = event.key().ok_or("no key")?;
    let mut tally: Tally = ctx.get(key)?.unwrap_or(Tally { count: 0 });
    tally.count += 1;
    if tally.count >= 3 {
        ctx.delete(key);
    } else {
        ctx.put(key, &tally)?;
    }
    ctx.emit("tallies", &tally)
}

/// The counts the `tally` transform emitted, in order.
fn tally_counts(outcomes: &[Outcome]) -> Vec<Value> {
    outcomes
        .iter()
        .flat_map(|o| o.json("tallies"))
        .map(|t| t["count"].clone())
        .collect()
}

#[test]
fn state_is_cached_per_batch_and_written_back_once_per_key() {
    let mut harness = Harness::new(tally);
    let outcomes = harness.run_batch(vec![
        TestEvent::new("{}").key("a"),
        TestEvent::new("{}").key("b"),
        TestEvent::new("{}").key("a"),
        TestEvent::new("{}").key("a"),
        TestEvent::new("{}"),
    ]);
    let counts = tally_counts(&outcomes);
    assert_eq!(counts, [1, 1, 2, 3]);
    assert_eq!(outcomes[4].rejection(), Some("no key"));
    // The state is small (empty here): the instance's first check of its cache hands all of it
    // over, so no key is asked for; then one call with the batch's writes (delete `a`, put `b`).
    assert_eq!(harness.state_calls(), 1);
    assert_eq!(harness.state::<Tally>("a"), None);
    assert_eq!(harness.state::<Tally>("b"), Some(Tally { count: 1 }));
    assert_eq!(
        harness.state_bytes("b").as_deref(),
        Some(&br#"{"count":1}"#[..]),
        "state values are JSON"
    );

    // The cache lives as long as the instance: the next batch reads `b` from it, and its write
    // reaches the host in one call.
    let outcomes = harness.run_batch(vec![TestEvent::new("{}").key("b")]);
    assert_eq!(outcomes[0].json("tallies"), [json!({"count": 2})]);
    assert_eq!(harness.state_calls(), 2);
    assert_eq!(harness.state::<Tally>("b"), Some(Tally { count: 2 }));
}

#[test]
fn a_large_state_is_asked_for_key_by_key_once() {
    // Past 16,384 keys the host hands over only the keys written last: the others are asked
    // for, once per key while the instance lives.
    let mut harness = Harness::new(tally);
    for i in 0..16_400 {
        harness = harness.with_state(&format!("other-{i}"), &Tally { count: 1 });
    }
    harness = harness.with_state("a", &Tally { count: 1 });
    let outcomes = harness.run_batch(vec![
        TestEvent::new("{}").key("a"),
        TestEvent::new("{}").key("new"),
        TestEvent::new("{}").key("new"),
    ]);
    let counts = tally_counts(&outcomes);
    assert_eq!(counts, [2, 1, 2]);
    assert_eq!(
        harness.state_calls(),
        3,
        "gets of `a` and `new`, then the writes"
    );
    harness.run_batch(vec![TestEvent::new("{}").key("new")]);
    assert_eq!(
        harness.state_calls(),
        4,
        "`new` was cached: only the writes"
    );
}

#[test]
fn a_new_instance_starts_with_the_state_in_its_cache() {
    let mut harness = Harness::new(tally);
    harness.run_batch(vec![
        TestEvent::new("{}").key("a"),
        TestEvent::new("{}").key("a"),
        TestEvent::new("{}").key("b"),
        TestEvent::new("{}").key("c"),
    ]);
    // `a` is at 2, `b` and `c` at 1; then only `b` is written: it reaches 3 and is deleted.
    harness.run_batch(vec![
        TestEvent::new("{}").key("b"),
        TestEvent::new("{}").key("b"),
    ]);
    let calls = harness.state_calls();

    // As at a hot swap: the new instance's cache starts with the (small) state, handed over in
    // the one call that says the cache must start again: it asks the host for no key.
    harness.new_instance();
    let outcomes = harness.run_batch(vec![
        TestEvent::new("{}").key("b"),
        TestEvent::new("{}").key("c"),
        TestEvent::new("{}").key("a"),
    ]);
    let counts = tally_counts(&outcomes);
    assert_eq!(
        counts,
        [1, 2, 3],
        "the state carried over to the new instance"
    );
    assert_eq!(harness.state_calls(), calls + 1, "only the writes");
}

#[test]
fn a_cache_another_instance_wrote_past_starts_again() {
    // A harness whose state an earlier "batch" set behind the instance's back: the instance must
    // not keep what it cached before.
    let mut harness = Harness::new(tally);
    harness.run_batch(vec![TestEvent::new("{}").key("a")]);
    let mut harness = harness.with_state("a", &json!({"count": 10}));
    let outcomes = harness.run_batch(vec![TestEvent::new("{}").key("a")]);
    let counts = tally_counts(&outcomes);
    assert_eq!(counts, [11]);
}

fn write_blind_then_reject(event: &Event, ctx: &mut Context) -> Result<()> {
    if event.body() == b"write" {
        ctx.put("k", "new")?;
        return Err("no".into());
    }
    let value: Option<String> = ctx.get("k")?;
    ctx.emit("out", &value)
}

#[test]
fn a_rolled_back_blind_write_is_read_from_the_host_again() {
    let mut harness = Harness::new(write_blind_then_reject).with_state("k", "old");
    let outcomes = harness.run_batch(vec![TestEvent::new("write"), TestEvent::new("read")]);
    assert_eq!(outcomes[0].rejection(), Some("no"));
    assert_eq!(outcomes[1].json("out"), [json!("old")]);
    assert_eq!(harness.state::<String>("k").as_deref(), Some("old"));
}

#[test]
fn state_that_does_not_fit_the_type_rejects_with_the_key() {
    let mut harness = Harness::new(tally).with_state("a", &json!({"total": 1}));
    let outcome = harness.run_event(TestEvent::new("{}").key("a"));
    assert_eq!(
        outcome.rejection(),
        Some("keyed state `a`: missing field `count`")
    );
}

#[derive(Clone, Deserialize)]
#[serde(default)]
struct Settings {
    label: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            label: "default".to_owned(),
        }
    }
}

fn labelled(_event: &Event, ctx: &mut Context) -> Result<()> {
    let settings: Settings = ctx.config()?;
    ctx.emit("out", &settings.label)
}

#[test]
fn config_comes_from_the_stage_and_defaults_apply() {
    let mut harness = Harness::new(labelled);
    assert_eq!(harness.run("{}").json("out"), [json!("default")]);
    let mut harness = Harness::new(labelled).with_config(json!({"label": "custom"}));
    assert_eq!(harness.run("{}").json("out"), [json!("custom")]);
    assert_eq!(harness.run("{}").json("out"), [json!("custom")]);
    let mut harness = Harness::new(labelled).with_config(json!({"label": 7}));
    assert_eq!(
        harness.run("{}").rejection(),
        Some(
            "invalid stage config: invalid type: integer `7`, expected a string at line 1 column 10"
        )
    );
}

fn describe(event: &Event, ctx: &mut Context) -> Result<()> {
    let properties: BTreeMap<&str, &str> = event.properties().collect();
    ctx.emit(
        "out",
        &json!({
            "key": event.key(),
            "time": event.time(),
            "enqueued": event.enqueued_time(),
            "position": event.position(),
            "partition": event.partition(),
            "source": event.property("source"),
            "properties": properties,
            "body": event.body_str()?,
        }),
    )
}

#[test]
fn events_carry_their_metadata() {
    let mut harness = Harness::new(describe).with_partition(3);
    let outcomes = harness.run_batch(vec![
        TestEvent::new("one")
            .key("k1")
            .at(10)
            .enqueued_at(20)
            .property("source", "s1")
            .property("x", "y"),
        TestEvent::new("two").at(11),
        TestEvent::new("three")
            .position(42)
            .property("source", "s3"),
    ]);
    let described: Vec<Value> = outcomes.iter().flat_map(|o| o.json("out")).collect();
    assert_eq!(
        described,
        [
            json!({"key": "k1", "time": 10, "enqueued": 20, "position": 0, "partition": 3, "source": "s1",
                   "properties": {"source": "s1", "x": "y"}, "body": "one"}),
            json!({"key": null, "time": 11, "enqueued": 0, "position": 1, "partition": 3, "source": null,
                   "properties": {}, "body": "two"}),
            json!({"key": null, "time": 0, "enqueued": 0, "position": 42, "partition": 3, "source": "s3",
                   "properties": {"source": "s3"}, "body": "three"}),
        ]
    );
    let outcome = harness.run_event(TestEvent::new(vec![0xff, 0xfe]));
    assert_eq!(
        outcome.rejection(),
        Some("not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0")
    );
}

#[test]
fn properties_sent_out_of_order_are_still_found() {
    let mut batch = batch_of(
        0,
        &[
            TestEvent::new("a"),
            TestEvent::new("b"),
            TestEvent::new("c"),
        ],
    );
    let property = |event: u32, value: &str| Property {
        event,
        name: "source".to_owned(),
        value: value.to_owned(),
    };
    batch.properties = vec![property(2, "s2"), property(0, "s0"), property(7, "stray")];
    let mut runner = NativeRunner::new(describe);
    let output = runner.process(&batch);
    let mut start = 0;
    let mut sources = Vec::new();
    for emitted in columns::emitted(&output.emitted) {
        let end = emitted.payload_end as usize;
        let value: Value = serde_json::from_slice(&output.payloads[start..end]).unwrap_or_default();
        sources.push(value["source"].clone());
        start = end;
    }
    assert_eq!(sources, [json!("s0"), Value::Null, json!("s2")]);
}

#[test]
fn a_batch_with_bad_offsets_rejects_the_events_it_cannot_read() {
    let batch = EventBatch {
        partition: 0,
        bodies: b"{}{}".to_vec(),
        body_ends: columns::u32_column([2, 9, 4]),
        positions: [1u64, 2, 3].iter().flat_map(|p| p.to_le_bytes()).collect(),
        event_times: vec![0; 24],
        enqueued_times: vec![0; 24],
        keys: Vec::new(),
        key_ends: columns::u32_column([0, 0, 0]),
        properties: Vec::new(),
        sources: Vec::new(),
        event_sources: Vec::new(),
        field_names: Vec::new(),
        field_values: Vec::new(),
        field_ends: Vec::new(),
        projected: Vec::new(),
    };
    let mut runner = NativeRunner::new(emit_then_maybe_reject);
    let output = runner.process(&batch);
    let rejected: Vec<(u32, &str)> = output
        .rejected
        .iter()
        .map(|r| (r.event, r.reason.as_str()))
        .collect();
    // Event 2 ends at 4 but starts where event 1 ended, at 9: unreadable too.
    assert_eq!(
        rejected,
        [
            (
                1,
                "invalid batch: event 1 has body end 9, outside the body buffer"
            ),
            (
                2,
                "invalid batch: event 2 has body end 4, outside the body buffer"
            ),
        ]
    );
    assert!(columns::emitted(&output.emitted).all(|e| e.event == 0));
}

fn unserialisable(_event: &Event, ctx: &mut Context) -> Result<()> {
    ctx.emit("ok", &1)?;
    let map: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
    ctx.emit("bad", &map)
}

#[test]
fn a_record_that_cannot_be_serialised_rejects_the_event() {
    let mut harness = Harness::new(unserialisable);
    let outcome = harness.run("{}");
    assert_eq!(
        outcome.rejection(),
        Some("cannot serialise a record for output `bad`: key must be a string")
    );
    assert!(harness.last_output().payloads.is_empty());
}

fn chatty(event: &Event, ctx: &mut Context) -> Result<()> {
    ctx.info(format_args!("saw {}", event.body_str()?));
    ctx.log_with(Level::Warn, "careful", &[("why", "test")]);
    ctx.counter("a", 2);
    ctx.counter("a", 3);
    ctx.counter("b", 0);
    Ok(())
}

#[test]
fn logs_and_counters_reach_the_host() {
    let mut harness = Harness::new(chatty);
    harness.run_batch(vec![TestEvent::new("x"), TestEvent::new("y")]);
    let logs = harness.logs();
    assert_eq!(logs.len(), 4);
    assert_eq!(
        logs[2],
        LogRecord {
            level: Level::Info,
            message: "saw y".to_owned(),
            fields: vec![("position".to_owned(), "1".to_owned())]
        }
    );
    assert_eq!(logs[3].fields[1], ("why".to_owned(), "test".to_owned()));
    assert_eq!(harness.counters(), BTreeMap::from([("a".to_owned(), 10)]));
}

#[derive(Deserialize)]
struct Borrowing<'a> {
    #[serde(borrow)]
    name: weir_sdk::Text<'a>,
    plain: &'a str,
}

fn borrow_check(event: &Event, ctx: &mut Context) -> Result<()> {
    let value: Borrowing = event.json()?;
    // Both point into the batch's body buffer.
    let body = event.body().as_ptr_range();
    assert!(body.contains(&value.plain.as_ptr()));
    ctx.emit(
        "out",
        &json!({"borrowed": value.name.is_borrowed(), "name": value.name.as_str()}),
    )
}

#[test]
fn json_fields_borrow_from_the_batch() {
    let mut harness = Harness::new(borrow_check);
    assert_eq!(
        harness.run(r#"{"name":"abc","plain":"p"}"#).json("out"),
        [json!({"borrowed": true, "name": "abc"})]
    );
    assert_eq!(
        harness.run(r#"{"name":"a\"c","plain":"p"}"#).json("out"),
        [json!({"borrowed": false, "name": "a\"c"})]
    );
}

#[test]
fn the_native_runner_reuses_its_buffers_and_gives_the_same_output() {
    let events: Vec<TestEvent> = (0..100)
        .map(|n| TestEvent::json(&json!({"n": n, "reject": n % 7 == 0})))
        .collect();
    let batch = batch_of(0, &events);
    let mut runner = NativeRunner::new(emit_then_maybe_reject);
    let first = runner.process(&batch).clone();
    let capacity = runner.process(&batch).payloads.capacity();
    for _ in 0..3 {
        let output = runner.process(&batch);
        assert_eq!(output.payloads, first.payloads);
        assert_eq!(output.emitted.len(), first.emitted.len());
        assert_eq!(output.payloads.capacity(), capacity);
    }
    assert_eq!(first.rejected.len(), 15);
}

fn panics_on_boom(event: &Event, ctx: &mut Context) -> Result<()> {
    ctx.put("k", event.body_str()?)?;
    ctx.counter("calls", 1);
    assert_ne!(event.body(), b"boom", "boom");
    Ok(())
}

#[test]
fn a_panicking_batch_writes_nothing_like_a_trapped_one() {
    let mut harness = Harness::new(panics_on_boom);
    harness.run("first");
    let batch = vec![TestEvent::new("second"), TestEvent::new("boom")];
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.run_batch(batch)));
    assert!(panicked.is_err());
    assert_eq!(harness.state::<String>("k").as_deref(), Some("first"));
    assert_eq!(harness.counter("calls"), 1);
    harness.run("third");
    assert_eq!(harness.state::<String>("k").as_deref(), Some("third"));
    assert_eq!(harness.counter("calls"), 2);
}

/// Routes each event to an output named after its source.
fn by_source(event: &Event, ctx: &mut Context) -> Result<()> {
    ctx.forward(event.source());
    Ok(())
}

#[test]
fn each_event_reads_the_source_it_came_from() {
    let mut harness = Harness::new(by_source);
    let outcomes = harness.run_batch(vec![
        TestEvent::new("b1").from_source("bookings"),
        TestEvent::new("p1").from_source("payments"),
        TestEvent::new("b2").from_source("bookings"),
    ]);
    assert!(outcomes[0].forwarded_to("bookings"));
    assert!(outcomes[1].forwarded_to("payments"));
    assert!(outcomes[2].forwarded_to("bookings"));
    let batch = batch_of(
        0,
        &[
            TestEvent::new("x").from_source("payments"),
            TestEvent::new("y").from_source("bookings"),
        ],
    );
    assert_eq!(batch.sources, ["payments", "bookings"]);
    assert_eq!(batch.event_sources, [0, 0, 1, 0]);
    // A batch that names no sources (an older host) reads as an empty source name.
    let mut batch = batch;
    batch.sources.clear();
    batch.event_sources.clear();
    let mut runner = NativeRunner::new(by_source);
    let output = runner.process(&batch);
    assert_eq!(output.targets, [""]);
}
