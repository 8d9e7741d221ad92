"""A hostile plugin: raises on events marked poison (only those must go to the dead letters)."""

import weir


@weir.transform
def process(event, ctx):
    if event.json().get("poison"):
        raise RuntimeError(f"hostile-raise: poison event at position {event.position}")
    ctx.forward("out")
