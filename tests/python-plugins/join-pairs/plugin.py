"""A join enrichment: one record per pair (or lone event), naming both sides and their sources."""

import weir


@weir.join
def enrich(left, right, ctx):
    row = {
        "left": left.json()["n"] if left else None,
        "right": right.json()["n"] if right else None,
        "sources": [e.source for e in (left, right) if e is not None],
    }
    if left:
        # For the test that the host projects join requests: how many fields the left event's
        # object holds before anything sees it whole, 1 (`n`) when it came from the projection.
        # (`dict.__len__`, not `len`: the SDK's `len` first completes the object from the body.)
        row["held"] = dict.__len__(left.json())
    ctx.emit("rows", row)
