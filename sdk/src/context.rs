//! What a transform function can do besides reading its event: emit records, keep keyed state,
//! read its configuration, log and count.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::{CacheStart, OutputBatch, Rejection, StateWrites};
use crate::columns::{self, EmittedRecord, push_bool, push_emitted, push_u32};
use crate::error::{Error, Result};

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something the plugin could not handle.
    Error,
}

/// The host services a [`Context`] uses: the host's imports inside Wasm, memory in native tests.
pub(crate) trait Backend {
    /// The stored value of `key`.
    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    /// Applies the writes of a batch, in order, in one call.
    fn state_write_batch(&mut self, writes: &StateWrites);
    /// Sets the time-to-live of the keys written next in this call, in milliseconds of event
    /// time (0: the stage's).
    fn state_set_ttl(&mut self, ttl_ms: u64);
    /// `None` when this instance's cache still matches the host's state; otherwise what to start
    /// the cache again from.
    fn state_check_cache(&mut self) -> Option<CacheStart>;
    /// Adds `delta` to counter `name`.
    fn counter_add(&mut self, name: &str, delta: u64);
    /// Writes one log record.
    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]);
    /// The stage's configuration as JSON text.
    fn config(&mut self) -> String;
    /// The row of reference table `table` with key `key`, as JSON text.
    fn reference_lookup(&mut self, table: &str, key: &str) -> Option<String>;
}

/// Everything a transform function can do besides reading its event.
///
/// One `Context` lives as long as the plugin instance; the runner hands it to the transform
/// function for every event of every batch.
///
/// - **Outputs**: [`emit`](Context::emit) serialises a record as JSON straight into the batch's
///   single output buffer; [`forward`](Context::forward) sends the input event on unchanged,
///   without copying it; [`emit_raw`](Context::emit_raw) sends bytes as they are. Output names are
///   the stage outputs of the pipeline file.
/// - **Keyed state** ([`get`](Context::get), [`put`](Context::put),
///   [`delete`](Context::delete)): values are stored as JSON by the host, per stage and
///   partition, checkpointed with the source position. They are cached in the plugin instance:
///   the first `get` of a key asks the host, later ones (in this batch or the next) do not, and
///   the keys written in a batch reach the host in one call when the batch ends. The cache is
///   always the host's state: at the start of each batch one host call says whether another
///   instance wrote the state since (a hot swap, a version's fallback, a replacement after a
///   trap, a restore); if so the cache starts again, from the whole state when it is small (at
///   most 16,384 keys) or else the keys the stage wrote last, so that a hot swap does not
///   re-read them one by one.
/// - **Configuration** ([`config`](Context::config)): the stage's `config` table, read once per
///   instance.
/// - **Logs and counters** ([`log`](Context::log), [`info`](Context::info), ...,
///   [`counter`](Context::counter)).
///
/// When the function returns `Err`, the event is rejected and what it emitted and wrote to keyed
/// state is discarded; its log records and counters stay.
pub struct Context {
    backend: Box<dyn Backend>,
    pub(crate) out: OutputBatch,
    /// Index in the batch and position of the event being processed.
    event: u32,
    position: u64,
    /// Lengths of the output buffers when the current event started, to roll a rejection back.
    payloads_mark: usize,
    emitted_mark: usize,
    /// Size of the last batch's payloads, to size the next buffer once.
    payloads_hint: usize,
    state: StateCache,
    counters: Vec<(String, u64)>,
    config_json: Option<String>,
    config_typed: Vec<(TypeId, Box<dyn Any>)>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("event", &self.event)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

pub(crate) fn empty_output() -> OutputBatch {
    OutputBatch {
        targets: Vec::new(),
        payloads: Vec::new(),
        emitted: Vec::new(),
        rejected: Vec::new(),
        wanted_fields: Vec::new(),
    }
}

impl Context {
    pub(crate) fn new(backend: Box<dyn Backend>) -> Self {
        Context {
            backend,
            out: empty_output(),
            event: 0,
            position: 0,
            payloads_mark: 0,
            emitted_mark: 0,
            payloads_hint: 0,
            state: StateCache::default(),
            counters: Vec::new(),
            config_json: None,
            config_typed: Vec::new(),
        }
    }

    // ----- Outputs -----

    /// Sends `value`, serialised as JSON, to output `output`.
    ///
    /// The JSON is written straight into the batch's output buffer: no allocation per record.
    /// Fails only when `value` cannot be serialised (a map with non-string keys, for example).
    pub fn emit<T: Serialize + ?Sized>(&mut self, output: &str, value: &T) -> Result<()> {
        let start = self.out.payloads.len();
        if let Err(e) = serde_json::to_writer(&mut self.out.payloads, value) {
            self.out.payloads.truncate(start);
            return Err(Error::reject(format!(
                "cannot serialise a record for output `{output}`: {e}"
            )));
        }
        self.add_record(output, start, false)
    }

    /// Sends `bytes` unchanged to output `output`.
    pub fn emit_raw(&mut self, output: &str, bytes: &[u8]) -> Result<()> {
        let start = self.out.payloads.len();
        self.out.payloads.extend_from_slice(bytes);
        self.add_record(output, start, false)
    }

    /// Sends the input event's body unchanged to output `output`.
    ///
    /// Nothing is copied: the host reuses the bytes it already holds.
    pub fn forward(&mut self, output: &str) {
        let end = self.out.payloads.len();
        let target = self.target(output);
        let record = EmittedRecord {
            event: self.event,
            target,
            // Payload offsets are checked when payloads are written, so this one fits.
            payload_end: u32::try_from(end).unwrap_or(u32::MAX),
            forward: true,
        };
        push_emitted(&mut self.out.emitted, record);
    }

    fn add_record(&mut self, output: &str, start: usize, forward: bool) -> Result<()> {
        let Ok(payload_end) = u32::try_from(self.out.payloads.len()) else {
            self.out.payloads.truncate(start);
            return Err(Error::reject(
                "the outputs of this batch exceed 4 GiB; emit less per event or use smaller batches",
            ));
        };
        let target = self.target(output);
        let record = EmittedRecord {
            event: self.event,
            target,
            payload_end,
            forward,
        };
        push_emitted(&mut self.out.emitted, record);
        Ok(())
    }

    /// The index of output `name` in this batch's targets, added on first use.
    fn target(&mut self, name: &str) -> u32 {
        let targets = &mut self.out.targets;
        let index = match targets.iter().position(|t| t == name) {
            Some(index) => index,
            None => {
                targets.push(name.to_owned());
                targets.len() - 1
            }
        };
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    // ----- Keyed state -----

    /// The value stored under `key`, deserialized from JSON; `None` when there is none.
    ///
    /// The first `get` of a key in a batch asks the host; later ones in the same batch (and
    /// those after a [`put`](Context::put)) are answered from the plugin's cache. A stored value
    /// that does not deserialize as `T` rejects the event with ``keyed state `KEY`: ...``.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        match self.state.read(self.backend.as_mut(), key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| Error::from(e).context(format_args!("keyed state `{key}`"))),
        }
    }

    /// Stores `value`, serialised as JSON, under `key`.
    ///
    /// The write is cached and reaches the host once, when the batch ends; it is discarded if the
    /// event is rejected or the batch traps.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        self.put_expiring(key, value, 0)
    }

    /// Stores `value` like [`put`](Context::put), to expire `ttl` of event time after this
    /// write: once the partition's watermark passes the event time the stage was at when it wrote
    /// the key (its latest event's) plus `ttl`, the host removes the key from the state and from
    /// its checkpoints, unless it was written again meanwhile. This replaces the stage's
    /// `state_ttl` for this write.
    pub fn put_with_ttl<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
        ttl: std::time::Duration,
    ) -> Result<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.put_expiring(key, value, ttl_ms)
    }

    fn put_expiring<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
        ttl: u64,
    ) -> Result<()> {
        let mut buffer = self.state.buffer();
        if let Err(e) = serde_json::to_writer(&mut buffer, value) {
            self.state.recycle(Cached::Present(buffer));
            return Err(Error::reject(format!(
                "cannot serialise keyed state `{key}`: {e}"
            )));
        }
        self.state.write(key, Cached::Present(buffer), ttl);
        Ok(())
    }

    /// Removes `key` from the keyed state (cached like [`put`](Context::put)).
    pub fn delete(&mut self, key: &str) {
        self.state.write(key, Cached::Absent, 0);
    }

    // ----- Configuration -----

    /// The stage's configuration (its `config` table in the pipeline file) deserialized as `T`.
    ///
    /// The JSON is fetched from the host once per instance, and the deserialized value is cached
    /// per type, so calling this for every event costs a clone of `T`. Use `#[serde(default)]` to
    /// give every setting a default. A configuration that does not match `T` rejects the event
    /// with `invalid stage config: ...`.
    pub fn config<T: DeserializeOwned + Clone + 'static>(&mut self) -> Result<T> {
        let id = TypeId::of::<T>();
        if let Some(value) = self
            .config_typed
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, value)| value.downcast_ref::<T>())
        {
            return Ok(value.clone());
        }
        let value: T = serde_json::from_str(self.config_json())
            .map_err(|e| Error::from(e).context("invalid stage config"))?;
        self.config_typed.push((id, Box::new(value.clone())));
        Ok(value)
    }

    /// The stage's configuration as JSON text (`{}` when the pipeline file gives none).
    pub fn config_json(&mut self) -> &str {
        let backend = &mut self.backend;
        self.config_json.get_or_insert_with(|| {
            let json = backend.config();
            if json.trim().is_empty() {
                "{}".to_owned()
            } else {
                json
            }
        })
    }

    // ----- Reference data -----

    /// The row of reference table `table` (a table the stage's `reference` configuration names)
    /// whose key column equals `key`, deserialized from JSON; `None` when there is no such row.
    ///
    /// The host loads reference tables (CSV, JSON or Delta) when the pipeline starts and again
    /// when they change. Each call asks the host: look a key up once per event, not per field. A
    /// row that does not deserialize as `T` rejects the event with ``reference table `TABLE`: ...``.
    ///
    /// ```
    /// use weir_sdk::prelude::*;
    ///
    /// #[derive(Deserialize)]
    /// #[serde(rename_all = "PascalCase")]
    /// struct Venue {
    ///     city: String,
    /// }
    ///
    /// fn city(event: &Event, ctx: &mut Context) -> Result<Option<String>> {
    ///     let venue_id = event.value()?["VenueId"].as_str().unwrap_or_default().to_owned();
    ///     Ok(ctx.lookup::<Venue>("venues", &venue_id)?.map(|v| v.city))
    /// }
    /// # let _ = city;
    /// ```
    pub fn lookup<T: DeserializeOwned>(&mut self, table: &str, key: &str) -> Result<Option<T>> {
        match self.backend.reference_lookup(table, key) {
            None => Ok(None),
            Some(row) => serde_json::from_str(&row)
                .map(Some)
                .map_err(|e| Error::from(e).context(format_args!("reference table `{table}`"))),
        }
    }

    /// The row of reference table `table` with key `key`, as JSON text.
    pub fn lookup_json(&mut self, table: &str, key: &str) -> Option<String> {
        self.backend.reference_lookup(table, key)
    }

    // ----- Logs and counters -----

    /// Writes a log record into the host's logs, tagged with the pipeline, stage, partition,
    /// plugin and the event's position.
    ///
    /// Each call crosses into the host: log what is exceptional, count what is frequent.
    pub fn log(&mut self, level: Level, message: impl fmt::Display) {
        self.log_with(level, message, &[]);
    }

    /// Like [`log`](Context::log), with extra `key=value` fields.
    pub fn log_with(&mut self, level: Level, message: impl fmt::Display, fields: &[(&str, &str)]) {
        let mut all = Vec::with_capacity(fields.len() + 1);
        all.push(("position".to_owned(), self.position.to_string()));
        all.extend(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.backend.log(level, &message.to_string(), &all);
    }

    /// Logs at [`Level::Trace`].
    pub fn trace(&mut self, message: impl fmt::Display) {
        self.log(Level::Trace, message);
    }

    /// Logs at [`Level::Debug`].
    pub fn debug(&mut self, message: impl fmt::Display) {
        self.log(Level::Debug, message);
    }

    /// Logs at [`Level::Info`].
    pub fn info(&mut self, message: impl fmt::Display) {
        self.log(Level::Info, message);
    }

    /// Logs at [`Level::Warn`].
    pub fn warn(&mut self, message: impl fmt::Display) {
        self.log(Level::Warn, message);
    }

    /// Logs at [`Level::Error`].
    pub fn error(&mut self, message: impl fmt::Display) {
        self.log(Level::Error, message);
    }

    /// Adds `delta` to the counter `name`, which the host exports with its metrics.
    ///
    /// Counters are summed in the plugin and reach the host once per batch.
    pub fn counter(&mut self, name: &str, delta: u64) {
        match self.counters.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total = total.saturating_add(delta),
            None => self.counters.push((name.to_owned(), delta)),
        }
    }

    // ----- Driven by the runner -----

    /// Starts a batch: empty outputs, no counts, and a state cache without unwritten changes (all
    /// already so, unless the previous batch panicked half-way in a native test).
    pub(crate) fn begin_batch(&mut self) {
        self.state.discard_if_unflushed();
        // One host call per batch says whether the cache still holds: it does not in a new
        // instance (first start, hot swap, replacement after a trap) nor after another instance
        // wrote the state (the version this one replaced or falls back on). The cache then starts
        // again from what the host hands over (see `Context`), so that this batch does not ask
        // for each key.
        if let Some(start) = self.backend.state_check_cache() {
            self.state.restart(&start);
        }
        self.counters.clear();
        self.out.targets.clear();
        self.out.payloads.clear();
        self.out.payloads.reserve(self.payloads_hint);
        self.out.emitted.clear();
        self.out.rejected.clear();
        self.out.wanted_fields.clear();
    }

    /// Starts event `index` of the batch.
    pub(crate) fn begin_event(&mut self, index: u32, position: u64) {
        self.event = index;
        self.position = position;
        self.payloads_mark = self.out.payloads.len();
        self.emitted_mark = self.out.emitted.len();
    }

    /// Ends the current event: keeps its effects, or rolls them back and records the rejection.
    pub(crate) fn end_event(&mut self, result: Result<()>) {
        match result {
            Ok(()) => self.state.commit_event(),
            Err(error) => self.reject(error.to_string()),
        }
    }

    /// Rejects the current event: its outputs and state writes are discarded.
    pub(crate) fn reject(&mut self, reason: String) {
        self.out.payloads.truncate(self.payloads_mark);
        self.out.emitted.truncate(self.emitted_mark);
        self.state.rollback_event();
        self.out.rejected.push(Rejection {
            event: self.event,
            reason,
        });
    }

    /// Ends the batch: hands the keys written to the host in one call, and the counters, one call
    /// per name.
    pub(crate) fn end_batch(&mut self) {
        self.state.flush(self.backend.as_mut());
        for (name, delta) in self.counters.drain(..) {
            if delta > 0 {
                self.backend.counter_add(&name, delta);
            }
        }
    }

    /// Drops the cached configuration, so that the next [`Context::config`] asks the backend.
    pub(crate) fn forget_config(&mut self) {
        self.config_json = None;
        self.config_typed.clear();
    }

    /// Moves this batch's outputs out (the Wasm export hands them to the host).
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn take_output(&mut self) -> OutputBatch {
        self.payloads_hint = self.out.payloads.len();
        std::mem::replace(&mut self.out, empty_output())
    }
}

/// A cached keyed-state value.
#[derive(Debug, Default)]
enum Cached {
    /// Not asked of the host yet in this batch.
    #[default]
    Unknown,
    /// The key has no value.
    Absent,
    /// The key's value, as JSON.
    Present(Vec<u8>),
}

#[derive(Debug, Default)]
struct Slot {
    key: String,
    value: Cached,
    /// Written since the last flush: to be written back to the host.
    dirty: bool,
    /// The time-to-live of the last write, in milliseconds of event time (0: the stage's).
    ttl: u64,
    /// Handed over by the host in the current restart (see [`StateCache::restart`]).
    fresh: bool,
}

/// The instance's keyed-state cache, with an undo log for the current event.
#[derive(Debug, Default)]
struct StateCache {
    index: HashMap<String, usize, BuildHasherDefault<FxHasher>>,
    slots: Vec<Slot>,
    /// Slots written since the last flush (a slot may appear once even if written many times).
    dirty: Vec<usize>,
    /// Slots overwritten by the current event, with what they held before.
    undo: Vec<(usize, Slot)>,
    /// Value buffers to reuse.
    spare: Vec<Vec<u8>>,
    /// The writes handed to the host at the end of a batch (buffers reused).
    writes: StateWrites,
    /// Whether the cache holds every key that has a value (the host handed the whole state
    /// over): a key not cached then has none, without asking.
    complete: bool,
}

/// Empties `writes`, keeping its buffers.
fn clear_writes(writes: &mut StateWrites) {
    writes.keys.clear();
    writes.key_ends.clear();
    writes.values.clear();
    writes.value_ends.clear();
    writes.deletes.clear();
}

/// Most value buffers kept for reuse.
const SPARE_BUFFERS: usize = 256;

/// Most keys cached; past this the cache is emptied after a flush, which bounds the memory it
/// takes in the instance (values are re-read from the host when needed).
const MAX_CACHED_KEYS: usize = 65_536;

// `StateWrites` is generated by wit-bindgen, which derives no `Default`; clippy sees a local type.
#[allow(clippy::derivable_impls)]
impl Default for StateWrites {
    fn default() -> Self {
        StateWrites {
            keys: Vec::new(),
            key_ends: Vec::new(),
            values: Vec::new(),
            value_ends: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

/// A `u32` offset into a buffer that crosses the WIT boundary (whose lists are u32-sized).
fn offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The entries of `writes`: each key with its value, `None` for a delete. Offsets come from the
/// host; an entry whose offsets fall outside the buffers ends the list.
fn write_entries(writes: &StateWrites) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let mut starts = (0usize, 0usize);
    columns::u32s(&writes.key_ends)
        .enumerate()
        .map_while(move |(index, key_end)| {
            let (key_start, value_start) = starts;
            let key_end = key_end as usize;
            let value_end =
                columns::u32_at(&writes.value_ends, index).map_or(value_start, |end| end as usize);
            starts = (key_end, value_end);
            let key = writes.keys.get(key_start..key_end)?;
            let value = writes.values.get(value_start..value_end)?;
            let delete = columns::bool_at(&writes.deletes, index).unwrap_or(false);
            Some((key, (!delete).then_some(value)))
        })
}

impl StateCache {
    /// Starts the cache again from what the host handed over: the whole state (the cached keys
    /// and their buffers are reused, a key not handed over has no value), or some keys (the
    /// rest is forgotten, to be asked for).
    fn restart(&mut self, start: &CacheStart) {
        if !start.whole {
            self.clear();
            self.prefill(&start.entries);
            return;
        }
        self.undo.clear();
        self.dirty.clear();
        for slot in &mut self.slots {
            slot.fresh = false;
            slot.dirty = false;
        }
        let mut complete = true;
        for (key, value) in write_entries(&start.entries) {
            // Keys the SDK writes are strings; anything else is left for `get` to ask about.
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            if !self.index.contains_key(key) && self.slots.len() >= MAX_CACHED_KEYS {
                complete = false;
                continue;
            }
            let index = self.slot(key);
            let old = std::mem::take(&mut self.slots[index].value);
            let new = match (value, old) {
                (None, old) => {
                    self.recycle(old);
                    Cached::Absent
                }
                (Some(value), Cached::Present(mut buffer)) => {
                    buffer.clear();
                    buffer.extend_from_slice(value);
                    Cached::Present(buffer)
                }
                (Some(value), _) => {
                    let mut buffer = self.buffer();
                    buffer.extend_from_slice(value);
                    Cached::Present(buffer)
                }
            };
            let slot = &mut self.slots[index];
            slot.value = new;
            slot.fresh = true;
        }
        for index in 0..self.slots.len() {
            if !self.slots[index].fresh {
                let old = std::mem::replace(&mut self.slots[index].value, Cached::Absent);
                self.recycle(old);
            }
        }
        self.complete = complete;
    }

    /// Caches `entries` (values the host holds now; a delete marks a key without one) for the
    /// keys not cached yet, up to the cache's bound.
    fn prefill(&mut self, entries: &StateWrites) {
        for (key, value) in write_entries(entries) {
            if self.slots.len() >= MAX_CACHED_KEYS {
                break;
            }
            // Keys the SDK writes are strings; anything else is left for `get` to ask about.
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            if self.index.contains_key(key) {
                continue;
            }
            let value = match value {
                None => Cached::Absent,
                Some(value) => {
                    let mut buffer = self.buffer();
                    buffer.extend_from_slice(value);
                    Cached::Present(buffer)
                }
            };
            self.slots.push(Slot {
                key: key.to_owned(),
                value,
                ..Slot::default()
            });
            self.index.insert(key.to_owned(), self.slots.len() - 1);
        }
    }

    fn slot(&mut self, key: &str) -> usize {
        if let Some(&slot) = self.index.get(key) {
            return slot;
        }
        self.slots.push(Slot {
            key: key.to_owned(),
            ..Slot::default()
        });
        let slot = self.slots.len() - 1;
        self.index.insert(key.to_owned(), slot);
        slot
    }

    fn read(&mut self, backend: &mut dyn Backend, key: &str) -> Option<&[u8]> {
        let index = self.slot(key);
        let slot = &mut self.slots[index];
        if matches!(slot.value, Cached::Unknown) {
            slot.value = if self.complete {
                Cached::Absent
            } else {
                match backend.state_get(key.as_bytes()) {
                    Some(value) => Cached::Present(value),
                    None => Cached::Absent,
                }
            };
        }
        match &slot.value {
            Cached::Present(value) => Some(value),
            Cached::Absent | Cached::Unknown => None,
        }
    }

    fn write(&mut self, key: &str, value: Cached, ttl: u64) {
        let index = self.slot(key);
        let slot = &mut self.slots[index];
        let old = Slot {
            key: String::new(),
            value: std::mem::replace(&mut slot.value, value),
            dirty: slot.dirty,
            ttl: std::mem::replace(&mut slot.ttl, ttl),
            fresh: false,
        };
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(index);
        }
        self.undo.push((index, old));
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(&mut self, value: Cached) {
        if let Cached::Present(mut buffer) = value
            && self.spare.len() < SPARE_BUFFERS
        {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    fn commit_event(&mut self) {
        while let Some((_, old)) = self.undo.pop() {
            self.recycle(old.value);
        }
    }

    fn rollback_event(&mut self) {
        while let Some((index, old)) = self.undo.pop() {
            let slot = &mut self.slots[index];
            let new = std::mem::replace(&mut slot.value, old.value);
            // A slot that was clean before the event is clean again (it stays listed in `dirty`,
            // and the flush skips it).
            slot.dirty = old.dirty;
            slot.ttl = old.ttl;
            self.recycle(new);
        }
    }

    /// Hands every key written since the last flush to the host, in one call (one per
    /// time-to-live, when writes have several).
    fn flush(&mut self, backend: &mut dyn Backend) {
        let writes = &mut self.writes;
        clear_writes(writes);
        // The time-to-live the host applies to the writes it is handed (0: the stage's): writes
        // with another one go in a call of their own, after the host is told it.
        let mut host_ttl = 0;
        for index in self.dirty.drain(..) {
            let slot = &mut self.slots[index];
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            let (value, delete): (&[u8], bool) = match &slot.value {
                Cached::Present(value) => (value, false),
                Cached::Absent => (&[], true),
                Cached::Unknown => continue,
            };
            if slot.ttl != host_ttl && !delete {
                if !writes.key_ends.is_empty() {
                    backend.state_write_batch(writes);
                    clear_writes(writes);
                }
                host_ttl = slot.ttl;
                backend.state_set_ttl(host_ttl);
            }
            writes.keys.extend_from_slice(slot.key.as_bytes());
            push_u32(&mut writes.key_ends, offset(writes.keys.len()));
            writes.values.extend_from_slice(value);
            push_u32(&mut writes.value_ends, offset(writes.values.len()));
            push_bool(&mut writes.deletes, delete);
        }
        if !writes.key_ends.is_empty() {
            backend.state_write_batch(writes);
        }
        if host_ttl != 0 {
            backend.state_set_ttl(0);
        }
        if self.slots.len() > MAX_CACHED_KEYS {
            self.clear();
        }
    }

    /// Forgets every cached key when the last batch did not end with a flush (a native test whose
    /// transform panicked): its writes never reached the host, so the cache no longer matches it.
    fn discard_if_unflushed(&mut self) {
        if !self.dirty.is_empty() || !self.undo.is_empty() {
            self.clear();
        }
    }

    /// Forgets every cached key (keeping the buffers).
    fn clear(&mut self) {
        self.complete = false;
        self.index.clear();
        self.undo.clear();
        self.dirty.clear();
        while let Some(slot) = self.slots.pop() {
            self.recycle(slot.value);
        }
    }
}

/// The small, fast hash of rustc (FxHash). Keys are hashed once per `get`/`put`; the cache lives
/// for one batch, which bounds what colliding keys could cost.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
