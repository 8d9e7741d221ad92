// The projection of fields (`fieldNames`/`fieldValues`/`fieldEnds` in a batch, `wantedFields` in
// an output): a plugin that declares the fields it reads gets them without the guest parsing the
// body, and the same answers with or without a projection (`node --import ./register.js --test`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Reject, declaredFields, join, transform, window } from "weir";
import { Harness, JoinHarness, TestEvent, WindowHarness, fieldTexts } from "weir/testing";

const FIELDS = ["DeviceId", "Temperature", "Text", "Tags", "Flag", "Nothing", "Missing"];

const BODIES = [
  { DeviceId: "d1", Temperature: 20.5, Tags: ["a", { b: 1 }], Text: 'caf\u00e9 "q" \\ b', Flag: true, Nothing: null, Other: 1 },
  { Temperature: -4, DeviceId: "d2", Text: "plain" },
  '{"DeviceId": "d3", "Temperature": 1.0E2, "Text": "\\u00e9t\\u00e9", "Flag": false}  ',
  '{"DeviceId":"d1","DeviceId":"d4","Temperature":-0}',
  '{"DeviceId": "d5", "Temperature": 12345678901234567890123}',
  "[1, 2]",
  "17",
  '{"DeviceId": "d6", "Temperature": NaN}',
  "{oops",
  "{}",
  '{"DeviceId": "\u00e9t\u00e9", "Temperature": 0.1, "toString": 3}',
];

// Reads its declared fields and emits what it saw (so any difference shows).
const everyRead = transform((event, ctx) => {
  const reading = event.json();
  if (reading === null || typeof reading !== "object" || Array.isArray(reading)) {
    ctx.emit("seen", { notAnObject: reading });
    return;
  }
  if (reading.DeviceId === undefined) throw new Reject("missing field `DeviceId`");
  ctx.emit("seen", {
    keys: Object.keys(reading),
    whole: reading,
    negativeZero: Object.is(reading.Temperature, -0),
    type: typeof reading.Temperature,
    other: reading.Other ?? "not declared",
  });
  ctx.put(String(reading.DeviceId), { temperature: reading.Temperature });
}, { fields: FIELDS });

const events = () => BODIES.map((b) => new TestEvent(b));
const batches = () => [events(), events().reverse(), events(), events().slice(3)];

function outcomes(harness) {
  const results = batches().map((b) => {
    const outcome = harness.runBatch(b);
    return [outcome.records.map(([i, o, d, f]) => [i, o, new TextDecoder().decode(d), f]), outcome.rejections];
  });
  return [results, harness.stateJson];
}

test("a declared plugin gets the same answers with and without projection", () => {
  const reference = outcomes(new Harness(everyRead, { projection: false }));
  const projected = new Harness(everyRead);
  assert.deepEqual(outcomes(projected), reference);
  assert.deepEqual(projected._ctx._wantedFields, FIELDS);
  for (const fields of [["DeviceId"], [...FIELDS].reverse(), ["Absent", ...FIELDS], ["Temperature", "Other"]]) {
    const harness = new Harness(everyRead);
    harness.project = fields;
    assert.deepEqual(outcomes(harness), reference, fields.join());
  }
});

test("json() holds the declared fields the body has, in the declared order, as JSON.parse reads them", () => {
  const seen = [];
  const keep = (event) => { seen.push(event.json()); };
  for (const projection of [true, false]) {
    seen.length = 0;
    const harness = new Harness(keep, { projection, fields: FIELDS });
    harness.project = projection ? FIELDS : null;
    harness.runBatch(BODIES.slice(0, 5));
    const parsed = BODIES.slice(0, 5).map((b) => (typeof b === "string" ? JSON.parse(b) : b));
    seen.forEach((reading, i) => {
      const expected = Object.fromEntries(FIELDS.filter((f) => Object.hasOwn(parsed[i], f)).map((f) => [f, parsed[i][f]]));
      assert.deepEqual(reading, expected);
      assert.deepEqual(Object.keys(reading), Object.keys(expected));
    });
    assert.ok(Object.is(seen[3].Temperature, -0));
    assert.equal(seen[3].DeviceId, "d4");
    assert.equal(seen[2].Text, "\u00e9t\u00e9");
    assert.equal(seen[2].Temperature, 100);
  }
});

test("malformed bodies reject and other JSON values come whole, with or without projection", () => {
  for (const projection of [true, false]) {
    const harness = new Harness(everyRead, { projection });
    harness.project = projection ? FIELDS : null;
    const outcome = harness.runBatch(BODIES.slice(5));
    assert.deepEqual(outcome.json("seen").slice(0, 2), [{ notAnObject: [1, 2] }, { notAnObject: 17 }]);
    assert.deepEqual(outcome.rejections.map(([i]) => i), [2, 3, 4]);
    assert.match(outcome.rejections[0][1], /^malformed JSON/);
    assert.equal(outcome.rejections[2][1], "missing field `DeviceId`");
  }
});

test("a plugin that declares nothing gets the whole body and asks for no projection", () => {
  const seen = [];
  const harness = new Harness((event) => { seen.push(event.json()); });
  harness.runBatch([{ a: 1, b: { c: 2 } }]);
  harness.runBatch([{ a: 1, b: { c: 2 } }]);
  assert.deepEqual(seen, [{ a: 1, b: { c: 2 } }, { a: 1, b: { c: 2 } }]);
  assert.deepEqual(harness._ctx._wantedFields, []);
});

test("windows and joins declare their fields too", () => {
  const sum = {
    fields: ["v"],
    init: () => ({ sum: 0 }),
    fold(acc, event) {
      acc.sum += event.json().v;
      return acc;
    },
    finish(acc, w, ctx) { ctx.emit("rows", acc); },
  };
  assert.deepEqual(declaredFields(sum), ["v"]);
  for (const projection of [true, false]) {
    const harness = new WindowHarness(sum, { projection });
    harness.fold({ k: 1 }, 0, 10, [{ v: 1, w: 5 }, { v: 2 }]);
    harness.fold({ k: 1 }, 0, 10, [{ v: 3 }, { w: 0, v: 4 }]);
    assert.deepEqual(harness.finish({ k: 1 }, 0, 10).json("rows"), [{ sum: 10 }]);
  }
  const enrich = (left, right, ctx) => {
    ctx.emit("rows", { left: left.json(), right: right && right.json() });
  };
  for (const projection of [true, false]) {
    const harness = new JoinHarness(enrich, { projection, fields: ["id", "name"] });
    assert.deepEqual(harness.pair({ id: 1, x: 2 }, { name: "n" }).json("rows"), [{ left: { id: 1 }, right: { name: "n" } }]);
    assert.deepEqual(harness.pair({ id: 2 }, null).json("rows"), [{ left: { id: 2 }, right: null }]);
  }
  assert.throws(() => join(() => {}, { fields: "DeviceId" }), TypeError);
  assert.throws(() => window({ fold() {}, fields: [1] }), TypeError);
});

test("the harness projects as the host does", () => {
  const texts = fieldTexts(new TextEncoder().encode('{"a": 1, "b" : "x\\"y", "c": [1, {"d": "}"}]}'), ["c", "b", "z"]);
  assert.deepEqual(texts.map((t) => new TextDecoder().decode(t)), ['[1, {"d": "}"}]', '"x\\"y"', ""]);
  assert.equal(fieldTexts(new TextEncoder().encode("[1]"), ["a"]), null);
  assert.equal(fieldTexts(new TextEncoder().encode('{"a": NaN}'), ["a"]), null);
  assert.equal(fieldTexts(Uint8Array.from([123, 34, 97, 34, 58, 34, 0xff, 34, 125]), ["a"]), null);
});

test("values holding commas are read whole", () => {
  // The entries of `fieldValues` are separated by commas; commas inside values (one, two in a
  // row, at either end of a string, inside arrays and objects) belong to the values.
  const bodies = [
    { a: "x,y", b: [1, 2], c: { d: ",x," } },
    { a: ",", b: ["", ","], c: "x,,y" },
    { a: "", b: ",,", c: [] },
  ];
  for (const batch of [[bodies[0]], bodies.slice(0, 2), bodies, [bodies[2]]]) {
    const seen = [];
    const harness = new Harness((event) => { seen.push(event.json()); }, { fields: ["a", "b", "c"] });
    harness.project = ["a", "b", "c"];
    harness.runBatch(batch);
    assert.deepEqual(seen, batch);
  }
});
