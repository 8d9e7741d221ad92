"""Temperature anomalies in IoT telemetry: the seed's rule, as the Rust `telemetry-anomaly` plugin.

For every reading of a device, alert when the temperature moved by more than `delta_threshold`
(15) since the device's previous reading, if that reading is at most `lag_window_seconds` (300,
inclusive) older; or when it is above `max_temperature` (80) or below `min_temperature` (0).
Severity `Critical` above `max_temperature`, else `High` when it moved by more than `high_delta`
(20), else `Medium`. Every valid reading goes on to `rows`, unchanged.

The keyed state is the Rust plugin's: per `DeviceId`, `{"temperature": ..., "time": ...}` (the
last reading's temperature and event time in ms), so a stage can swap between the two with it.
"""

import weir

DEFAULTS = {
    "delta_threshold": 15.0,
    "high_delta": 20.0,
    "max_temperature": 80.0,
    "min_temperature": 0.0,
    "lag_window_seconds": 300,
}

_thresholds = (None, None)


def thresholds(ctx):
    """The stage's config over the defaults, worked out once per instance (the context lives as
    long as the instance); an unknown setting rejects (a misspelt threshold must not go
    unnoticed)."""
    global _thresholds
    if _thresholds[0] is not ctx:
        config = ctx.config
        unknown = set(config) - set(DEFAULTS)
        if unknown:
            raise weir.Reject(f"invalid stage config: unknown field `{sorted(unknown)[0]}`")
        _thresholds = (ctx, {**DEFAULTS, **config})
    return _thresholds[1]


NUMBER = (int, float)  # `type(x) in NUMBER`: not bool, which JSON keeps apart


def invalid(reading):
    """Why a reading with all four fields has a field of the wrong type."""
    for field, expected in (("DeviceId", "string"), ("Temperature", "number"),
                            ("Timestamp", "string"), ("EventId", "string")):
        value = reading[field]
        if (type(value) in NUMBER) != (expected == "number") or (
                expected == "string" and type(value) is not str):
            return f"invalid type: {field} is {value!r}, expected a {expected}"
    return "invalid reading"


@weir.transform
def process(event, ctx):
    # The checks are written out rather than in helpers: this runs for every event, and a
    # function call is much of the cost of a line of Python inside a component.
    t = _thresholds[1] if _thresholds[0] is ctx else thresholds(ctx)
    reading = event.json()
    device = reading["DeviceId"]
    temperature = reading["Temperature"]
    timestamp = reading["Timestamp"]
    event_id = reading["EventId"]
    if not (type(device) is str and type(temperature) in NUMBER and type(timestamp) is str
            and type(event_id) is str):
        raise weir.Reject(invalid(reading))
    now = event.time

    stored = ctx.get(device)
    previous = None
    if stored is not None and 0 <= now - stored["time"] <= t["lag_window_seconds"] * 1000:
        previous = stored["temperature"]

    delta = abs(temperature - previous) if previous is not None else 0.0
    severity = None
    if temperature > t["max_temperature"]:
        severity = "Critical"
    elif delta > t["delta_threshold"] or temperature < t["min_temperature"]:
        severity = "High" if delta > t["high_delta"] else "Medium"
    if severity is not None:
        ctx.emit("alerts", {
            "DeviceId": device,
            "Location": reading.get("Location"),
            "Temperature": temperature,
            "PrevTemperature": previous,
            "TempDelta": temperature - previous if previous is not None else None,
            "EventTime": timestamp,
            "AlertType": "TemperatureAnomaly",
            "Severity": severity,
            "EventId": event_id,
        })
        ctx.counter("alerts")

    if stored is None or stored["time"] <= now:
        ctx.put(device, {"temperature": temperature, "time": now})
    else:
        ctx.counter("out_of_order_readings")
    ctx.forward("rows")
