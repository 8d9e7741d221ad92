"""A join enrichment: one record per pair (or lone event), naming both sides and their sources."""

import weir


@weir.join
def enrich(left, right, ctx):
    ctx.emit("rows", {
        "left": left.json()["n"] if left else None,
        "right": right.json()["n"] if right else None,
        "sources": [e.source for e in (left, right) if e is not None],
    })
