// The bookings fact: each seat row of a booking joined with the order's payment made within the
// stage's bound (2 minutes in examples/bookings.toml), as the Rust `booking-join` plugin does it.
//
// A seat whose order was not paid within the bound comes alone (the join's `unmatched_left =
// "emit"`) and gets empty payment columns and `Paid = false`; a payment alone writes nothing. Rows
// go to output `rows`.

import { Reject, join } from "weir";

/** The payment's fields and their types, as the Rust plugin reads them. */
const PAYMENT = [
  ["PaymentId", "string"],
  ["Method", "string"],
  ["Amount", "number"],
  ["Status", "string"],
  ["Timestamp", "string"],
];

function payment(event) {
  const value = event.json();
  for (const [field, type] of PAYMENT) {
    if (value[field] === undefined) throw new Reject(`missing field \`${field}\``);
    if (typeof value[field] !== type) {
      throw new Reject(`invalid type: ${field} is ${JSON.stringify(value[field])}, expected a ${type}`);
    }
  }
  return value;
}

export const enrich = join((seat, paid, ctx) => {
  if (seat === null) return; // A payment without its booking: nothing to write.
  const row = seat.json();
  if (row === null || typeof row !== "object" || Array.isArray(row)) {
    throw new Reject("invalid type: a seat row is a JSON object");
  }
  const p = paid === null ? null : payment(paid);
  row.PaymentId = p ? p.PaymentId : null;
  row.PaymentMethod = p ? p.Method : null;
  row.PaymentAmount = p ? p.Amount : null;
  row.PaymentStatus = p ? p.Status : null;
  row.PaymentTime = p ? p.Timestamp : null;
  row.PaymentDelaySeconds = p ? Math.floor((paid.time - seat.time) / 1000) : null;
  row.Paid = p !== null && p.Status === "Succeeded";
  ctx.counter(row.Paid ? "paid" : "unpaid");
  ctx.emit("rows", row);
});
