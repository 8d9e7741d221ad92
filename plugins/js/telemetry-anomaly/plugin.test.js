// The anomaly rule, run natively through the SDK's harness (`node --test`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Harness, TestEvent } from "weir/testing";
import { process } from "./plugin.js";

const MINUTE = 60000;
const reading = (device, minute, temperature, eventId) =>
  new TestEvent(
    { DeviceId: device, Location: "Paris", Temperature: temperature,
      Timestamp: `2026-11-01T00:${String(minute).padStart(2, "0")}:00.000Z`, EventId: eventId },
    { key: device, time: 1793491200000 + minute * MINUTE },
  );

test("a jump within five minutes alerts with its severity", () => {
  const harness = new Harness(process);
  assert.deepEqual(harness.run(reading("d1", 0, 20.0, "a1")).json("alerts"), []);
  const alert = harness.run(reading("d1", 1, 36.0, "a2")).json("alerts")[0];
  assert.deepEqual([alert.Severity, alert.PrevTemperature, alert.TempDelta], ["Medium", 20, 16]);
  assert.equal(harness.run(reading("d1", 2, 57.5, "a3")).json("alerts")[0].Severity, "High");
  assert.deepEqual(harness.run(reading("d1", 8, 20.0, "a4")).json("alerts"), []);
  assert.equal(harness.run(reading("d2", 8, 90.0, "b1")).json("alerts")[0].Severity, "Critical");
  assert.deepEqual(harness.counters, { alerts: 3 });
});

test("every valid reading is forwarded and the state is the Rust plugin's form", () => {
  const harness = new Harness(process);
  assert.ok(harness.run(reading("d1", 0, 20.5, "a1")).forwardedTo("rows"));
  assert.deepEqual(harness.stateJson, { d1: '{"temperature":20.5,"time":1793491200000}' });
});

test("the state of the Rust plugin is read", () => {
  const harness = new Harness(process, { state: { d1: { temperature: 20.0, time: 1793491200000 } } });
  assert.equal(harness.run(reading("d1", 1, 40.0, "a2")).json("alerts")[0].TempDelta, 20);
});

test("bad readings are rejected and change nothing", () => {
  const harness = new Harness(process);
  assert.match(harness.run('{"DeviceId": "d1"').rejection, /^malformed JSON/);
  assert.equal(harness.run({ DeviceId: "d1", Timestamp: "x", EventId: "e" }).rejection, "missing field `Temperature`");
  assert.deepEqual(harness.state, {});
});

test("thresholds come from the stage config", () => {
  const harness = new Harness(process, { config: { max_temperature: 50.0 } });
  assert.equal(harness.run(reading("d1", 0, 60.0, "a1")).json("alerts")[0].Severity, "Critical");
});
