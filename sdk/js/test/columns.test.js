// The packed columns of the WIT contract (`u32s`, `u64s`, `s64s`, `u16s`, `bools`: numbers
// little-endian, a fixed width each, in a `list<u8>`) as the SDK's runners read and write them,
// written and read here byte by byte with a DataView, independently of the SDK and of its harness
// (`node --import ./register.js --test`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Context, Reject, runFinish, runFold, runTransform } from "weir";
import { Outcome } from "weir/testing";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

const WIDTHS = { u32s: 4, u64s: 8, s64s: 8, u16s: 2, bools: 1 };

/** `values` as a packed column of `type`, starting `offset` bytes into its buffer (so that its
 * `byteOffset` need not be a multiple of the width). */
function pack(type, values, offset = 0) {
  const width = WIDTHS[type];
  const buffer = new ArrayBuffer(offset + values.length * width + 3);
  const view = new DataView(buffer, offset);
  values.forEach((v, i) => {
    if (type === "u32s") view.setUint32(i * 4, v, true);
    else if (type === "u64s") view.setBigUint64(i * 8, v, true);
    else if (type === "s64s") view.setBigInt64(i * 8, v, true);
    else if (type === "u16s") view.setUint16(i * 2, v, true);
    else view.setUint8(i, v);
  });
  return new Uint8Array(buffer, offset, values.length * width);
}

/** `text` as UTF-8 bytes, starting `offset` bytes into their buffer. */
function bytes(text, offset = 0) {
  const encoded = encoder.encode(text);
  const out = new Uint8Array(new ArrayBuffer(offset + encoded.length + 3), offset, encoded.length);
  out.set(encoded);
  return out;
}

/** The numbers of a `u32s` column, which must be a Uint8Array of whole numbers. */
function u32s(column) {
  assert.ok(column instanceof Uint8Array, `a packed column is a Uint8Array, not ${column?.constructor?.name}`);
  assert.equal(column.length % 4, 0);
  const view = new DataView(column.buffer, column.byteOffset, column.byteLength);
  return Array.from({ length: column.length / 4 }, (_, i) => view.getUint32(i * 4, true));
}

/** The bytes of a `bools` column. */
function bools(column) {
  assert.ok(column instanceof Uint8Array);
  return [...column];
}

/** A host that keeps what it is handed; `start`: what the first `check-cache` returns. */
function memoryHost(start = undefined) {
  const host = {
    writes: [],
    logs: [],
    gets: 0,
    stateGet() { host.gets += 1; return undefined; },
    stateWriteBatch(writes) { host.writes.push(writes); },
    stateCheckCache() { const s = start; start = undefined; return s; },
    counterAdd() {},
    log(level, message, fields) { host.logs.push([message, fields]); },
    config: () => "{}",
    referenceLookup: () => undefined,
  };
  return host;
}

const BODIES = ['{"n":0}', '{"n":1}', '{"n":2}', '{"n":3}', '{"n":4,"é":true}'];
const KEYS = ["k0", "", "k2", "clé", "k4"];
// Above 2**32, at 2**53 - 1 and at 2**64 - 1 (which rounds, as `Number(bigint)` does).
const POSITIONS = [0n, 2n ** 32n + 1n, 2n ** 40n + 7n, 2n ** 53n - 1n, 2n ** 64n - 1n];
// Negative, below -2**32, at 2**32, a date, the least s64.
const TIMES = [-1n, -(2n ** 40n) - 3n, 2n ** 32n, 1793491200000n, -(2n ** 63n)];
const ENQUEUED = [2n ** 33n + 5n, 0n, -5n, 2n ** 62n, 7n];
// 300 sources, so that an index takes both bytes of its `u16s` number.
const SOURCES = Array.from({ length: 300 }, (_, i) => `s${i}`);
const EVENT_SOURCES = [0, 299, 256, 1, 255];

/** The batch of BODIES, every column starting `offset` bytes into its buffer. The projection of
 * field `n` holds `100 + i` (not the body's `i`, so that which one `json()` read shows) for every
 * event but 2, which the host did not project (`projected` 0). */
function eventBatch(offset) {
  const ends = (parts) => {
    let at = 0;
    return parts.map((p) => (at += encoder.encode(p).length));
  };
  const values = BODIES.map((_, i) => (i === 2 ? "" : String(100 + i)));
  return {
    partition: 3,
    bodies: bytes(BODIES.join(""), offset),
    bodyEnds: pack("u32s", ends(BODIES), offset),
    positions: pack("u64s", POSITIONS, offset),
    eventTimes: pack("s64s", TIMES, offset),
    enqueuedTimes: pack("s64s", ENQUEUED, offset),
    keys: bytes(KEYS.join(""), offset),
    keyEnds: pack("u32s", ends(KEYS), offset),
    properties: [],
    sources: SOURCES,
    eventSources: pack("u16s", EVENT_SOURCES, offset),
    fieldNames: ["n"],
    // Entries separated by one comma; each end excludes its comma.
    fieldValues: bytes(values.join(","), offset),
    fieldEnds: pack("u32s", ends(values).map((end, i) => end + i), offset),
    projected: pack("bools", [1, 1, 0, 1, 1], offset),
  };
}

function plugin(seen) {
  return (event, ctx) => {
    const index = seen.length;
    seen.push([event.position, event.time, event.enqueuedTime, event.key, event.source, event.json().n]);
    switch (index) {
      case 0:
        ctx.emit("a", { i: 0 });
        ctx.put("k0", 1);
        break;
      case 1:
        ctx.forward("b");
        ctx.delete("gone");
        ctx.info("here");
        break;
      case 2:
        ctx.emitRaw("a", "raw");
        ctx.forward("c");
        break;
      case 3:
        ctx.emit("b", { i: 3 });
        ctx.put("k3", 3);
        throw new Reject("no");
      default:
        ctx.forward("a");
        ctx.emit("c", { i: 4 });
        ctx.put("clé", "v");
    }
  };
}

for (const offset of [0, 1, 2, 4, 5]) {
  test(`a transform reads and writes packed columns (columns at byte offset ${offset})`, () => {
    const host = memoryHost();
    const seen = [];
    const output = runTransform(new Context(host), plugin(seen), eventBatch(offset), ["n"]);

    // What each event read of the batch's columns.
    assert.deepEqual(seen, BODIES.map((_, i) => [
      Number(POSITIONS[i]), Number(TIMES[i]), Number(ENQUEUED[i]), KEYS[i] || null,
      SOURCES[EVENT_SOURCES[i]], i === 2 ? 2 : 100 + i,
    ]));
    assert.equal(seen[4][0], 2 ** 64);
    assert.equal(seen[4][1], -(2 ** 63));
    assert.deepEqual(host.logs, [["here", [["position", "4294967297"]]]]);

    // The emitted records, four numbers each: event, target, payload end, forward (0 or 1); what
    // the rejected event 3 emitted is gone.
    assert.deepEqual(output.targets, ["a", "b", "c"]);
    assert.ok(output.payloads instanceof Uint8Array);
    assert.equal(decoder.decode(output.payloads), '{"i":0}raw{"i":4}');
    assert.equal(output.emitted.length, 6 * 16);
    const numbers = u32s(output.emitted);
    const records = Array.from({ length: numbers.length / 4 }, (_, r) => numbers.slice(r * 4, r * 4 + 4));
    assert.deepEqual(records, [
      [0, 0, 7, 0],
      [1, 1, 7, 1],
      [2, 0, 10, 0],
      [2, 2, 10, 1],
      [4, 0, 10, 1],
      [4, 2, 17, 0],
    ]);
    assert.deepEqual(output.rejected, [{ event: 3, reason: "no" }]);
    assert.deepEqual(output.wantedFields, ["n"]);

    // One `write-batch`: key and value ends as `u32s` (in bytes: `clé` is 4), deletes as `bools`.
    assert.equal(host.writes.length, 1);
    const writes = host.writes[0];
    assert.equal(decoder.decode(writes.keys), "k0goneclé");
    assert.deepEqual(u32s(writes.keyEnds), [2, 6, 10]);
    assert.equal(decoder.decode(writes.values), '1"v"');
    assert.deepEqual(u32s(writes.valueEnds), [1, 1, 4]);
    assert.deepEqual(bools(writes.deletes), [0, 1, 0]);
  });
}

test("a second batch starts its records and payloads afresh", () => {
  const ctx = new Context(memoryHost());
  const fn = (event, ctx) => ctx.emitRaw("x", event.text.slice(5, 6)); // `n` of `{"n":...`
  const first = runTransform(ctx, fn, eventBatch(0), []);
  assert.equal(u32s(first.emitted).length, 5 * 4);
  const single = { ...eventBatch(1), bodyEnds: pack("u32s", [7], 1), fieldNames: [] };
  const second = runTransform(ctx, fn, single, []);
  assert.deepEqual(u32s(second.emitted), [0, 0, 1, 0]);
  assert.equal(decoder.decode(second.payloads), "0");
});

test("more records than the first buffer holds", () => {
  const count = 3000;
  const batch = {
    ...eventBatch(0),
    bodies: bytes("{}".repeat(count)),
    bodyEnds: pack("u32s", Array.from({ length: count }, (_, i) => 2 * (i + 1))),
    eventTimes: pack("s64s", Array.from({ length: count }, (_, i) => BigInt(i - 5))),
    fieldNames: [],
    sources: [],
  };
  const output = runTransform(new Context(memoryHost()), (event, ctx) => {
    ctx.forward("f");
    if (event.time % 2 === 0) ctx.emitRaw("g", "x");
  }, batch, []);
  const numbers = u32s(output.emitted);
  const expected = [];
  let end = 0;
  for (let i = 0; i < count; i++) {
    expected.push(i, 0, end, 1);
    if ((i - 5) % 2 === 0) expected.push(i, 1, ++end, 0);
  }
  assert.equal(numbers.length, expected.length);
  assert.deepEqual(numbers, expected);
});

test("a stale cache starts again from packed entries", () => {
  for (const offset of [0, 3]) {
    const start = {
      entries: {
        keys: bytes("abcé", offset),
        keyEnds: pack("u32s", [1, 2, 3, 5], offset),
        values: bytes('12"x"', offset),
        valueEnds: pack("u32s", [1, 1, 2, 5], offset),
        deletes: pack("bools", [0, 1, 0, 0], offset),
      },
      whole: true,
    };
    const host = memoryHost(start);
    const read = [];
    runTransform(new Context(host), (event, ctx) => {
      read.push(["a", "b", "c", "é", "d"].map((k) => ctx.get(k, "none")));
    }, { ...eventBatch(0), bodyEnds: pack("u32s", [7]) }, []);
    assert.deepEqual(read, [[1, "none", 2, "x", "none"]]);
    assert.equal(host.gets, 0, "the whole state came with the cache start");
  }
});

const sum = {
  init: () => ({ sum: 0 }),
  fold(acc, event) {
    acc.sum += event.json().n;
    return acc;
  },
  finish(acc, window, ctx) {
    ctx.emit("rows", { key: window.key, start: window.start, sum: acc.sum });
  },
};

test("fold and finish read and write packed ends", () => {
  for (const offset of [0, 1, 6]) {
    // Window 0 has an accumulator and events 0 and 4; window 1 none yet, and events 1, 4 and 0.
    const stored = '{"sum":10}';
    const response = runFold(new Context(memoryHost()), {
      events: eventBatch(offset),
      windows: [{ key: '{"d":1}', start: -5n, end: 5n }, { key: "{}", start: 2n ** 40n, end: 2n ** 41n }],
      accumulators: bytes(stored, offset),
      accumulatorEnds: pack("u32s", [stored.length, stored.length], offset),
      members: pack("u32s", [0, 4, 1, 4, 0], offset),
      memberEnds: pack("u32s", [2, 5], offset),
    }, sum);
    assert.ok(response.accumulators instanceof Uint8Array);
    const ends = u32s(response.accumulatorEnds);
    const texts = ends.map((end, i) => decoder.decode(response.accumulators.subarray(i === 0 ? 0 : ends[i - 1], end)));
    assert.deepEqual(texts, ['{"sum":14}', '{"sum":5}']);
    assert.deepEqual(response.rejected, []);

    const output = runFinish(new Context(memoryHost()), {
      windows: [{ key: '{"d":1}', start: -5n, end: 5n }, { key: "{}", start: 2n ** 40n, end: 2n ** 41n }],
      accumulators: bytes(texts.join(""), offset),
      accumulatorEnds: pack("u32s", ends, offset),
    }, sum);
    const first = '{"key":{"d":1},"start":-5,"sum":14}';
    const second = `{"key":{},"start":${2 ** 40},"sum":5}`;
    assert.equal(decoder.decode(output.payloads), first + second);
    assert.deepEqual(u32s(output.emitted), [0, 0, first.length, 0, 1, 0, first.length + second.length, 0]);
  }
});

test("the harness checks an output's packed columns as the host does", () => {
  const ok = { targets: ["a"], payloads: bytes("xy"), emitted: pack("u32s", [0, 0, 2, 0, 0, 0, 2, 1]), rejected: [] };
  const outcome = new Outcome(ok, [bytes("in")]);
  assert.deepEqual(outcome.raw("a"), ["xy", "in"]);
  assert.ok(outcome.forwardedTo("a"));
  const bad = [
    { emitted: [0, 0, 2, 0] }, // not bytes
    { emitted: Uint32Array.from([0, 0, 2, 0]) }, // not bytes
    { emitted: pack("u32s", [0, 0, 2]) }, // not a whole record
    { emitted: pack("u32s", [0, 0, 2, 2]) }, // forward neither 0 nor 1
    { emitted: pack("u32s", [1, 0, 2, 0]) }, // no event 1
    { emitted: pack("u32s", [0, 1, 2, 0]) }, // no target 1
    { emitted: pack("u32s", [0, 0, 3, 0]) }, // past the payloads
    { rejected: [{ event: 1, reason: "r" }] },
  ];
  for (const change of bad) {
    assert.throws(() => new Outcome({ ...ok, ...change }, [bytes("in")]), JSON.stringify(change));
  }
});
