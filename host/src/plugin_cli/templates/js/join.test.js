// The plugin's function run natively (`node --test`), through the SDK's harness.
import { test } from "node:test";
import assert from "node:assert/strict";
import { JoinHarness } from "weir/testing";
import { enrich } from "./plugin.js";

test("a paid seat and an unpaid one", () => {
  const harness = new JoinHarness(enrich);
  const paid = harness.pair({ OrderId: "o1", SeatId: "A1" }, { OrderId: "o1", Amount: 40.0 });
  assert.deepEqual(paid.json("rows"), [{ OrderId: "o1", SeatId: "A1", Paid: true, Amount: 40 }]);
  const alone = harness.pair({ OrderId: "o2", SeatId: "B7" }, null);
  assert.deepEqual(alone.json("rows"), [{ OrderId: "o2", SeatId: "B7", Paid: false }]);
});
