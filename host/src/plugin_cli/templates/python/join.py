"""A Weir join enrichment: each seat (left) with whether its order was paid (right) within the
stage's bound, and the amount.

Build it with `weir plugin build`, test it natively with `pytest` and through the host with
`weir plugin test`.
"""

import weir


@weir.join
def enrich(seat, payment, ctx):
    """Called for every pair the host makes: both sides when they joined within the bound, one
    side alone when the other did not come in time (if the stage's `unmatched_*` policy emits
    it)."""
    if seat is None:
        return
    row = seat.json()
    row["Paid"] = payment is not None
    if payment is not None:
        row["Amount"] = payment.json().get("Amount")
    ctx.emit("rows", row)
