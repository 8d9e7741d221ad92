"""A Weir transform: alerts when a device's temperature jumped by more than `max_jump` (the
stage's config, default 15) since its previous reading, and forwards every reading to `rows`.

Build it with `weir plugin build`, test it natively with `pytest` and through the host with
`weir plugin test`.
"""

import weir


@weir.transform
def process(event, ctx):
    max_jump = ctx.config.get("max_jump", 15.0)
    reading = event.json()
    device = reading["DeviceId"]  # a missing field rejects the event with its name
    temperature = reading["Temperature"]
    last = ctx.get(device)  # keyed state, as the Rust SDK stores it
    if last is not None and abs(temperature - last["temperature"]) > max_jump:
        ctx.emit("alerts", {"DeviceId": device, "From": last["temperature"], "To": temperature})
    ctx.put(device, {"temperature": temperature})
    ctx.forward("rows")
