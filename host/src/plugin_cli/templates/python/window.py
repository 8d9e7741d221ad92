"""A Weir window aggregate: the count, mean and maximum temperature of each window.

The accumulator is stored as JSON by the host between calls. Build it with `weir plugin build`,
test it natively with `pytest` and through the host with `weir plugin test`.
"""

import weir


@weir.init
def init():
    return {"count": 0, "sum": 0.0, "max": None}


@weir.fold
def fold(acc, event, ctx):
    """Called for each event of a window, in event-time order; raising leaves the accumulator as
    it was and sends the event to the dead letters."""
    temperature = event.json().get("Temperature")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise weir.Reject("no Temperature")
    acc["count"] += 1
    acc["sum"] += temperature
    acc["max"] = temperature if acc["max"] is None else max(acc["max"], temperature)
    return acc


@weir.finish
def finish(acc, window, ctx):
    """Called once, when the window closes."""
    ctx.emit("rows", {
        "EventCount": acc["count"],
        "AvgTemperature": acc["sum"] / max(acc["count"], 1),
        "MaxTemperature": acc["max"],
    })
