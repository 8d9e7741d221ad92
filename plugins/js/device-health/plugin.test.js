// The device-health window aggregate, run natively through the SDK's harness (`node --test`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { WindowHarness } from "weir/testing";
import { health } from "./plugin.js";

const KEY = { DeviceId: "d1", Location: "Paris" };

function severity(count, battery, signal) {
  const events = Array.from({ length: count }, () => ({ BatteryLevel: battery, SignalStrength: signal }));
  const alerts = new WindowHarness(health).window(KEY, 0, 600000, events).json("alerts");
  return alerts.length > 0 ? alerts[0].Severity : null;
}

test("alerts follow the seed rule", () => {
  assert.equal(severity(60, 80.0, -60.0), null);
  assert.equal(severity(9, 80.0, -60.0), "Medium");
  assert.equal(severity(4, 80.0, -60.0), "High");
  assert.equal(severity(60, 15.0, -60.0), "Medium");
  assert.equal(severity(4, 9.0, -60.0), "Critical");
  assert.equal(severity(60, 80.0, -81.0), "Medium");
  assert.equal(severity(10, 20.0, -80.0), null);
});

test("thresholds come from the stage config; a reading without a battery level is rejected", () => {
  const harness = new WindowHarness(health, { config: { min_messages: 100 } });
  assert.deepEqual(harness.fold(KEY, 0, 600000, [{ SignalStrength: -60 }]), [[0, "missing field `BatteryLevel`"]]);
  harness.fold(KEY, 0, 600000, [{ BatteryLevel: 50, SignalStrength: -70.5 }, { BatteryLevel: 50, SignalStrength: -70.5 }]);
  assert.deepEqual(harness.accumulator(KEY, 0, 600000), { messages: 2, battery_sum: 100, signal_sum: -141 });
  assert.equal(harness.finish(KEY, 0, 600000).json("alerts")[0].MessageCount, 2);
  assert.deepEqual(harness.counters, { alerts: 1 });
});
