// The plugin's functions run natively (`node --test`), through the SDK's harness.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WindowHarness } from "weir/testing";
import { aggregate } from "./plugin.js";

test("a window counts, averages and keeps the maximum", () => {
  const harness = new WindowHarness(aggregate);
  const key = { DeviceId: "d1" };
  const rejected = harness.fold(key, 0, 60000, [{ Temperature: 20.0 }, {}, { Temperature: 30.0 }]);
  assert.deepEqual(rejected, [[1, "no Temperature"]]);
  assert.deepEqual(harness.finish(key, 0, 60000).json("rows"),
    [{ EventCount: 2, AvgTemperature: 25, MaxTemperature: 30 }]);
});
