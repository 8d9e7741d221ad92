//! Run a transform natively, with the same batch runner the Wasm export uses.
//!
//! [`Harness`] is for tests: it lays [`TestEvent`]s out in a columnar batch exactly as the host
//! does, runs them through the runner inside the plugin's export (the same output encoding, the
//! same per-batch state cache, the same rollback of rejected events), decodes the output as the
//! host does, and keeps keyed state, counters and logs in memory. Only the host's imports are
//! replaced; no Wasm runtime is involved, so `cargo test` is enough.
//!
//! ```
//! use weir_sdk::prelude::*;
//! use weir_sdk::testing::{Harness, TestEvent};
//!
//! fn route(event: &Event, ctx: &mut Context) -> Result<()> {
//!     let value = event.value()?;
//!     if value["level"] == "error" {
//!         ctx.forward("errors");
//!     }
//!     Ok(())
//! }
//!
//! let mut harness = Harness::new(route);
//! let outcome = harness.run(r#"{"level": "error"}"#);
//! assert_eq!(outcome.json("errors"), vec![serde_json::json!({"level": "error"})]);
//! let outcome = harness.run_event(TestEvent::new("{oops").at(1_000));
//! assert!(outcome.rejection().unwrap().starts_with("malformed JSON"));
//! ```
//!
//! [`NativeRunner`] is for benchmarks: it takes pre-built columnar [`EventBatch`]es and returns
//! the [`OutputBatch`] the Wasm export would return, reusing its buffers from batch to batch, so
//! that the native and the Wasm runs of a plugin do the same work.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::__private::wit::weir::plugin::types::{
    Emitted, EventBatch, OutputBatch, Property, Rejection,
};
use crate::bindings::{CacheStart, StateWrites};
use crate::columns;
use crate::context::{Backend, Context, Level};
use crate::error::Result;
use crate::event::Event;
use crate::runner::Runner;

/// One log record a plugin wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// The message.
    pub message: String,
    /// The `key=value` fields, starting with the event's `position`.
    pub fields: Vec<(String, String)>,
}

/// The host's side, in memory: committed keyed state, counters, logs and the stage config.
#[derive(Debug, Default)]
struct Memory {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    counters: BTreeMap<String, u64>,
    logs: Vec<LogRecord>,
    config: String,
    /// Reference tables: rows (as JSON) by table and key.
    reference: BTreeMap<(String, String), String>,
    /// Host calls made, to show that state is cached per batch.
    state_calls: u64,
    /// The keys of the last batch's writes, as the host remembers them for a new instance.
    recent: Vec<Vec<u8>>,
    /// The backend (instance) whose cache matches the state, 0 when none does.
    cache_holder: u64,
    /// The time-to-live the plugin set for its next writes, in milliseconds (0: the stage's).
    ttl: u64,
    /// The time-to-live each key was last written with, when the plugin gave one.
    ttls: BTreeMap<Vec<u8>, u64>,
    /// Ids handed to backends so far.
    instances: u64,
}

/// Most keys a state may have for a stale cache to start again from all of it (as the host).
const WHOLE_STATE_KEYS: usize = 16_384;

/// The host's side of one instance: the shared memory and this instance's id.
struct MemoryBackend(Rc<RefCell<Memory>>, u64);

impl MemoryBackend {
    fn new(memory: &Rc<RefCell<Memory>>) -> Self {
        let id = {
            let mut memory = memory.borrow_mut();
            memory.instances += 1;
            memory.instances
        };
        MemoryBackend(memory.clone(), id)
    }
}

impl Backend for MemoryBackend {
    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        let mut memory = self.0.borrow_mut();
        memory.state_calls += 1;
        memory.state.get(key).cloned()
    }

    fn state_write_batch(&mut self, writes: &StateWrites) {
        let mut memory = self.0.borrow_mut();
        memory.state_calls += 1;
        memory.recent.clear();
        let (mut key_start, mut value_start) = (0, 0);
        for (index, key_end) in columns::u32s(&writes.key_ends).enumerate() {
            let value_end = columns::u32_at(&writes.value_ends, index).expect("a value end");
            let (key_end, value_end) = (key_end as usize, value_end as usize);
            let delete = columns::bool_at(&writes.deletes, index).expect("a delete flag");
            let key = writes.keys[key_start..key_end].to_vec();
            memory.recent.push(key.clone());
            let ttl = memory.ttl;
            if delete || ttl == 0 {
                memory.ttls.remove(&key);
            } else {
                memory.ttls.insert(key.clone(), ttl);
            }
            if delete {
                memory.state.remove(&key);
            } else {
                memory
                    .state
                    .insert(key, writes.values[value_start..value_end].to_vec());
            }
            (key_start, value_start) = (key_end, value_end);
        }
    }

    fn state_set_ttl(&mut self, ttl_ms: u64) {
        self.0.borrow_mut().ttl = ttl_ms;
    }

    fn state_check_cache(&mut self) -> Option<CacheStart> {
        // Not counted in `state_calls`: made once per batch, whatever the batch does.
        let mut memory = self.0.borrow_mut();
        if std::mem::replace(&mut memory.cache_holder, self.1) == self.1 {
            return None;
        }
        // As the host does: the whole state when it is small, else the keys written last.
        let whole = memory.state.len() <= WHOLE_STATE_KEYS;
        let keys: Vec<&Vec<u8>> = if whole {
            memory.state.keys().collect()
        } else {
            memory.recent.iter().collect()
        };
        let mut entries = StateWrites::default();
        for key in keys {
            let value = memory.state.get(key);
            entries.keys.extend_from_slice(key);
            columns::push_u32(&mut entries.key_ends, entries.keys.len() as u32);
            entries
                .values
                .extend_from_slice(value.map_or(&[][..], Vec::as_slice));
            columns::push_u32(&mut entries.value_ends, entries.values.len() as u32);
            columns::push_bool(&mut entries.deletes, value.is_none());
        }
        Some(CacheStart { entries, whole })
    }

    fn counter_add(&mut self, name: &str, delta: u64) {
        let mut memory = self.0.borrow_mut();
        let counter = memory.counters.entry(name.to_owned()).or_default();
        *counter = counter.saturating_add(delta);
    }

    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        self.0.borrow_mut().logs.push(LogRecord {
            level,
            message: message.to_owned(),
            fields: fields.to_vec(),
        });
    }

    fn config(&mut self) -> String {
        self.0.borrow().config.clone()
    }

    fn reference_lookup(&mut self, table: &str, key: &str) -> Option<String> {
        self.0
            .borrow()
            .reference
            .get(&(table.to_owned(), key.to_owned()))
            .cloned()
    }
}

/// Adds the row `row` under `key` to reference table `table` of `memory`.
fn add_reference_row(memory: &RefCell<Memory>, table: &str, key: &str, row: &serde_json::Value) {
    memory
        .borrow_mut()
        .reference
        .insert((table.to_owned(), key.to_owned()), row.to_string());
}

/// Runs a transform natively over pre-built columnar batches: the entry point for benchmarks.
///
/// It is the plugin's Wasm export without Wasm: [`NativeRunner::process`] runs the same runner
/// code over the same [`EventBatch`] layout and returns the same [`OutputBatch`] encoding, with
/// keyed state, counters and logs kept in memory (committed at the end of each batch, as the host
/// does). The output buffers are reused from batch to batch. Logs accumulate in memory: do not
/// benchmark a plugin that logs per event.
pub struct NativeRunner<F> {
    runner: Runner,
    memory: Rc<RefCell<Memory>>,
    transform: F,
}

impl<F> std::fmt::Debug for NativeRunner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRunner").finish_non_exhaustive()
    }
}

impl<F> NativeRunner<F>
where
    F: Fn(&Event<'_>, &mut Context) -> Result<()>,
{
    /// A runner for `transform`, with empty state and the configuration `{}`.
    pub fn new(transform: F) -> Self {
        let memory = Rc::new(RefCell::new(Memory {
            config: "{}".to_owned(),
            ..Memory::default()
        }));
        NativeRunner {
            runner: Runner::new(Box::new(MemoryBackend::new(&memory))),
            memory,
            transform,
        }
    }

    /// Sets the stage configuration (what the pipeline file's `config` table would give).
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.memory.borrow_mut().config = config.to_string();
        self.runner.ctx.forget_config();
        self
    }

    /// Stores `value` (as JSON) under `key` in the keyed state, as if an earlier batch had.
    ///
    /// # Panics
    /// When `value` cannot be serialised as JSON.
    pub fn with_state<T: Serialize + ?Sized>(self, key: &str, value: &T) -> Self {
        let json = match serde_json::to_vec(value) {
            Ok(json) => json,
            Err(e) => panic!("cannot serialise the state of `{key}`: {e}"),
        };
        let mut memory = self.memory.borrow_mut();
        memory.state.insert(key.as_bytes().to_vec(), json);
        // Written behind the instance's back: its cache no longer holds.
        memory.cache_holder = 0;
        drop(memory);
        self
    }

    /// Adds a row to a reference table, as if the stage's `reference` configuration loaded it:
    /// `ctx.lookup(table, key)` finds `row`.
    pub fn with_reference(self, table: &str, key: &str, row: serde_json::Value) -> Self {
        add_reference_row(&self.memory, table, key, &row);
        self
    }

    /// Replaces the plugin instance with a new one over the same host state, as the host does at
    /// a hot swap or after a trap: the configuration and the state cache start again (the cache
    /// from the keys the last batch wrote).
    pub fn new_instance(&mut self) {
        self.runner = Runner::new(Box::new(MemoryBackend::new(&self.memory)));
    }

    /// Runs one batch and returns its output, as the Wasm export would return it to the host.
    pub fn process(&mut self, batch: &EventBatch) -> &OutputBatch {
        self.runner.run(batch, &self.transform);
        self.runner.output()
    }

    /// The keyed state under `key`, deserialized from JSON.
    ///
    /// # Panics
    /// When the stored value does not deserialize as `T`.
    pub fn state<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.state_bytes(key)?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(e) => panic!(
                "the state of `{key}` ({}) is not a {}: {e}",
                String::from_utf8_lossy(&bytes),
                std::any::type_name::<T>()
            ),
        }
    }

    /// The keyed state under `key`, as the stored JSON bytes.
    pub fn state_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.memory.borrow().state.get(key.as_bytes()).cloned()
    }

    /// The time-to-live `key` was last written with ([`Context::put_with_ttl`]); `None` for a
    /// key written without one (the stage's `state_ttl` applies) or not in the state.
    pub fn state_ttl(&self, key: &str) -> Option<std::time::Duration> {
        let memory = self.memory.borrow();
        memory
            .ttls
            .get(key.as_bytes())
            .map(|&ms| std::time::Duration::from_millis(ms))
    }

    /// The keys in the keyed state, sorted.
    pub fn state_keys(&self) -> Vec<String> {
        self.memory
            .borrow()
            .state
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    /// How many state calls reached the host so far: `get`s and batch writes (not the cache check
    /// made once per batch).
    pub fn state_calls(&self) -> u64 {
        self.memory.borrow().state_calls
    }

    /// All counters, summed over every batch so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.memory.borrow().counters.clone()
    }

    /// All log records written so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.memory.borrow().logs.clone()
    }
}

/// An input event for the [`Harness`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestEvent {
    /// The body.
    pub body: Vec<u8>,
    /// Event time, in milliseconds since the Unix epoch (what [`Event::time`] returns).
    pub time: i64,
    /// Enqueued time, in milliseconds since the Unix epoch.
    pub enqueued_time: i64,
    /// The partition key.
    pub key: Option<String>,
    /// Application properties.
    pub properties: Vec<(String, String)>,
    /// Source position; `None` lets the harness number events in the order it sees them.
    pub position: Option<u64>,
    /// The name of the source the event comes from (what [`Event::source`] returns); empty by
    /// default.
    pub source: String,
}

impl TestEvent {
    /// An event with this body, at time 0.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        TestEvent {
            body: body.into(),
            ..TestEvent::default()
        }
    }

    /// An event whose body is `value` as JSON.
    pub fn json(value: &serde_json::Value) -> Self {
        TestEvent::new(value.to_string())
    }

    /// With event time `time_ms` (milliseconds since the Unix epoch).
    pub fn at(mut self, time_ms: i64) -> Self {
        self.time = time_ms;
        self
    }

    /// With enqueued time `time_ms`.
    pub fn enqueued_at(mut self, time_ms: i64) -> Self {
        self.enqueued_time = time_ms;
        self
    }

    /// With partition key `key`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With application property `name` = `value`.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// At source position `position`.
    pub fn position(mut self, position: u64) -> Self {
        self.position = Some(position);
        self
    }

    /// From the source named `source` (a pipeline with several sources tells them apart by it).
    pub fn from_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }
}

impl From<&str> for TestEvent {
    fn from(body: &str) -> Self {
        TestEvent::new(body)
    }
}

impl From<serde_json::Value> for TestEvent {
    fn from(value: serde_json::Value) -> Self {
        TestEvent::json(&value)
    }
}

/// Lays `events` out in a columnar batch of partition `partition`, the way the host does. An event
/// without a position gets its index in `events`.
///
/// # Panics
/// When the bodies, keys or batch exceed the 4 GiB that the batch's `u32` offsets can address.
pub fn batch_of(partition: u32, events: &[TestEvent]) -> EventBatch {
    let offset = |len: usize| match u32::try_from(len) {
        Ok(offset) => offset,
        Err(_) => panic!("a batch is limited to 4 GiB of bodies and of keys"),
    };
    let mut batch = EventBatch {
        partition,
        bodies: Vec::with_capacity(events.iter().map(|e| e.body.len()).sum()),
        body_ends: Vec::with_capacity(events.len() * 4),
        positions: Vec::with_capacity(events.len() * 8),
        event_times: Vec::with_capacity(events.len() * 8),
        enqueued_times: Vec::with_capacity(events.len() * 8),
        keys: Vec::new(),
        key_ends: Vec::with_capacity(events.len() * 4),
        properties: Vec::new(),
        sources: Vec::new(),
        event_sources: Vec::with_capacity(events.len() * 2),
        field_names: Vec::new(),
        field_values: Vec::new(),
        field_ends: Vec::new(),
        projected: Vec::new(),
    };
    for (index, event) in events.iter().enumerate() {
        batch.bodies.extend_from_slice(&event.body);
        columns::push_u32(&mut batch.body_ends, offset(batch.bodies.len()));
        if let Some(key) = &event.key {
            batch.keys.extend_from_slice(key.as_bytes());
        }
        columns::push_u32(&mut batch.key_ends, offset(batch.keys.len()));
        let position = event.position.unwrap_or(index as u64);
        columns::push_u64(&mut batch.positions, position);
        columns::push_s64(&mut batch.event_times, event.time);
        columns::push_s64(&mut batch.enqueued_times, event.enqueued_time);
        let source = match batch.sources.iter().position(|s| *s == event.source) {
            Some(found) => found,
            None => {
                batch.sources.push(event.source.clone());
                batch.sources.len() - 1
            }
        };
        match u16::try_from(source) {
            Ok(source) => columns::push_u16(&mut batch.event_sources, source),
            Err(_) => panic!("a batch is limited to 65,536 source names"),
        }
        for (name, value) in &event.properties {
            batch.properties.push(Property {
                event: offset(index),
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
    batch
}

/// One record a plugin emitted, as the host receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The stage output it was sent to.
    pub output: String,
    /// The payload; for a forwarded record, the input event's body.
    pub bytes: Vec<u8>,
    /// The payload parsed as JSON, or `None` when it is not JSON.
    pub json: Option<serde_json::Value>,
    /// Whether the record was sent with [`Context::forward`].
    pub forwarded: bool,
}

impl Record {
    /// The payload as text, or `None` when it is not UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }
}

/// What one input event produced: records, or a rejection (never both).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Every record emitted for the event, in emission order.
    pub records: Vec<Record>,
    /// The rejection reason, when the transform returned `Err`.
    pub rejection: Option<String>,
}

impl Outcome {
    /// The rejection reason, if the event was rejected.
    pub fn rejection(&self) -> Option<&str> {
        self.rejection.as_deref()
    }

    /// Whether the event was rejected.
    pub fn is_rejected(&self) -> bool {
        self.rejection.is_some()
    }

    /// The records sent to `output`.
    pub fn output(&self, output: &str) -> Vec<&Record> {
        self.records.iter().filter(|r| r.output == output).collect()
    }

    /// The records sent to `output`, parsed as JSON.
    ///
    /// # Panics
    /// When one of them is not JSON.
    pub fn json(&self, output: &str) -> Vec<serde_json::Value> {
        self.output(output)
            .into_iter()
            .map(|r| match &r.json {
                Some(value) => value.clone(),
                None => panic!(
                    "a record sent to `{output}` is not JSON: {}",
                    String::from_utf8_lossy(&r.bytes)
                ),
            })
            .collect()
    }

    /// Whether the input event was forwarded unchanged to `output`.
    pub fn forwarded_to(&self, output: &str) -> bool {
        self.records
            .iter()
            .any(|r| r.output == output && r.forwarded)
    }
}

/// Runs a transform natively over test events, through the plugin's own batch runner.
///
/// ```
/// use weir_sdk::prelude::*;
/// use weir_sdk::testing::{Harness, TestEvent};
///
/// fn count(event: &Event, ctx: &mut Context) -> Result<()> {
///     let key = event.key().unwrap_or("none");
///     let seen: u64 = ctx.get(key)?.unwrap_or(0);
///     ctx.put(key, &(seen + 1))?;
///     ctx.emit("counts", &serde_json::json!({ "key": key, "seen": seen + 1 }))
/// }
///
/// let mut harness = Harness::new(count);
/// let outcomes = harness.run_batch(vec![
///     TestEvent::new("{}").key("a"),
///     TestEvent::new("{}").key("a"),
/// ]);
/// assert_eq!(outcomes[1].json("counts")[0]["seen"], 2);
/// assert_eq!(harness.state::<u64>("a"), Some(2));
/// ```
pub struct Harness<F> {
    runner: NativeRunner<F>,
    partition: u32,
    next_position: u64,
}

impl<F> std::fmt::Debug for Harness<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("partition", &self.partition)
            .field("next_position", &self.next_position)
            .finish_non_exhaustive()
    }
}

impl<F> Harness<F>
where
    F: Fn(&Event<'_>, &mut Context) -> Result<()>,
{
    /// A harness for `transform`, with empty state, the configuration `{}` and partition 0.
    pub fn new(transform: F) -> Self {
        Harness {
            runner: NativeRunner::new(transform),
            partition: 0,
            next_position: 0,
        }
    }

    /// Sets the stage configuration (what the pipeline file's `config` table would give).
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.runner = self.runner.with_config(config);
        self
    }

    /// Replaces the plugin instance with a new one over the same keyed state, as the host does at
    /// a hot swap or after a trap (see [`NativeRunner::new_instance`]).
    pub fn new_instance(&mut self) {
        self.runner.new_instance();
    }

    /// Stores `value` (as JSON) under `key` in the keyed state, as if an earlier batch had.
    ///
    /// # Panics
    /// When `value` cannot be serialised as JSON.
    pub fn with_state<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Self {
        self.runner = self.runner.with_state(key, value);
        self
    }

    /// Adds a row to a reference table: `ctx.lookup(table, key)` finds `row`.
    pub fn with_reference(mut self, table: &str, key: &str, row: serde_json::Value) -> Self {
        self.runner = self.runner.with_reference(table, key, row);
        self
    }

    /// Runs events as if they came from source partition `partition`.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = partition;
        self
    }

    /// Runs a batch of one event with this body, at time 0.
    pub fn run(&mut self, body: impl AsRef<[u8]>) -> Outcome {
        self.run_event(TestEvent::new(body.as_ref()))
    }

    /// Runs a batch of one event.
    pub fn run_event(&mut self, event: TestEvent) -> Outcome {
        self.run_batch(vec![event]).pop().unwrap_or_default()
    }

    /// Runs one batch of events and returns what each produced, in input order. Keyed state
    /// written by the batch is committed when it ends, as the host commits it.
    ///
    /// # Panics
    /// When the output the runner produced is not what the host accepts (an SDK bug).
    pub fn run_batch(&mut self, events: impl IntoIterator<Item = TestEvent>) -> Vec<Outcome> {
        let mut events: Vec<TestEvent> = events.into_iter().collect();
        for event in &mut events {
            let position = *event.position.get_or_insert(self.next_position);
            self.next_position = position + 1;
        }
        let batch = batch_of(self.partition, &events);
        let output = self.runner.process(&batch);
        decode(output, &events)
    }

    /// The output of the last batch, as the Wasm export would have returned it to the host.
    pub fn last_output(&self) -> &OutputBatch {
        self.runner.runner.output()
    }

    /// The keyed state under `key`, deserialized from JSON.
    ///
    /// # Panics
    /// When the stored value does not deserialize as `T`.
    pub fn state<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.runner.state(key)
    }

    /// The keyed state under `key`, as the stored JSON bytes.
    pub fn state_bytes(&self, key: &str) -> Option<Vec<u8>> {
        self.runner.state_bytes(key)
    }

    /// The time-to-live `key` was last written with ([`Context::put_with_ttl`]); `None` for a
    /// key written without one (the stage's `state_ttl` applies) or not in the state.
    pub fn state_ttl(&self, key: &str) -> Option<std::time::Duration> {
        self.runner.state_ttl(key)
    }

    /// The keys in the keyed state, sorted.
    pub fn state_keys(&self) -> Vec<String> {
        self.runner.state_keys()
    }

    /// How many state calls reached the host so far: `get`s and batch writes (not the cache check
    /// made once per batch).
    pub fn state_calls(&self) -> u64 {
        self.runner.state_calls()
    }

    /// All counters, summed over every batch so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.runner.counters()
    }

    /// The counter `name` (0 when never added to).
    pub fn counter(&self, name: &str) -> u64 {
        self.runner.counters().get(name).copied().unwrap_or(0)
    }

    /// All log records written so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.runner.logs()
    }
}

/// Decodes `output` the way the host does (see `host/src/stage/transform.rs`), checking every
/// index and offset, into one outcome per input event.
fn decode(output: &OutputBatch, events: &[TestEvent]) -> Vec<Outcome> {
    let mut outcomes = vec![Outcome::default(); events.len()];
    let mut start = 0usize;
    assert!(
        columns::whole_records(&output.emitted),
        "the emitted column is not a whole number of 16-byte records"
    );
    for emitted in columns::emitted(&output.emitted) {
        let event = emitted.event as usize;
        let Some(input) = events.get(event) else {
            panic!("record for event {event} of a batch of {}", events.len());
        };
        let Some(target) = output.targets.get(emitted.target as usize) else {
            panic!(
                "record for target {} of {:?}",
                emitted.target, output.targets
            );
        };
        let end = emitted.payload_end as usize;
        let Some(payload) = output.payloads.get(start..end) else {
            panic!(
                "payload end {end} after {start} in a buffer of {}",
                output.payloads.len()
            );
        };
        start = end;
        let bytes = if emitted.forward {
            assert!(payload.is_empty(), "a forwarded record carries a payload");
            input.body.clone()
        } else {
            payload.to_vec()
        };
        outcomes[event].records.push(Record {
            output: target.clone(),
            json: serde_json::from_slice(&bytes).ok(),
            bytes,
            forwarded: emitted.forward,
        });
    }
    assert_eq!(
        start,
        output.payloads.len(),
        "payload bytes after the last record"
    );
    for rejection in &output.rejected {
        let event = rejection.event as usize;
        let Some(outcome) = outcomes.get_mut(event) else {
            panic!("rejection of event {event} of a batch of {}", events.len());
        };
        assert!(
            outcome.records.is_empty() && outcome.rejection.is_none(),
            "event {event} was rejected but kept outputs, or was rejected twice"
        );
        outcome.rejection = Some(rejection.reason.clone());
    }
    outcomes
}

/// One window for the [`WindowHarness`]: its key (a JSON object of the grouped fields) and bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct TestWindow {
    /// The group's key, such as `{"DeviceId": "d1"}`.
    pub key: serde_json::Value,
    /// Start, inclusive, in milliseconds since the Unix epoch.
    pub start: i64,
    /// End, exclusive.
    pub end: i64,
}

impl TestWindow {
    /// The window `[start, end)` of the group `key`.
    pub fn new(key: serde_json::Value, start: i64, end: i64) -> Self {
        TestWindow { key, start, end }
    }
}

/// What a window aggregate made of one window: its outputs, and the events it refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowOutcome {
    /// What `finish` produced (its `rejection` is set when `finish` returned `Err`).
    pub outcome: Outcome,
    /// Events `fold` refused: their index in the input, and why.
    pub rejected: Vec<(usize, String)>,
}

impl WindowOutcome {
    /// The records sent to `output`, parsed as JSON.
    ///
    /// # Panics
    /// When one of them is not JSON.
    pub fn json(&self, output: &str) -> Vec<serde_json::Value> {
        self.outcome.json(output)
    }
}

/// Runs a window aggregate natively, through the same fold and finish code as its component:
/// accumulators are serialised between calls exactly as the host stores them.
///
/// ```
/// use weir_sdk::prelude::*;
/// use weir_sdk::testing::{TestEvent, TestWindow, WindowHarness};
///
/// #[derive(Default, Clone, Serialize, Deserialize)]
/// struct Total(f64);
///
/// impl Aggregate for Total {
///     fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
///         self.0 += event.value()?["Amount"].as_f64().ok_or("no Amount")?;
///         Ok(())
///     }
///     fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
///         ctx.emit("totals", &serde_json::json!({ "Total": self.0 }))
///     }
/// }
///
/// let mut harness = WindowHarness::<Total>::new();
/// let window = TestWindow::new(serde_json::json!({"Shop": "s1"}), 0, 60_000);
/// let outcome = harness.window(&window, [
///     TestEvent::new(r#"{"Amount": 2.5}"#).at(1_000),
///     TestEvent::new(r#"{"Amount": 4}"#).at(2_000),
///     TestEvent::new(r#"{}"#).at(3_000),
/// ]);
/// assert_eq!(outcome.json("totals")[0]["Total"], 6.5);
/// assert_eq!(outcome.rejected, vec![(2, "no Amount".to_owned())]);
/// ```
pub struct WindowHarness<A> {
    runner: crate::window::WindowRunner,
    memory: Rc<RefCell<Memory>>,
    _accumulator: std::marker::PhantomData<A>,
}

impl<A> std::fmt::Debug for WindowHarness<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowHarness").finish_non_exhaustive()
    }
}

impl<A: crate::Aggregate> Default for WindowHarness<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: crate::Aggregate> WindowHarness<A> {
    /// A harness with empty keyed state and the configuration `{}`.
    pub fn new() -> Self {
        let memory = Rc::new(RefCell::new(Memory {
            config: "{}".to_owned(),
            ..Memory::default()
        }));
        WindowHarness {
            runner: crate::window::WindowRunner::new(Context::new(Box::new(MemoryBackend::new(
                &memory,
            )))),
            memory,
            _accumulator: std::marker::PhantomData,
        }
    }

    /// Sets the stage configuration (what the pipeline file's `config` table would give).
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.memory.borrow_mut().config = config.to_string();
        self.runner.ctx.forget_config();
        self
    }

    /// Adds a row to a reference table: `ctx.lookup(table, key)` finds `row`.
    pub fn with_reference(self, table: &str, key: &str, row: serde_json::Value) -> Self {
        add_reference_row(&self.memory, table, key, &row);
        self
    }

    /// Folds `events` into `accumulator` (a fresh one when `None`) in one call, as the host does
    /// with a batch: returns the new accumulator (read back from its serialised form) and the
    /// events refused (index, reason).
    ///
    /// # Panics
    /// When the accumulator does not round-trip through JSON.
    pub fn fold(
        &mut self,
        window: &TestWindow,
        accumulator: Option<&A>,
        events: impl IntoIterator<Item = TestEvent>,
    ) -> (A, Vec<(usize, String)>) {
        let events: Vec<TestEvent> = events.into_iter().collect();
        let stored = match accumulator {
            Some(accumulator) => match serde_json::to_vec(accumulator) {
                Ok(bytes) => bytes,
                Err(e) => panic!("the accumulator cannot be serialised: {e}"),
            },
            None => Vec::new(),
        };
        let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
        let request = crate::bindings::FoldRequest {
            events: batch_of(0, &events),
            windows: vec![window.wit()],
            accumulator_ends: columns::u32_column(
                [u32::try_from(stored.len()).unwrap_or(u32::MAX)],
            ),
            accumulators: stored,
            members: columns::u32_column(0..count),
            member_ends: columns::u32_column([count]),
        };
        let response = self.runner.fold::<A>(&request);
        let accumulator = match serde_json::from_slice::<A>(&response.accumulators) {
            Ok(accumulator) => accumulator,
            Err(e) => panic!(
                "the accumulator returned ({}) does not read back: {e}",
                String::from_utf8_lossy(&response.accumulators)
            ),
        };
        let rejected = response
            .rejected
            .into_iter()
            .map(|r| (r.event as usize, r.reason))
            .collect();
        (accumulator, rejected)
    }

    /// Closes `window` with `accumulator`: what `finish` emits, or why it refused.
    ///
    /// # Panics
    /// When the accumulator cannot be serialised, or the output is not what the host accepts.
    pub fn finish(&mut self, window: &TestWindow, accumulator: &A) -> Outcome {
        let stored = match serde_json::to_vec(accumulator) {
            Ok(bytes) => bytes,
            Err(e) => panic!("the accumulator cannot be serialised: {e}"),
        };
        let request = crate::bindings::FinishRequest {
            windows: vec![window.wit()],
            accumulator_ends: columns::u32_column(
                [u32::try_from(stored.len()).unwrap_or(u32::MAX)],
            ),
            accumulators: stored,
        };
        let output = self.runner.finish::<A>(&request);
        decode(output, &[TestEvent::default()])
            .pop()
            .unwrap_or_default()
    }

    /// Folds `events` into a fresh accumulator and closes the window: the whole life of one
    /// window, in one batch.
    pub fn window(
        &mut self,
        window: &TestWindow,
        events: impl IntoIterator<Item = TestEvent>,
    ) -> WindowOutcome {
        let (accumulator, rejected) = self.fold(window, None, events);
        WindowOutcome {
            outcome: self.finish(window, &accumulator),
            rejected,
        }
    }

    /// All counters, summed over every call so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.memory.borrow().counters.clone()
    }
}

impl TestWindow {
    fn wit(&self) -> crate::__private::wit::weir::plugin::types::Window {
        crate::__private::wit::weir::plugin::types::Window {
            key: self.key.to_string(),
            start: self.start,
            end: self.end,
        }
    }
}

/// Runs a join function natively, through the same code as its component: each call is one
/// request from the host, with the pairs laid out as the host lays them out.
///
/// ```
/// use weir_sdk::prelude::*;
/// use weir_sdk::testing::{JoinHarness, TestEvent};
///
/// fn enrich(left: Option<&Event>, right: Option<&Event>, ctx: &mut Context) -> Result<()> {
///     let order = left.ok_or("a payment without its order")?.value()?;
///     let paid = right.map(|p| p.value()).transpose()?;
///     ctx.emit("rows", &serde_json::json!({
///         "OrderId": order["OrderId"],
///         "Amount": paid.map(|p| p["Amount"].clone()),
///     }))
/// }
///
/// let mut harness = JoinHarness::new(enrich);
/// let order = TestEvent::new(r#"{"OrderId": "o1"}"#);
/// let payment = TestEvent::new(r#"{"OrderId": "o1", "Amount": 12.5}"#);
/// let outcome = harness.pair(Some(order.clone()), Some(payment.clone()));
/// assert_eq!(outcome.json("rows")[0]["Amount"], 12.5);
/// let outcome = harness.pair(Some(order), None);
/// assert!(outcome.json("rows")[0]["Amount"].is_null());
/// assert_eq!(harness.pair(None, Some(payment)).rejection(), Some("a payment without its order"));
/// ```
pub struct JoinHarness<F> {
    runner: crate::join::JoinRunner,
    memory: Rc<RefCell<Memory>>,
    join: F,
}

impl<F> std::fmt::Debug for JoinHarness<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHarness").finish_non_exhaustive()
    }
}

impl<F> JoinHarness<F>
where
    F: Fn(Option<&Event<'_>>, Option<&Event<'_>>, &mut Context) -> Result<()>,
{
    /// A harness for `join`, with empty keyed state and the configuration `{}`.
    pub fn new(join: F) -> Self {
        let memory = Rc::new(RefCell::new(Memory {
            config: "{}".to_owned(),
            ..Memory::default()
        }));
        JoinHarness {
            runner: crate::join::JoinRunner::new(Context::new(Box::new(MemoryBackend::new(
                &memory,
            )))),
            memory,
            join,
        }
    }

    /// Sets the stage configuration (what the pipeline file's `config` table would give).
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.memory.borrow_mut().config = config.to_string();
        self.runner.ctx.forget_config();
        self
    }

    /// Adds a row to a reference table: `ctx.lookup(table, key)` finds `row`.
    pub fn with_reference(self, table: &str, key: &str, row: serde_json::Value) -> Self {
        add_reference_row(&self.memory, table, key, &row);
        self
    }

    /// Enriches one pair (or one event alone).
    pub fn pair(&mut self, left: Option<TestEvent>, right: Option<TestEvent>) -> Outcome {
        self.pairs([(left, right)]).pop().unwrap_or_default()
    }

    /// Enriches several pairs in one request, as the host sends a batch's pairs.
    ///
    /// # Panics
    /// When the output the runner produced is not what the host accepts (an SDK bug).
    pub fn pairs(
        &mut self,
        pairs: impl IntoIterator<Item = (Option<TestEvent>, Option<TestEvent>)>,
    ) -> Vec<Outcome> {
        let mut events: Vec<TestEvent> = Vec::new();
        let mut layout = Vec::new();
        let mut push = |event: Option<TestEvent>| {
            event.map(|event| {
                events.push(event);
                u32::try_from(events.len() - 1).unwrap_or(u32::MAX)
            })
        };
        for (left, right) in pairs {
            let left = push(left);
            let right = push(right);
            layout.push(crate::bindings::JoinPair { left, right });
        }
        let request = crate::bindings::JoinRequest {
            events: batch_of(0, &events),
            pairs: layout,
        };
        let slots = vec![TestEvent::default(); request.pairs.len()];
        let output = self.runner.run(&request, &self.join);
        decode(output, &slots)
    }

    /// All counters, summed over every call so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.memory.borrow().counters.clone()
    }
}
