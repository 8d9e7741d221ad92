"""A hostile plugin: loops forever on events marked poison (the call deadline must stop it)."""

import weir


@weir.transform
def process(event, ctx):
    if event.json().get("poison"):
        while True:
            pass
    ctx.forward("out")
