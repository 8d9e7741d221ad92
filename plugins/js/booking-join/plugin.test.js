// The bookings join, run natively through the SDK's harness (`node --test`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { JoinHarness, TestEvent } from "weir/testing";
import { enrich } from "./plugin.js";

test("a paid seat and an unpaid one", () => {
  const harness = new JoinHarness(enrich);
  const seat = new TestEvent({ OrderId: "o1", SeatId: "A1", SeatPrice: 40.0 }, { time: 1000000 });
  const payment = new TestEvent(
    { PaymentId: "p1", OrderId: "o1", Method: "Card", Amount: 40.0, Status: "Succeeded", Timestamp: "x" },
    { time: 1045500 },
  );
  const row = harness.pair(seat, payment).json("rows")[0];
  assert.equal(row.SeatId, "A1");
  assert.equal(row.PaymentDelaySeconds, 45);
  assert.equal(row.Paid, true);
  const alone = harness.pair(seat, null).json("rows")[0];
  assert.equal(alone.PaymentId, null);
  assert.equal(alone.Paid, false);
  assert.deepEqual(harness.pair(null, new TestEvent({})).json("rows"), []);
  assert.equal(harness.counters.unpaid, 1);
});

test("a payment without its fields is rejected", () => {
  const harness = new JoinHarness(enrich);
  const outcome = harness.pair(new TestEvent({ OrderId: "o1" }), new TestEvent({ OrderId: "o1" }));
  assert.equal(outcome.rejection, "missing field `PaymentId`");
});
