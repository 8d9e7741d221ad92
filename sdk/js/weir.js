// Write Weir stream plugins in JavaScript, built into WebAssembly components with componentize-js.
//
//     import { transform } from "weir";
//
//     transform((event, ctx) => {
//       const reading = event.json();            // the body as an object; malformed JSON rejects
//       if (reading.Temperature > 80) ctx.emit("alerts", { DeviceId: reading.DeviceId });
//       ctx.forward("rows");                     // the input, unchanged and uncopied
//     });
//
// - `transform(fn)`: `fn(event, ctx)`, called for every event.
// - `window({ init, fold, finish })`: a window aggregate. `init()` gives a new window's
//   accumulator, `fold(acc, event, ctx)` returns it with the event folded in, `finish(acc, window,
//   ctx)` emits a closed window's outputs. Accumulators are stored as JSON.
// - `join(fn)`: `fn(left, right, ctx)`, called for every joined pair (a side is null when alone).
//
// Throwing `new Reject(reason)` (or any other error) rejects the event: what it emitted and wrote to
// keyed state is discarded, and it goes to the dead-letter sink with the reason. Keyed state is
// stored as JSON text under string keys, the form of the Rust and Python SDKs, so a stage can be
// swapped between languages with its state. The WIT batch layout is hidden: a batch is walked once,
// keyed state is cached in the instance, checked with one `check-cache` call per batch and written
// back with one `write-batch` call. `weir/testing` runs the same runners under `node --test`.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ----- Packed columns -----
//
// Every WIT column with one number per event, record or write is a *packed column*: a `list<u8>`
// (a Uint8Array here) holding the numbers little-endian, a fixed width each: `u32s` 4 bytes, `u64s`
// and `s64s` 8, `u16s` 2, `bools` 1 (0 or 1). Each column is read once per batch into a typed array
// (a view of its bytes when they are aligned, else one copy), and a 64-bit column into its 32-bit
// words, low word first, so an event reads its numbers without a BigInt. Columns going out are built
// in typed arrays and handed over as their bytes.

/** Whether typed arrays are little-endian here, as the columns are (and WebAssembly always is). */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const TWO_32 = 4294967296;

/** `column` as bytes: a Uint8Array as it is, another typed array or a DataView as its bytes, an
 * array of byte values copied. */
function bytesOf(column) {
  if (column instanceof Uint8Array) return column;
  if (ArrayBuffer.isView(column)) return new Uint8Array(column.buffer, column.byteOffset, column.byteLength);
  return Uint8Array.from(column ?? []);
}

/** The numbers of a packed column of `Type`'s width (Uint32Array for `u32s`, and for the words of
 * `u64s` and `s64s`; Uint16Array for `u16s`); a trailing partial number is ignored. */
function unpack(column, Type) {
  const bytes = bytesOf(column);
  const width = Type.BYTES_PER_ELEMENT;
  const count = Math.floor(bytes.length / width);
  if (LITTLE_ENDIAN) {
    return bytes.byteOffset % width === 0
      ? new Type(bytes.buffer, bytes.byteOffset, count)
      : new Type(bytes.slice(0, count * width).buffer);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const out = new Type(count);
  for (let i = 0; i < count; i++) {
    out[i] = width === 4 ? view.getUint32(i * 4, true) : view.getUint16(i * 2, true);
  }
  return out;
}

/** The numbers of a `u32s` column. */
const u32s = (column) => unpack(column, Uint32Array);

/** Number `i` of a `u64s` column read as words (`u32s`), as a Number (rounded past 2**53, as
 * `Number(bigint)` rounds). */
const u64At = (words, i) => words[2 * i + 1] * TWO_32 + words[2 * i];

/** Number `i` of an `s64s` column read as words (`u32s`), as a Number (two's complement: the high
 * word is signed). */
const s64At = (words, i) => (words[2 * i + 1] | 0) * TWO_32 + words[2 * i];

/** The first `count` numbers of `numbers` (a Uint32Array) as a `u32s` column: a view of their
 * bytes, or a little-endian copy where typed arrays are big-endian. */
function packU32(numbers, count = numbers.length) {
  if (LITTLE_ENDIAN) return new Uint8Array(numbers.buffer, numbers.byteOffset, count * 4);
  const out = new Uint8Array(count * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < count; i++) view.setUint32(i * 4, numbers[i], true);
  return out;
}

/** Rejects the current event with a reason (it goes to the dead-letter sink). */
export class Reject extends Error {
  constructor(reason) {
    super(reason);
    this.name = "Reject";
  }
}

/** Severity of a log record (the WIT `level` enum). */
export const Level = Object.freeze({
  TRACE: "trace",
  DEBUG: "debug",
  INFO: "info",
  WARN: "warn",
  ERROR: "error",
});

// ----- Registration -----

/** The functions the plugin module registered. */
export const PLUGIN = {
  transform: null,
  window: null,
  join: null,
  kind() {
    if (this.transform) return "transform";
    if (this.window) return "window";
    if (this.join) return "join";
    return null;
  },
};

function register(slot, value) {
  if (PLUGIN[slot] && PLUGIN[slot] !== value) {
    throw new TypeError(`a plugin registers one ${slot}`);
  }
  PLUGIN[slot] = value;
  if (["transform", "window", "join"].filter((k) => PLUGIN[k]).length > 1) {
    throw new TypeError("a plugin is of one kind: transform, window or join");
  }
  return value;
}

/** The top-level fields each registered function reads, when it declared them. */
const DECLARED = new WeakMap();

function declare(target, fields) {
  if (fields === undefined || fields === null) return;
  if (!Array.isArray(fields) || !fields.every((f) => typeof f === "string")) {
    throw new TypeError("`fields` is a list of the names of the top-level fields the plugin reads");
  }
  DECLARED.set(target, Object.freeze([...new Set(fields)]));
}

/** The fields `target` (a registered function or window aggregate) declared it reads, or null. */
export function declaredFields(target) {
  if (!target) return null;
  const fields = DECLARED.get(target);
  if (fields !== undefined) return fields;
  // A window aggregate's own `fields`, when it was not registered (as in a native test).
  return typeof target === "object" && Array.isArray(target.fields) ? target.fields : null;
}

/** Registers the plugin's transform function: `fn(event, ctx)`, called for every event. With
 * `{ fields: [...] }`, `event.json()` holds only those top-level fields of the body, which the
 * host hands over without the guest parsing the body. */
export function transform(fn, { fields } = {}) {
  if (typeof fn !== "function") throw new TypeError("transform(fn) takes a function");
  declare(fn, fields);
  return register("transform", fn);
}

/** Registers a window aggregate: `{ init(), fold(acc, event, ctx), finish(acc, window, ctx),
 * fields }` (`fields` as for `transform`). */
export function window(aggregate) {
  if (!aggregate || typeof aggregate.fold !== "function") {
    throw new TypeError("window({ init, fold, finish }) needs at least `fold`");
  }
  declare(aggregate, aggregate.fields);
  return register("window", aggregate);
}

/** Registers a join enrichment: `fn(left, right, ctx)`, one side null when an event is alone
 * (`{ fields }` as for `transform`). */
export function join(fn, { fields } = {}) {
  if (typeof fn !== "function") throw new TypeError("join(fn) takes a function");
  declare(fn, fields);
  return register("join", fn);
}

// ----- Events -----

const UNPARSED = Symbol("unparsed");

/** What the events of one batch share: the WIT batch, its packed columns read (the body ends and
 * event times at once, the others when first asked for), its bodies decoded once (when they are
 * ASCII, byte offsets are then character offsets), its sources and properties, and the fields
 * the plugin declared with where the host's projection holds them. */
class Batch {
  constructor(wit, fields = null) {
    this.wit = wit;
    this.bodyEnds = u32s(wit.bodyEnds);
    /** The event times' words (`s64s`). */
    this.times = u32s(wit.eventTimes);
    const bodies = wit.bodies;
    this.text = null;
    if (bodies.length > 0) {
      const decoded = decoder.decode(bodies);
      if (decoded.length === bodies.length) this.text = decoded;
    }
    this.keyEnds = null;
    this.keyText = undefined;
    this.positions = null;
    this.enqueuedTimes = null;
    this.properties = undefined;
    const names = wit.sources;
    this.sources = names && names.length > 0 && wit.eventSources && wit.eventSources.length > 0
      ? names : null;
    /** The `sources` index of each event (`u16s`), read when first asked for. */
    this.eventSources = null;
    /** The declared fields, or null: then `json()` is the whole body. */
    this.fields = fields;
    /** Per declared field, its place among the projected fields; null: no projection to use. */
    this.slots = null;
    if (fields !== null) this.project(wit, fields);
  }

  /** Finds the declared fields in the host's projection (`field-names`, the JSON text of each
   * field of each event in `field-values`, separated by commas and ended by `field-ends`, empty
   * for a field the body does not have; `projected` says which events the host projected). */
  project(wit, fields) {
    const names = wit.fieldNames;
    if (!names || names.length === 0) return;
    const count = this.bodyEnds.length;
    if (!wit.fieldEnds) return;
    const ends = u32s(wit.fieldEnds);
    if (ends.length !== count * names.length) return;
    // `bools`: one byte per event, 0 for an event the host did not project.
    const projected = wit.projected ? bytesOf(wit.projected) : null;
    if (projected && projected.length !== count) return;
    const slots = fields.map((f) => names.indexOf(f));
    if (slots.includes(-1)) return; // Not all projected: the bodies are parsed.
    this.slots = slots;
    this.width = names.length;
    this.fieldEnds = ends;
    this.projected = projected && projected.indexOf(0) >= 0 ? projected : null;
    const values = wit.fieldValues;
    const decoded = decoder.decode(values);
    /** Every projected value of the batch, parsed by one `JSON.parse` of them all (the native
     * parser once per batch, where a value at a time costs an interpreted call per field); null:
     * each is parsed when read. */
    this.fieldValues = parseAll(decoded, ends, decoded.length === values.length);
  }

  start(index) {
    return index === 0 ? 0 : this.bodyEnds[index - 1];
  }

  /** Event `index`'s position in its source partition. */
  position(index) {
    if (this.positions === null) this.positions = u32s(this.wit.positions);
    return u64At(this.positions, index);
  }

  /** What `json()` gives an event when the plugin declared its fields: an object of those of
   * the body's top-level fields it has, in the declared order, from the projection when the
   * host projected the event, else picked from the parsed body (the same object either way). */
  declared(event) {
    const fields = this.fields;
    const slots = this.slots;
    const index = event._index;
    if (slots === null || (this.projected !== null && !this.projected[index])) {
      const body = event._parse();
      if (body === null || typeof body !== "object" || Array.isArray(body)) return body;
      const picked = {};
      for (let f = 0; f < fields.length; f++) {
        const name = fields[f];
        if (Object.hasOwn(body, name)) picked[name] = body[name];
      }
      return picked;
    }
    const ends = this.fieldEnds;
    const parsed = this.fieldValues;
    const base = index * this.width;
    const out = {};
    for (let f = 0; f < fields.length; f++) {
      const at = base + slots[f];
      // Entries are separated by one comma: an entry starts past the one before and its comma.
      const start = at === 0 ? 0 : ends[at - 1] + 1;
      const end = ends[at];
      if (end > start) {
        out[fields[f]] = parsed !== null
          ? parsed[at]
          : jsonValueOf(decoder.decode(this.wit.fieldValues.subarray(start, end)));
      }
    }
    return out;
  }
}

/** The JSON texts `text` holds, separated by commas and ended by `ends` (an empty one, a field
 * the body does not have, stands for null), parsed by one `JSON.parse`: of `text` itself as an
 * array when no text is empty, else of the texts sliced out (only when `ascii`: then character
 * offsets are the byte offsets `ends` gives). Null when that fails or does not give one value per
 * text (then each is parsed alone, as the host's texts are JSON). */
function parseAll(text, ends, ascii) {
  const count = ends.length;
  // No empty entry: no comma at either end, none after another. (`,,` inside a string value
  // only takes the slower way.)
  if (text.length > 0 && text[0] !== "," && text[text.length - 1] !== "," && !text.includes(",,")) {
    try {
      const values = JSON.parse(`[${text}]`);
      if (values.length === count) return values;
    } catch {
      // Sliced below.
    }
  }
  if (!ascii) return null;
  const parts = new Array(count);
  let start = 0;
  for (let i = 0; i < count; i++) {
    const end = ends[i];
    parts[i] = end > start ? text.slice(start, end) : "null";
    start = end + 1;
  }
  try {
    const values = JSON.parse(`[${parts.join(",")}]`);
    return values.length === count ? values : null;
  } catch {
    return null;
  }
}

/** The value of the JSON text `text`, as `JSON.parse` gives it: strings without an escape and
 * numbers are taken without the parser. */
function jsonValueOf(text) {
  const first = text.charCodeAt(0);
  if (first === 34) {
    const inner = text.slice(1, -1);
    if (inner.indexOf("\\") < 0) return inner;
  } else if (first === 45 || (first >= 48 && first <= 57)) {
    return +text;
  }
  return JSON.parse(text);
}

/**
 * One input event: its body (JSON, parsed on demand), key, times, partition and source. Events
 * are made for every event of every batch, so an event holds its time and its place in the
 * batch, and reads the rest from the batch when asked.
 */
export class Event {
  constructor(batch, index, start, end, time) {
    this._batch = batch;
    this._index = index;
    this._start = start;
    this._end = end;
    this._json = UNPARSED;
    /** Event time, milliseconds since the Unix epoch (the pipeline's TIMESTAMP BY). */
    this.time = time;
  }

  /** The partition key, or null. */
  get key() {
    const batch = this._batch;
    const wit = batch.wit;
    if (batch.keyEnds === null) batch.keyEnds = u32s(wit.keyEnds);
    const end = batch.keyEnds[this._index];
    const start = this._index === 0 ? 0 : batch.keyEnds[this._index - 1];
    if (end <= start) return null;
    if (batch.keyText === undefined) {
      const decoded = decoder.decode(wit.keys);
      batch.keyText = decoded.length === wit.keys.length ? decoded : null;
    }
    return batch.keyText !== null
      ? batch.keyText.slice(start, end)
      : decoder.decode(wit.keys.subarray(start, end));
  }

  /** When the event entered Weir or its broker, milliseconds since the Unix epoch. */
  get enqueuedTime() {
    const batch = this._batch;
    if (batch.enqueuedTimes === null) batch.enqueuedTimes = u32s(batch.wit.enqueuedTimes);
    return s64At(batch.enqueuedTimes, this._index);
  }

  /** Position (offset or sequence number) in its source partition. */
  get position() {
    return this._batch.position(this._index);
  }

  /** The source partition. */
  get partition() {
    return this._batch.wit.partition;
  }

  /** The name of the source the event comes from, when the host says (else null). */
  get source() {
    const batch = this._batch;
    const names = batch.sources;
    if (names === null) return null;
    if (batch.eventSources === null) batch.eventSources = unpack(batch.wit.eventSources, Uint16Array);
    return names[batch.eventSources[this._index]] ?? null;
  }

  /** The body as bytes (a view into the batch). */
  get body() {
    return this._batch.wit.bodies.subarray(this._start, this._end);
  }

  /** The body as text. */
  get text() {
    const text = this._batch.text;
    return text !== null ? text.slice(this._start, this._end) : decoder.decode(this.body);
  }

  /** The body parsed from JSON (cached): with declared fields, an object of those fields only;
   * malformed JSON rejects the event. */
  json() {
    if (this._json === UNPARSED) {
      this._json = this._batch.fields === null ? this._parse() : this._batch.declared(this);
    }
    return this._json;
  }

  /** The whole body parsed (not cached). */
  _parse() {
    try {
      return JSON.parse(this.text);
    } catch (error) {
      throw new Reject(`malformed JSON: ${error.message}`);
    }
  }

  _propertyPairs() {
    const batch = this._batch;
    if (batch.properties === undefined) {
      batch.properties = null;
      const list = batch.wit.properties;
      if (list && list.length > 0) {
        batch.properties = new Map();
        for (const p of list) {
          if (!batch.properties.has(p.event)) batch.properties.set(p.event, []);
          batch.properties.get(p.event).push([p.name, p.value]);
        }
      }
    }
    return (batch.properties && batch.properties.get(this._index)) || [];
  }

  /** The value of application property `name`, or null. */
  property(name) {
    for (const [key, value] of this._propertyPairs()) if (key === name) return value;
    return null;
  }

  /** Application properties (Event Hubs properties, Kafka or HTTP headers) as an object. */
  get properties() {
    return Object.fromEntries(this._propertyPairs());
  }
}

/** A closed window: its group's key (an object of the grouped fields) and bounds (ms). */
export class Window {
  constructor(keyJson, start, end) {
    /** The group's key as JSON text. */
    this.keyJson = keyJson;
    /** Start, inclusive, ms since the Unix epoch. */
    this.start = start;
    /** End, exclusive, ms since the Unix epoch. */
    this.end = end;
  }

  /** The group's key as an object. */
  get key() {
    return this.keyJson ? JSON.parse(this.keyJson) : {};
  }
}

// ----- Keyed state cache -----

/** Most keys cached; past this the cache is emptied after a flush. */
export const MAX_CACHED_KEYS = 65536;

/** (key, value or null) of a WIT `writes` record (`key-ends` and `value-ends` packed `u32s`,
 * `deletes` packed `bools`), values as JSON text. */
function* entries(writes) {
  const keyEnds = u32s(writes.keyEnds);
  const valueEnds = u32s(writes.valueEnds);
  const deletes = bytesOf(writes.deletes);
  let keyStart = 0;
  let valueStart = 0;
  for (let i = 0; i < keyEnds.length; i++) {
    const keyEnd = keyEnds[i];
    const valueEnd = valueEnds[i] ?? valueStart;
    const key = decoder.decode(writes.keys.subarray(keyStart, keyEnd));
    const value = deletes[i] ? null : decoder.decode(writes.values.subarray(valueStart, valueEnd));
    keyStart = keyEnd;
    valueStart = valueEnd;
    yield [key, value];
  }
}

/**
 * The instance's keyed-state cache, with an undo log for the current event. Every value is kept
 * as its JSON text (`texts`: key -> text, null for a key known to have no value): `get` parses it,
 * so the caller has its own copy, and `put` serialises the value once, which checks that it can
 * be stored and is what the host gets (the interpreter runs no JavaScript per field either way). A
 * key read is asked of the host once, unless the host handed the whole state over. The keys
 * written since the last flush (`written`: key -> text, "" for a delete) reach the host in one
 * `write-batch` call. The undo log holds (key, previous text, previous written text) triples,
 * rolled back newest first.
 */
class StateCache {
  constructor() {
    this.texts = new Map();
    this.complete = false;
    this.written = new Map();
    this.undo = [];
  }

  restart(start) {
    this.texts = new Map();
    this.written = new Map();
    for (const [key, value] of entries(start.entries)) this.texts.set(key, value);
    this.complete = Boolean(start.whole) && this.texts.size <= MAX_CACHED_KEYS;
  }

  /** The JSON text of `key`'s value, or null when it has none. */
  read(host, key) {
    let text = this.texts.get(key);
    if (text !== undefined) return text;
    if (this.complete) {
      text = null;
    } else {
      const bytes = host.stateGet(encoder.encode(key));
      text = bytes == null ? null : decoder.decode(bytes);
    }
    this.texts.set(key, text);
    return text;
  }

  /** Sets `key` to the JSON text `text` ("" to delete it). */
  write(key, text) {
    const texts = this.texts;
    const written = this.written;
    this.undo.push(key, texts.get(key), written.get(key));
    texts.set(key, text === "" ? null : text);
    written.set(key, text);
  }

  rollbackEvent() {
    const undo = this.undo;
    for (let i = undo.length - 3; i >= 0; i -= 3) {
      const key = undo[i];
      if (undo[i + 1] === undefined) this.texts.delete(key);
      else this.texts.set(key, undo[i + 1]);
      if (undo[i + 2] === undefined) this.written.delete(key);
      else this.written.set(key, undo[i + 2]);
    }
    undo.length = 0;
  }

  flush(host) {
    this.undo.length = 0;
    const count = this.written.size;
    if (count > 0) {
      // One string of keys and one of values, each encoded once (a batch writes about one key
      // per event); when a string is ASCII its lengths are its byte lengths. The ends go as
      // packed `u32s`, the deletes as packed `bools` (1: the key is removed).
      const keys = new Array(count);
      const values = new Array(count);
      const deletes = new Uint8Array(count);
      let i = 0;
      for (const [key, text] of this.written) {
        keys[i] = key;
        values[i] = text;
        if (text === "") deletes[i] = 1;
        i++;
      }
      const [keyBytes, keyEnds] = joined(keys);
      const [valueBytes, valueEnds] = joined(values);
      this.written = new Map();
      host.stateWriteBatch({
        keys: keyBytes, keyEnds: packU32(keyEnds), values: valueBytes, valueEnds: packU32(valueEnds), deletes,
      });
    }
    if (this.texts.size > MAX_CACHED_KEYS) {
      this.texts = new Map();
      this.complete = false;
    }
  }

  discardUnflushed() {
    if (this.written.size > 0 || this.undo.length > 0) {
      this.texts = new Map();
      this.written = new Map();
      this.complete = false;
    }
    this.undo.length = 0;
  }
}

/** `parts` concatenated as UTF-8, with the end offset of each (a Uint32Array). */
function joined(parts) {
  const text = parts.join("");
  const bytes = encoder.encode(text);
  const ends = new Uint32Array(parts.length);
  let at = 0;
  if (bytes.length === text.length) {
    for (let i = 0; i < parts.length; i++) {
      at += parts[i].length;
      ends[i] = at;
    }
  } else {
    for (let i = 0; i < parts.length; i++) {
      at += encoder.encode(parts[i]).length;
      ends[i] = at;
    }
  }
  return [bytes, ends];
}

// ----- The context -----

/** A growable byte buffer for the batch's payloads. */
class Payloads {
  constructor() {
    this.bytes = new Uint8Array(64 * 1024);
    this.length = 0;
  }

  reserve(extra) {
    if (this.length + extra > this.bytes.length) {
      const bigger = new Uint8Array(Math.max(this.bytes.length * 2, this.length + extra));
      bigger.set(this.bytes.subarray(0, this.length));
      this.bytes = bigger;
    }
  }

  pushText(text) {
    // UTF-8 takes at most 3 bytes per UTF-16 unit.
    this.reserve(text.length * 3);
    const { written } = encoder.encodeInto(text, this.bytes.subarray(this.length));
    this.length += written;
  }

  pushBytes(bytes) {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  view() {
    return this.bytes.subarray(0, this.length);
  }
}

/**
 * What a plugin function can do besides reading its event: emit records, keep keyed state, read
 * its configuration and reference data, count and log. One lives as long as the instance.
 */
export class Context {
  constructor(host) {
    this._host = host;
    this._state = new StateCache();
    this._config = null;
    this._counters = new Map();
    this._targets = new Map();
    this._targetNames = [];
    this._payloads = new Payloads();
    // The batch's emitted records, four numbers each in the order of the WIT `emitted` record
    // (event, target, payload end, forward as 0 or 1): `output-batch.emitted` once packed. The
    // first `_emittedLength` numbers are used; the array grows by doubling.
    this._emitted = new Uint32Array(4 * 1024);
    this._emittedLength = 0;
    this._rejected = [];
    this._event = 0;
    // The current event's position, or null: then it is that of event `_event` of `_batch`.
    this._position = 0;
    this._batch = null;
    // The fields the plugin declared, asked of the host in every output (`wanted-fields`).
    this._wantedFields = [];
  }

  // ----- Outputs -----

  /** Sends `value`, serialised as JSON, to output `output`. */
  emit(output, value) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (error) {
      throw new Reject(`cannot serialise a record for output \`${output}\`: ${error.message}`);
    }
    this._payloads.pushText(text);
    this._record(this._target(output), 0);
  }

  /** Sends `data` (a string or bytes) unchanged to output `output`. */
  emitRaw(output, data) {
    if (typeof data === "string") this._payloads.pushText(data);
    else this._payloads.pushBytes(data);
    this._record(this._target(output), 0);
  }

  /** Sends the input event's body unchanged to output `output` (nothing is copied). */
  forward(output) {
    let target = this._targets.get(output);
    if (target === undefined) target = this._target(output);
    // `_record(target, 1)` written out: a forward is the commonest record, and inside a
    // component a call costs about what these lines do.
    const at = this._emittedLength;
    if (at === this._emitted.length) this._growEmitted();
    const records = this._emitted;
    records[at] = this._event;
    records[at + 1] = target;
    records[at + 2] = this._payloads.length;
    records[at + 3] = 1;
    this._emittedLength = at + 4;
  }

  /** Appends a record of the current event to `_emitted`, its payload ending where the payloads
   * do now. */
  _record(target, forward) {
    const at = this._emittedLength;
    if (at === this._emitted.length) this._growEmitted();
    const records = this._emitted;
    records[at] = this._event;
    records[at + 1] = target;
    records[at + 2] = this._payloads.length;
    records[at + 3] = forward;
    this._emittedLength = at + 4;
  }

  _growEmitted() {
    const bigger = new Uint32Array(this._emitted.length * 2);
    bigger.set(this._emitted);
    this._emitted = bigger;
  }

  _target(name) {
    let index = this._targets.get(name);
    if (index === undefined) {
      index = this._targetNames.length;
      this._targets.set(name, index);
      this._targetNames.push(name);
    }
    return index;
  }

  // ----- Keyed state -----

  /** The value stored under `key` (parsed from JSON), or `fallback` (undefined) when none. The
   * value is the caller's copy: change it, then `put` it. */
  get(key, fallback = undefined) {
    let text = this._state.texts.get(key);
    if (text === undefined) text = this._state.read(this._host, key);
    if (text === null) return fallback;
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new Reject(`keyed state \`${key}\`: ${error.message}`);
    }
  }

  /** Stores `value`, as JSON, under `key` (serialised now, which checks it can be stored; sent to
   * the host when the batch ends). */
  put(key, value) {
    let text;
    try {
      text = JSON.stringify(value);
    } catch (error) {
      throw new Reject(`cannot serialise keyed state \`${key}\`: ${error.message}`);
    }
    if (text === undefined) throw new Reject(`cannot serialise keyed state \`${key}\``);
    this._state.write(key, text);
  }

  /** Removes `key` from the keyed state. */
  delete(key) {
    this._state.write(key, "");
  }

  // ----- Configuration and reference data -----

  /** The stage's `config` table as an object (`{}` when absent), read once per instance. */
  get config() {
    if (this._config === null) {
      const text = this._host.config() || "{}";
      try {
        this._config = text.trim() ? JSON.parse(text) : {};
      } catch (error) {
        throw new Reject(`invalid stage config: ${error.message}`);
      }
    }
    return this._config;
  }

  /** The row of reference table `table` whose key is `key`, as an object; null when none. */
  lookup(table, key) {
    const row = this._host.referenceLookup(table, String(key));
    return row == null ? null : JSON.parse(row);
  }

  // ----- Logs and counters -----

  /** Adds `delta` (default 1) to counter `name` (summed in the plugin, sent once per batch). */
  counter(name, delta = 1) {
    this._counters.set(name, (this._counters.get(name) || 0) + delta);
  }

  /** Writes a log record into the host's logs, with the event's position and `fields`. */
  log(level, message, fields = {}) {
    const position = this._position !== null
      ? this._position : this._batch.position(this._event);
    const pairs = [["position", String(position)]];
    for (const [key, value] of Object.entries(fields)) pairs.push([key, String(value)]);
    this._host.log(level, String(message), pairs);
  }

  trace(message, fields) { this.log(Level.TRACE, message, fields); }
  debug(message, fields) { this.log(Level.DEBUG, message, fields); }
  info(message, fields) { this.log(Level.INFO, message, fields); }
  warn(message, fields) { this.log(Level.WARN, message, fields); }
  error(message, fields) { this.log(Level.ERROR, message, fields); }

  // ----- Driven by the runners -----

  _beginBatch() {
    this._state.discardUnflushed();
    const start = this._host.stateCheckCache();
    if (start != null) this._state.restart(start);
    this._counters = new Map();
    this._targets = new Map();
    this._targetNames = [];
    this._payloads.length = 0;
    this._emittedLength = 0;
    this._rejected = [];
  }

  _beginEvent(index, position) {
    this._event = index;
    this._position = position;
    this._state.undo.length = 0;
  }

  _reject(reason) {
    // What the event emitted is at the end of `_emitted` (four numbers a record, the event's
    // first), its payloads after the previous record's (whose payload end is its third).
    const records = this._emitted;
    let keep = this._emittedLength;
    while (keep > 0 && records[keep - 4] === this._event) keep -= 4;
    this._emittedLength = keep;
    this._payloads.length = keep > 0 ? records[keep - 2] : 0;
    this._state.rollbackEvent();
    this._rejected.push({ event: this._event, reason });
  }

  _endBatch() {
    this._state.flush(this._host);
    for (const [name, delta] of this._counters) {
      if (delta > 0) this._host.counterAdd(name, delta);
    }
    this._counters = new Map();
  }

  /** The batch's output in the WIT `output-batch` shape. */
  _output() {
    return {
      targets: this._targetNames,
      payloads: this._payloads.view(),
      // A view of `_emitted` (valid until the next batch, as `payloads`).
      emitted: packU32(this._emitted, this._emittedLength),
      rejected: this._rejected,
      wantedFields: this._wantedFields,
    };
  }
}

/** The dead-letter reason of an error thrown by the author's function. */
function reason(error) {
  if (error instanceof Reject) return error.message;
  if (error instanceof Error) {
    const frame = (error.stack || "").split("\n").find((line) => /:\d+:\d+/.test(line));
    const where = frame ? ` (at ${frame.trim().replace(/^at /, "")})` : "";
    return `${error.name}: ${error.message}${where}`;
  }
  return String(error);
}

// ----- Runners: one pass over a batch in the WIT layout -----

/** The events of a batch in the WIT layout (camelCase fields, as componentize-js gives them). */
export function batchEvents(wit, fields = null) {
  return eventsOf(new Batch(wit, fields));
}

function eventsOf(batch) {
  const ends = batch.bodyEnds;
  const times = batch.times;
  const events = new Array(ends.length);
  let start = 0;
  for (let i = 0; i < events.length; i++) {
    const end = ends[i];
    // The event time, an `s64s` number: `s64At(times, i)` written out.
    events[i] = new Event(batch, i, start, end, (times[2 * i + 1] | 0) * 4294967296 + times[2 * i]);
    start = end;
  }
  return events;
}

/** Runs `fn` over every event of `batch`; returns the WIT `output-batch`. */
export function runTransform(ctx, fn, batch, fields = declaredFields(fn)) {
  ctx._beginBatch();
  ctx._position = null;
  const read = new Batch(batch, fields);
  ctx._batch = read;
  ctx._wantedFields = fields || [];
  const events = eventsOf(read);
  const undo = ctx._state.undo;
  for (let i = 0; i < events.length; i++) {
    // `_beginEvent`, reduced to what must happen per event: what a rejection rolls back is
    // found from `_emitted` and the state's undo log.
    ctx._event = i;
    if (undo.length !== 0) undo.length = 0;
    try {
      fn(events[i], ctx);
    } catch (error) {
      ctx._reject(reason(error));
    }
  }
  ctx._endBatch();
  return ctx._output();
}

/** The ranges of `data` (a typed array) that `ends` (a Uint32Array) end. */
function ranges(data, ends) {
  const out = new Array(ends.length);
  let start = 0;
  for (let i = 0; i < ends.length; i++) {
    const end = ends[i];
    out[i] = data.subarray(start, end);
    start = end;
  }
  return out;
}

/** A copy of `acc` to restore if a fold throws. */
function snapshot(acc) {
  if (acc === null || typeof acc !== "object") return acc;
  if (!Array.isArray(acc) && Object.values(acc).every((v) => v === null || typeof v !== "object")) {
    return { ...acc };
  }
  return JSON.parse(JSON.stringify(acc));
}

/** Folds a request's events into its groups' accumulators; returns the WIT `fold-response`. */
export function runFold(ctx, request, aggregate = PLUGIN.window) {
  const init = aggregate.init || (() => ({}));
  ctx._beginBatch();
  const fields = declaredFields(aggregate);
  ctx._wantedFields = fields || [];
  const events = batchEvents(request.events, fields);
  // `members` and the ends are packed `u32s`; `member-ends` count members, not bytes.
  const members = ranges(u32s(request.members), u32s(request.memberEnds));
  const out = new Payloads();
  const ends = [];
  const stored = ranges(bytesOf(request.accumulators), u32s(request.accumulatorEnds));
  for (let group = 0; group < stored.length; group++) {
    const window = request.windows[group];
    const groupMembers = members[group] || [];
    let acc;
    try {
      acc = stored[group].length > 0 ? JSON.parse(decoder.decode(stored[group])) : init();
    } catch (error) {
      for (const member of groupMembers) {
        ctx._beginEvent(member, 0);
        ctx._reject(`the accumulator of window ${window.start}..${window.end} of ${window.key} cannot be read: ${error.message}`);
      }
      out.pushBytes(stored[group]);
      ends.push(out.length);
      continue;
    }
    for (const member of groupMembers) {
      const event = events[member];
      if (event === undefined) {
        ctx._beginEvent(member, 0);
        ctx._reject(`invalid request: no event ${member} in the batch`);
        continue;
      }
      ctx._beginEvent(member, event.position);
      const before = snapshot(acc);
      try {
        const result = aggregate.fold(acc, event, ctx);
        if (result !== undefined) acc = result;
      } catch (error) {
        acc = before;
        ctx._reject(reason(error));
      }
    }
    out.pushText(JSON.stringify(acc));
    ends.push(out.length);
  }
  ctx._endBatch();
  if (ctx._emittedLength > 0) ctx.warn("records emitted during `fold` are discarded: emit them in `finish`");
  return {
    accumulators: out.view(),
    accumulatorEnds: packU32(Uint32Array.from(ends)),
    rejected: ctx._rejected,
    wantedFields: ctx._wantedFields,
  };
}

/** Produces the outputs of closed windows; returns the WIT `output-batch`, indexed by window. */
export function runFinish(ctx, request, aggregate = PLUGIN.window) {
  const init = aggregate.init || (() => ({}));
  ctx._beginBatch();
  ctx._wantedFields = declaredFields(aggregate) || [];
  const stored = ranges(bytesOf(request.accumulators), u32s(request.accumulatorEnds));
  for (let i = 0; i < stored.length; i++) {
    const window = request.windows[i];
    ctx._beginEvent(i, 0);
    try {
      const acc = stored[i].length > 0 ? JSON.parse(decoder.decode(stored[i])) : init();
      if (aggregate.finish) {
        aggregate.finish(acc, new Window(window.key, Number(window.start), Number(window.end)), ctx);
      }
    } catch (error) {
      ctx._reject(reason(error));
    }
  }
  ctx._endBatch();
  return ctx._output();
}

/** Calls the join function per pair; returns the WIT `output-batch`, indexed by pair. */
export function runJoin(ctx, request, fn = PLUGIN.join, fields = declaredFields(fn)) {
  ctx._beginBatch();
  ctx._wantedFields = fields || [];
  const events = batchEvents(request.events, fields);
  request.pairs.forEach((pair, i) => {
    const left = pair.left != null ? events[pair.left] ?? null : null;
    const right = pair.right != null ? events[pair.right] ?? null : null;
    ctx._beginEvent(i, Math.max(left ? left.position : 0, right ? right.position : 0));
    if ((!left && !right) || (pair.left != null && !left) || (pair.right != null && !right)) {
      ctx._reject(`invalid request: pair ${i} names no event of the batch`);
      return;
    }
    try {
      fn(left, right, ctx);
    } catch (error) {
      ctx._reject(reason(error));
    }
  });
  ctx._endBatch();
  return ctx._output();
}
