"""Device health, as the Rust `device-health` window aggregate: per device and 10-minute window,
the number of messages and the average battery level and signal strength; an alert when a device
sends too little, or its battery or signal is low (the seed's Stream Analytics query).

The accumulator is the Rust plugin's JSON form (`messages`, `battery_sum`, `signal_sum`), so open
windows carry over a swap between the two. Alerts go to output `alerts`; the host adds
`DeviceId`, `Location`, `WindowStart` and `WindowEnd`.
"""

import weir

DEFAULTS = {
    "min_messages": 10,
    "min_battery": 20.0,
    "min_signal": -80.0,
    "critical_battery": 10.0,
    "high_below_messages": 5,
}


def number(reading, field):
    value = reading[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise weir.Reject(f"invalid type: {field} is {value!r}, expected a number")
    return value


@weir.init
def init():
    return {"messages": 0, "battery_sum": 0.0, "signal_sum": 0.0}


@weir.fold
def fold(health, event, ctx):
    reading = event.json()
    battery = number(reading, "BatteryLevel")  # both read first: a rejection changes nothing
    signal = number(reading, "SignalStrength")
    health["messages"] += 1
    health["battery_sum"] += battery
    health["signal_sum"] += signal
    return health


def assess(t, health):
    """The alert a window with these figures raises, if any."""
    messages = health["messages"]
    if messages == 0:
        return None
    avg_battery = health["battery_sum"] / messages
    avg_signal = health["signal_sum"] / messages
    if not (messages < t["min_messages"] or avg_battery < t["min_battery"]
            or avg_signal < t["min_signal"]):
        return None
    if avg_battery < t["critical_battery"]:
        severity = "Critical"
    elif messages < t["high_below_messages"]:
        severity = "High"
    else:
        severity = "Medium"
    return {"MessageCount": messages, "AvgBattery": avg_battery, "AvgSignal": avg_signal,
            "AlertType": "DeviceHealth", "Severity": severity}


@weir.finish
def finish(health, window, ctx):
    unknown = set(ctx.config) - set(DEFAULTS)
    if unknown:
        raise weir.Reject(f"invalid stage config: unknown field `{sorted(unknown)[0]}`")
    alert = assess({**DEFAULTS, **ctx.config}, health)
    if alert is not None:
        ctx.counter("alerts")
        ctx.emit("alerts", alert)
