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
// The harness lays events out in a batch exactly as the host does, runs it through the runner the
// component's export runs (the same state cache, the same rollback of a rejected event, the same
// output encoding) and decodes the output as the host does. Keyed state (JSON text per key, as the
// host keeps it), counters, logs, the stage config and reference tables live in memory.

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

/** `events` in the WIT batch layout (camelCase, typed arrays and BigInts as componentize-js), with
 * the fields `project` projected out of the bodies that are JSON objects, as the host does for a
 * plugin that asked for them (`wanted-fields`). */
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
      values.push(text);
      valueLength += text.length;
      out.fieldEnds.push(valueLength);
    }
  }
  out.fieldValues = concat(values);
  out.fieldEnds = Uint32Array.from(out.fieldEnds);
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
  out.bodyEnds = Uint32Array.from(out.bodyEnds);
  out.keyEnds = Uint32Array.from(out.keyEnds);
  out.positions = BigUint64Array.from(out.positions);
  out.eventTimes = BigInt64Array.from(out.eventTimes);
  out.enqueuedTimes = BigInt64Array.from(out.enqueuedTimes);
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
    memory.recent = [];
    let keyStart = 0;
    let valueStart = 0;
    for (let i = 0; i < writes.keyEnds.length; i++) {
      const key = decoder.decode(writes.keys.subarray(keyStart, writes.keyEnds[i]));
      memory.recent.push(key);
      if (writes.deletes[i]) memory.state.delete(key);
      else memory.state.set(key, decoder.decode(writes.values.subarray(valueStart, writes.valueEnds[i])));
      keyStart = writes.keyEnds[i];
      valueStart = writes.valueEnds[i];
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
    for (const e of output.emitted) {
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
      accumulatorEnds: [stored.length],
      members: Uint32Array.from(events.map((_, i) => i)),
      memberEnds: [events.length],
    };
    this._position += events.length;
    const response = runFold(this._ctx, request, this.aggregate);
    this.accumulators.set(this._id(key, start, end), decoder.decode(response.accumulators.slice(0, response.accumulatorEnds[0])));
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
      accumulatorEnds: [stored.length],
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
