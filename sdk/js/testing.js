// Run a plugin's functions natively (`node --import <sdk>/register.js --test`), through the same
// runners as the component.
//
//     import { test } from "node:test";
//     import assert from "node:assert/strict";
//     import { Harness } from "weir/testing";
//     import { process } from "./plugin.js";
//
//     test("alerts when too hot", () => {
//       const harness = new Harness(process);
//       const outcome = harness.run({ DeviceId: "d1", Temperature: 91.5 });
//       assert.equal(outcome.json("alerts")[0].Temperature, 91.5);
//       assert.ok(outcome.forwardedTo("rows"));
//     });
//
// The harness lays events out in a batch exactly as the host does (every column of numbers packed
// little-endian into bytes), runs it through the runner the component's export runs (the same state
// cache, the same rollback of a rejected event, the same output encoding) and decodes and checks
// the output as the host does. Keyed state (JSON text per key, as the host keeps it), counters,
// logs, the stage config and reference tables live in memory.

import {
  Context, PLUGIN, declaredFields, runFinish, runFold, runJoin, runTransform,
} from "./weir.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Most keys a state may have for a stale cache to start again from all of it (as the host). */
export const WHOLE_STATE_KEYS = 16384;

/** One input event for a harness: a body (object → JSON, string, or bytes) and metadata. */
export class TestEvent {
  constructor(body, { key = null, time = 0, enqueuedTime = null, properties = {}, source = null } = {}) {
    if (!(body instanceof Uint8Array) && typeof body !== "string") body = JSON.stringify(body);
    this.body = typeof body === "string" ? encoder.encode(body) : body;
    this.key = key;
    this.time = time;
    this.enqueuedTime = enqueuedTime ?? time;
    this.properties = properties;
    this.source = source;
  }
}

const asEvent = (value) => (value instanceof TestEvent ? value : new TestEvent(value));

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// ----- Packed columns, written and read as the host does -----
//
// A packed column is a `list<u8>` (a Uint8Array) holding one number per event, record or write,
// little-endian, a fixed width each: `u32s` 4 bytes, `u64s` and `s64s` 8, `u16s` 2, `bools` 1 (0 or
// 1). These are written and read byte by byte through a DataView, whatever this machine's byte
// order, independently of the SDK's own reading and writing.

const WIDTHS = { u32s: 4, u64s: 8, s64s: 8, u16s: 2, bools: 1 };

/** `numbers` (Numbers or BigInts; booleans for `bools`) as a packed column of `type`. */
function pack(type, numbers) {
  const width = WIDTHS[type];
  const out = new Uint8Array(numbers.length * width);
  const view = new DataView(out.buffer);
  numbers.forEach((n, i) => {
    const at = i * width;
    if (type === "u32s") view.setUint32(at, n, true);
    else if (type === "u64s") view.setBigUint64(at, BigInt(n), true);
    else if (type === "s64s") view.setBigInt64(at, BigInt(n), true);
    else if (type === "u16s") view.setUint16(at, n, true);
    else view.setUint8(at, n ? 1 : 0);
  });
  return out;
}

/** The numbers of the packed column `column` of `type` (Numbers; BigInts for `u64s` and `s64s`,
 * booleans for `bools`). Throws, naming `what`, unless it is a Uint8Array of whole numbers (and
 * `bools` are 0 or 1), what the host's bindings take. */
function unpack(type, column, what = type) {
  const width = WIDTHS[type];
  if (!(column instanceof Uint8Array)) {
    throw new TypeError(`${what}: a packed column is a Uint8Array, not ${column?.constructor?.name ?? column}`);
  }
  if (column.length % width !== 0) {
    throw new RangeError(`${what}: ${column.length} bytes, not a whole number of ${width}-byte numbers`);
  }
  const view = new DataView(column.buffer, column.byteOffset, column.byteLength);
  const out = new Array(column.length / width);
  for (let i = 0; i < out.length; i++) {
    const at = i * width;
    if (type === "u32s") out[i] = view.getUint32(at, true);
    else if (type === "u64s") out[i] = view.getBigUint64(at, true);
    else if (type === "s64s") out[i] = view.getBigInt64(at, true);
    else if (type === "u16s") out[i] = view.getUint16(at, true);
    else {
      const byte = view.getUint8(at);
      if (byte > 1) throw new RangeError(`${what}: flag ${i} is ${byte} (0 or 1)`);
      out[i] = byte === 1;
    }
  }
  return out;
}

/** The records of an output's `emitted` column (four `u32s` numbers each: event, target, payload
 * end, forward), checked with its rejections as the host checks an output of a call over `events`
 * events (windows, pairs). */
function emittedRecords(output, events) {
  const numbers = unpack("u32s", output.emitted, "emitted");
  if (numbers.length % 4 !== 0) {
    throw new RangeError(`emitted: ${output.emitted.length} bytes, not a whole number of 16-byte records`);
  }
  const payloads = output.payloads;
  if (!(payloads instanceof Uint8Array)) throw new TypeError("payloads: not a Uint8Array");
  const records = [];
  let start = 0;
  for (let i = 0; i < numbers.length; i += 4) {
    const [event, target, payloadEnd, forward] = numbers.slice(i, i + 4);
    if (forward > 1) throw new RangeError(`a record whose forward flag is ${forward} (0 or 1)`);
    if (event >= events) throw new RangeError(`a record for event ${event} of a batch of ${events}`);
    if (target >= output.targets.length) {
      throw new RangeError(`a record for target ${target} of ${output.targets.length}`);
    }
    if (payloadEnd < start || payloadEnd > payloads.length) {
      throw new RangeError(`payload end ${payloadEnd} after ${start} in a buffer of ${payloads.length} bytes`);
    }
    records.push({ event, target, payloadEnd, forward: forward === 1 });
    start = payloadEnd;
  }
  for (const rejection of output.rejected) {
    if (rejection.event >= events) {
      throw new RangeError(`a rejection of event ${rejection.event} of a batch of ${events}`);
    }
  }
  return records;
}

const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/** The end of the JSON value that starts at `at` in the valid JSON text `text`. */
function valueEnd(text, at) {
  const first = text[at];
  if (first === '"') {
    let i = at + 1;
    while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    return i + 1;
  }
  if (first === "{" || first === "[") {
    let depth = 0;
    for (let i = at; ; i++) {
      const c = text[i];
      if (c === '"') i = valueEnd(text, i) - 1;
      else if (c === "{" || c === "[") depth++;
      else if (c === "}" || c === "]") {
        depth--;
        if (depth === 0) return i + 1;
      }
    }
  }
  return at + /^[^,}\]\s]+/.exec(text.slice(at))[0].length;
}

const skipSpace = (text, at) => at + /^[ \t\n\r]*/.exec(text.slice(at))[0].length;

/** The JSON text of each of `names` in `body` as the host projects it (the value's bytes as they
 * stand in the body; empty for a field it does not have), or null when the body is not a JSON
 * object (the host does not project it). */
export function fieldTexts(body, names) {
  let text;
  try {
    text = strictDecoder.decode(body);
    const value = JSON.parse(text);
    if (value === null || typeof value !== "object" || Array.isArray(value)) return null;
  } catch {
    return null;
  }
  const spans = new Map();
  let at = skipSpace(text, 0) + 1; // past "{"
  for (;;) {
    at = skipSpace(text, at);
    if (text[at] === "}") break;
    const keyEnd = valueEnd(text, at);
    const key = JSON.parse(text.slice(at, keyEnd));
    at = skipSpace(text, keyEnd) + 1; // past ":"
    const start = skipSpace(text, at);
    at = valueEnd(text, start);
    spans.set(key, text.slice(start, at)); // the last of a key repeated, as parsed
    at = skipSpace(text, at);
    if (text[at] === "}") break;
    at += 1; // past ","
  }
  return names.map((name) => encoder.encode(spans.get(name) ?? ""));
}

/** What separates the entries of a batch's `fieldValues`. */
const COMMA = Uint8Array.of(44);

/** `events` in the WIT batch layout (camelCase and Uint8Arrays as componentize-js gives them, every
 * column of numbers packed), with the fields `project` projected out of the bodies that are JSON
 * objects, as the host does for a plugin that asked for them (`wanted-fields`). */
function batch(events, firstPosition, project = []) {
  const bodies = [];
  const keys = [];
  const out = {
    partition: 0, bodyEnds: [], positions: [], eventTimes: [], enqueuedTimes: [], keyEnds: [],
    properties: [], sources: [], eventSources: [], fieldNames: [...project], fieldEnds: [],
    projected: [],
  };
  const values = [];
  let valueLength = 0;
  for (const event of events) {
    if (project.length === 0) break; // No projection: its lists are empty.
    const texts = fieldTexts(event.body, project);
    out.projected.push(texts !== null);
    for (const text of texts ?? project.map(() => new Uint8Array())) {
      if (out.fieldEnds.length > 0) {
        values.push(COMMA); // entries separated by one comma
        valueLength += 1;
      }
      values.push(text);
      valueLength += text.length;
      out.fieldEnds.push(valueLength);
    }
  }
  out.fieldValues = concat(values);
  out.fieldEnds = pack("u32s", out.fieldEnds);
  out.projected = pack("bools", out.projected);
  let bodyLength = 0;
  let keyLength = 0;
  events.forEach((event, i) => {
    bodies.push(event.body);
    bodyLength += event.body.length;
    out.bodyEnds.push(bodyLength);
    const key = encoder.encode(event.key ?? "");
    keys.push(key);
    keyLength += key.length;
    out.keyEnds.push(keyLength);
    out.positions.push(BigInt(firstPosition + i));
    out.eventTimes.push(BigInt(event.time));
    out.enqueuedTimes.push(BigInt(event.enqueuedTime));
    for (const [name, value] of Object.entries(event.properties)) {
      out.properties.push({ event: i, name, value });
    }
    const source = event.source ?? "";
    if (!out.sources.includes(source)) out.sources.push(source);
    out.eventSources.push(out.sources.indexOf(source));
  });
  if (events.every((e) => !e.source)) {
    out.sources = [];
    out.eventSources = [];
  }
  out.bodies = concat(bodies);
  out.keys = concat(keys);
  out.bodyEnds = pack("u32s", out.bodyEnds);
  out.keyEnds = pack("u32s", out.keyEnds);
  out.positions = pack("u64s", out.positions);
  out.eventTimes = pack("s64s", out.eventTimes);
  out.enqueuedTimes = pack("s64s", out.enqueuedTimes);
  out.eventSources = pack("u16s", out.eventSources);
  return out;
}

/** The host's side in memory. */
class Memory {
  constructor({ config = {}, state = {}, reference = [] } = {}) {
    this.state = new Map(Object.entries(state).map(([k, v]) => [k, JSON.stringify(v)]));
    this.counters = {};
    this.logs = [];
    this.config = JSON.stringify(config);
    this.reference = new Map(reference.map(([table, key, row]) => [`${table}\u0000${key}`, JSON.stringify(row)]));
    this.recent = [];
    this.cacheHolder = 0;
    this.instances = 0;
    this.stateCalls = 0;
  }
}

/** One instance's view of the memory host (the imports of the component). */
class MemoryHost {
  constructor(memory) {
    memory.instances += 1;
    this.memory = memory;
    this.id = memory.instances;
  }

  stateGet(key) {
    this.memory.stateCalls += 1;
    const value = this.memory.state.get(decoder.decode(key));
    return value === undefined ? undefined : encoder.encode(value);
  }

  stateWriteBatch(writes) {
    const memory = this.memory;
    memory.stateCalls += 1;
    const keyEnds = unpack("u32s", writes.keyEnds, "writes.keyEnds");
    const valueEnds = unpack("u32s", writes.valueEnds, "writes.valueEnds");
    const deletes = unpack("bools", writes.deletes, "writes.deletes");
    if (valueEnds.length !== keyEnds.length || deletes.length !== keyEnds.length) {
      throw new RangeError(`writes: ${keyEnds.length} key ends, ${valueEnds.length} value ends, ${deletes.length} deletes`);
    }
    memory.recent = [];
    let keyStart = 0;
    let valueStart = 0;
    for (let i = 0; i < keyEnds.length; i++) {
      const key = decoder.decode(writes.keys.subarray(keyStart, keyEnds[i]));
      memory.recent.push(key);
      if (deletes[i]) memory.state.delete(key);
      else memory.state.set(key, decoder.decode(writes.values.subarray(valueStart, valueEnds[i])));
      keyStart = keyEnds[i];
      valueStart = valueEnds[i];
    }
  }

  stateCheckCache() {
    const memory = this.memory;
    if (memory.cacheHolder === this.id) return undefined;
    memory.cacheHolder = this.id;
    const whole = memory.state.size <= WHOLE_STATE_KEYS;
    const keys = whole ? [...memory.state.keys()] : memory.recent;
    const keyParts = [];
    const valueParts = [];
    const entries = { keyEnds: [], valueEnds: [], deletes: [] };
    let keyLength = 0;
    let valueLength = 0;
    for (const key of keys) {
      const value = memory.state.get(key);
      const keyBytes = encoder.encode(key);
      keyParts.push(keyBytes);
      keyLength += keyBytes.length;
      entries.keyEnds.push(keyLength);
      const valueBytes = encoder.encode(value ?? "");
      valueParts.push(valueBytes);
      valueLength += valueBytes.length;
      entries.valueEnds.push(valueLength);
      entries.deletes.push(value === undefined);
    }
    entries.keys = concat(keyParts);
    entries.values = concat(valueParts);
    entries.keyEnds = pack("u32s", entries.keyEnds);
    entries.valueEnds = pack("u32s", entries.valueEnds);
    entries.deletes = pack("bools", entries.deletes);
    return { entries, whole };
  }

  counterAdd(name, delta) {
    this.memory.counters[name] = (this.memory.counters[name] || 0) + Number(delta);
  }

  log(level, message, fields) {
    this.memory.logs.push([level, message, fields]);
  }

  config() {
    return this.memory.config;
  }

  referenceLookup(table, key) {
    return this.memory.reference.get(`${table}\u0000${key}`);
  }
}

/** What the plugin produced for one run: records per output, and rejections. */
export class Outcome {
  constructor(output, inputs) {
    /** [input index, output, bytes, forwarded] of every record. */
    this.records = [];
    let start = 0;
    for (const e of emittedRecords(output, inputs.length)) {
      let data;
      if (e.forward) {
        data = inputs[e.event];
      } else {
        data = output.payloads.slice(start, e.payloadEnd);
        start = e.payloadEnd;
      }
      this.records.push([e.event, output.targets[e.target], data, e.forward]);
    }
    /** [input index, reason] of every rejected input. */
    this.rejections = output.rejected.map((r) => [r.event, r.reason]);
  }

  /** The records sent to `output`, as text. */
  raw(output) {
    return this.records.filter(([, name]) => name === output).map(([, , data]) => decoder.decode(data));
  }

  /** The records sent to `output`, parsed from JSON. */
  json(output) {
    return this.raw(output).map((text) => JSON.parse(text));
  }

  /** Whether an input was forwarded unchanged to `output`. */
  forwardedTo(output) {
    return this.records.some(([, name, , forward]) => name === output && forward);
  }

  /** The reason the (first) input was rejected, or null. */
  get rejection() {
    return this.rejections.length > 0 ? this.rejections[0][1] : null;
  }
}

class Base {
  constructor(options = {}) {
    this._memory = new Memory(options);
    this._ctx = new Context(new MemoryHost(this._memory));
    this._position = 0;
    /** Whether batches carry the fields the plugin's last output asked for, as the host does
     * (false: never, as a host without projection); `project` forces a list. */
    this.projection = options.projection ?? true;
    this.project = null;
  }

  /** The fields the next batch carries. */
  _projected() {
    if (this.project !== null) return [...this.project];
    return this.projection ? [...this._ctx._wantedFields] : [];
  }

  /** Replaces the plugin instance (as a hot swap or a trap does): its cache starts again. */
  newInstance() {
    this._ctx = new Context(new MemoryHost(this._memory));
  }

  /** The committed keyed state, parsed. */
  get state() {
    return Object.fromEntries([...this._memory.state].map(([k, v]) => [k, JSON.parse(v)]));
  }

  /** The committed keyed state as the host stores it: JSON text per key. */
  get stateJson() {
    return Object.fromEntries(this._memory.state);
  }

  /** Counters summed so far. */
  get counters() {
    return { ...this._memory.counters };
  }

  /** [level, message, fields] of every log record. */
  get logs() {
    return [...this._memory.logs];
  }

  /** Calls to the host's keyed state (`get` and `write-batch`) so far. */
  get stateCalls() {
    return this._memory.stateCalls;
  }
}

/** Runs a transform function on events. Options: `{ config, state, reference: [[table, key, row]],
 * projection, fields }` (`fields`: as declared with `transform(fn, { fields })`, which is read by
 * default; `projection: false` runs as a host that projects no field). */
export class Harness extends Base {
  constructor(fn = PLUGIN.transform, options = {}) {
    super(options);
    this.fn = fn;
    this.fields = options.fields ?? declaredFields(fn);
  }

  /** Runs one event (a TestEvent, or a body) as a batch of one. */
  run(event) {
    return this.runBatch([event]);
  }

  /** Runs the events as one batch. */
  runBatch(events) {
    events = events.map(asEvent);
    const input = batch(events, this._position, this._projected());
    this._position += events.length;
    return new Outcome(runTransform(this._ctx, this.fn, input, this.fields), events.map((e) => e.body));
  }
}

/** Folds and finishes a window aggregate as the host does, the accumulator stored as JSON. */
export class WindowHarness extends Base {
  constructor(aggregate = PLUGIN.window, options = {}) {
    super(options);
    this.aggregate = aggregate;
    /** JSON text of each window's accumulator, by `${key JSON}|start|end`. */
    this.accumulators = new Map();
  }

  _id(key, start, end) {
    return `${JSON.stringify(key)}|${start}|${end}`;
  }

  /** Folds `events` into the window (key: object of the grouped fields); returns rejections. */
  fold(key, start, end, events) {
    events = events.map(asEvent);
    const stored = encoder.encode(this.accumulators.get(this._id(key, start, end)) ?? "");
    const request = {
      events: batch(events, this._position, this._projected()),
      windows: [{ key: JSON.stringify(key), start: BigInt(start), end: BigInt(end) }],
      accumulators: stored,
      accumulatorEnds: pack("u32s", [stored.length]),
      members: pack("u32s", events.map((_, i) => i)),
      memberEnds: pack("u32s", [events.length]),
    };
    this._position += events.length;
    const response = runFold(this._ctx, request, this.aggregate);
    const ends = unpack("u32s", response.accumulatorEnds, "accumulatorEnds");
    if (ends.length !== 1) throw new RangeError(`${ends.length} accumulators for 1 window`);
    this.accumulators.set(this._id(key, start, end), decoder.decode(response.accumulators.slice(0, ends[0])));
    return response.rejected.map((r) => [r.event, r.reason]);
  }

  /** The window's accumulator, parsed (undefined before any fold). */
  accumulator(key, start, end) {
    const text = this.accumulators.get(this._id(key, start, end));
    return text === undefined ? undefined : JSON.parse(text);
  }

  /** Closes the window: its Outcome. */
  finish(key, start, end) {
    const id = this._id(key, start, end);
    const stored = encoder.encode(this.accumulators.get(id) ?? "");
    this.accumulators.delete(id);
    const request = {
      windows: [{ key: JSON.stringify(key), start: BigInt(start), end: BigInt(end) }],
      accumulators: stored,
      accumulatorEnds: pack("u32s", [stored.length]),
    };
    return new Outcome(runFinish(this._ctx, request, this.aggregate), [new Uint8Array()]);
  }

  /** Folds `events` in one batch and closes the window. */
  window(key, start, end, events) {
    this.fold(key, start, end, events);
    return this.finish(key, start, end);
  }
}

/** Runs a join function on pairs. */
export class JoinHarness extends Base {
  constructor(fn = PLUGIN.join, options = {}) {
    super(options);
    this.fn = fn;
    this.fields = options.fields ?? declaredFields(fn);
  }

  /** Enriches one pair (either side may be null): its Outcome. */
  pair(left, right) {
    const events = [];
    const pair = { left: undefined, right: undefined };
    if (left != null) {
      pair.left = events.length;
      events.push(asEvent(left));
    }
    if (right != null) {
      pair.right = events.length;
      events.push(asEvent(right));
    }
    const request = { events: batch(events, this._position, this._projected()), pairs: [pair] };
    this._position += events.length;
    return new Outcome(runJoin(this._ctx, request, this.fn, this.fields), [events[0].body]);
  }
}
