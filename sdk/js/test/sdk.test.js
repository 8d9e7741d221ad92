// The JavaScript SDK's runners, state cache and harness (`node --import ./register.js --test`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Level, PLUGIN, Reject } from "weir";
import { Harness, JoinHarness, TestEvent, WindowHarness } from "weir/testing";

// Counts readings per device in keyed state; rejects device `bad` after writing.
function count(event, ctx) {
  const device = event.json().DeviceId;
  if (device === undefined) throw new Reject("missing field `DeviceId`");
  const seen = ctx.get(device, { count: 0 });
  seen.count += 1;
  ctx.put(device, seen);
  ctx.emit("counts", { DeviceId: device, Count: seen.count });
  if (device === "bad") throw new Reject("bad device");
  ctx.forward("rows");
}

test("outputs, state and counters", () => {
  const harness = new Harness(count);
  const outcome = harness.runBatch([{ DeviceId: "a" }, { DeviceId: "a" }, { DeviceId: "b" }]);
  assert.deepEqual(outcome.json("counts").map((c) => c.Count), [1, 2, 1]);
  assert.deepEqual(outcome.raw("rows"), ['{"DeviceId":"a"}', '{"DeviceId":"a"}', '{"DeviceId":"b"}']);
  assert.deepEqual(harness.stateJson, { a: '{"count":2}', b: '{"count":1}' });
});

test("a rejected event leaves no output and no state", () => {
  const harness = new Harness(count);
  const outcome = harness.runBatch([{ DeviceId: "bad" }, { DeviceId: "a" }, "{oops"]);
  assert.deepEqual(outcome.rejections[0], [0, "bad device"]);
  assert.equal(outcome.rejections[1][0], 2);
  assert.match(outcome.rejections[1][1], /^malformed JSON/);
  assert.deepEqual(outcome.json("counts"), [{ DeviceId: "a", Count: 1 }]);
  assert.deepEqual(harness.state, { a: { count: 1 } });
});

test("other errors reject with their type", () => {
  const outcome = new Harness(() => null.field).run({});
  assert.match(outcome.rejection, /^TypeError: /);
});

test("state reaches the host once per batch and is cached between batches", () => {
  const harness = new Harness(count, { state: { a: { count: 5 } } });
  harness.runBatch([..."abcabc"].map((d) => ({ DeviceId: d })));
  assert.equal(harness.stateCalls, 1);
  harness.runBatch([..."abc"].map((d) => ({ DeviceId: d })));
  assert.equal(harness.stateCalls, 2);
  assert.deepEqual(harness.state, { a: { count: 8 }, b: { count: 3 }, c: { count: 3 } });
});

test("a new instance starts its cache again from the host", () => {
  const harness = new Harness(count);
  harness.run({ DeviceId: "a" });
  harness.newInstance();
  harness.run({ DeviceId: "a" });
  assert.deepEqual(harness.state, { a: { count: 2 } });
});

test("event metadata, non-ASCII bodies", () => {
  const seen = [];
  new Harness((event) => {
    seen.push([event.key, event.time, event.position, event.source, event.property("h"), event.json()]);
  }).runBatch([
    new TestEvent({ city: "Zürich" }, { key: "k", time: 5, properties: { h: "v" }, source: "left" }),
    new TestEvent({ city: "Oslo" }),
  ]);
  assert.deepEqual(seen, [
    ["k", 5, 0, "left", "v", { city: "Zürich" }],
    [null, 0, 1, "", null, { city: "Oslo" }],
  ]);
});

test("config, reference, logs and delete", () => {
  const harness = new Harness((event, ctx) => {
    const row = ctx.lookup("venues", event.json().VenueId);
    ctx.info("looked up", { venue: event.json().VenueId });
    ctx.delete("old");
    ctx.emit("rows", { City: row && row.City, Limit: ctx.config.limit });
  }, { config: { limit: 3 }, state: { old: 1 }, reference: [["venues", "v1", { City: "Oslo" }]] });
  assert.deepEqual(harness.run({ VenueId: "v1" }).json("rows"), [{ City: "Oslo", Limit: 3 }]);
  assert.deepEqual(harness.run({ VenueId: "v2" }).json("rows"), [{ City: null, Limit: 3 }]);
  assert.deepEqual(harness.state, {});
  assert.deepEqual(harness.logs[0], [Level.INFO, "looked up", [["position", "0"], ["venue", "v1"]]]);
});

const average = {
  init: () => ({ count: 0, sum: 0.0 }),
  fold(acc, event) {
    const value = event.json().Value;
    if (value < 0) throw new Reject("negative");
    acc.count += 1;
    acc.sum += value;
    return acc;
  },
  finish(acc, window, ctx) {
    ctx.emit("rows", { Key: window.key, Count: acc.count, Avg: acc.sum / acc.count });
  },
};

test("a window folds across calls and a rejected event leaves the accumulator", () => {
  const harness = new WindowHarness(average);
  const key = { DeviceId: "d1" };
  assert.deepEqual(harness.fold(key, 0, 60000, [{ Value: 1.0 }, { Value: -1.0 }]), [[1, "negative"]]);
  harness.fold(key, 0, 60000, [{ Value: 2.0 }]);
  assert.deepEqual(harness.accumulator(key, 0, 60000), { count: 2, sum: 3 });
  assert.deepEqual(harness.finish(key, 0, 60000).json("rows"), [{ Key: key, Count: 2, Avg: 1.5 }]);
});

test("a join sees both sides or one", () => {
  const harness = new JoinHarness((left, right, ctx) => {
    ctx.emit("rows", { Left: left && left.json(), Right: right && right.json() });
  });
  assert.deepEqual(harness.pair({ a: 1 }, { b: 2 }).json("rows"), [{ Left: { a: 1 }, Right: { b: 2 } }]);
  assert.deepEqual(harness.pair(null, { b: 2 }).json("rows"), [{ Left: null, Right: { b: 2 } }]);
});

test("nothing is registered by the SDK itself", () => {
  assert.equal(PLUGIN.kind(), null);
});

test("a harness test with a wrong expectation fails", () => {
  const dir = mkdtempSync(join(tmpdir(), "weir-js-"));
  writeFileSync(join(dir, "wrong.test.js"), `
    import { test } from "node:test";
    import assert from "node:assert/strict";
    import { Harness } from "weir/testing";
    test("wrong", () => {
      assert.deepEqual(new Harness((e, ctx) => ctx.forward("rows")).run({}).raw("rows"), []);
    });
  `);
  const register = new URL("../register.js", import.meta.url).pathname;
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT; // a test run of its own, not a subtest of this one
  const result = spawnSync(process.execPath, ["--import", register, "--test", join(dir, "wrong.test.js")], { encoding: "utf8", env });
  assert.equal(result.status, 1, result.stdout);
  assert.match(result.stdout, /# fail 1/);
});
