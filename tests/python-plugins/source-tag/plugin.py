"""Tags every event with the name of the source it came from (`event.source`)."""

import weir


@weir.transform
def process(event, ctx):
    ctx.emit("out", {"n": event.json()["n"], "source": event.source, "key": event.key})
