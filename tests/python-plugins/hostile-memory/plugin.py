"""A hostile plugin: allocates without bound on events marked poison (the memory limit must stop
it)."""

import weir


@weir.transform
def process(event, ctx):
    if event.json().get("poison"):
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    ctx.forward("out")
