// A Weir join enrichment: each seat (left) with whether its order was paid (right) within the
// stage's bound, and the amount.
//
// Build it with `weir plugin build`, test it natively with `node --test` and through the host with
// `weir plugin test`.

import { join } from "weir";

// Called for every pair the host makes: both sides when they joined within the bound, one side
// alone when the other did not come in time (if the stage's `unmatched_*` policy emits it).
export const enrich = join((seat, payment, ctx) => {
  if (seat === null) return;
  const row = seat.json();
  row.Paid = payment !== null;
  if (payment !== null) row.Amount = payment.json().Amount;
  ctx.emit("rows", row);
});
