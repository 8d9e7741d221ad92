// The plugin's function run natively (`node --test`), through the SDK's harness.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Harness } from "weir/testing";
import { process } from "./plugin.js";

test("a jump alerts and every reading is forwarded", () => {
  const harness = new Harness(process, { config: { max_jump: 15.0 } });
  const first = harness.run({ DeviceId: "d1", Temperature: 20.0 });
  assert.deepEqual(first.json("alerts"), []);
  assert.ok(first.forwardedTo("rows"));
  const second = harness.run({ DeviceId: "d1", Temperature: 40.0 });
  assert.deepEqual(second.json("alerts"), [{ DeviceId: "d1", From: 20, To: 40 }]);
});

test("a reading without temperature is rejected", () => {
  assert.equal(new Harness(process).run({ DeviceId: "d1" }).rejection, "missing field `Temperature`");
});
