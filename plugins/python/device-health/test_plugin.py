"""The device-health window aggregate, run natively through the SDK's harness (`pytest`)."""

from weir.testing import WindowHarness

import plugin  # noqa: F401  (registers init/fold/finish)

KEY = {"DeviceId": "d1", "Location": "Paris"}


def severity(count, battery, signal, config=None):
    harness = WindowHarness(config=config)
    events = [{"BatteryLevel": battery, "SignalStrength": signal}] * count
    alerts = harness.window(KEY, 0, 600_000, events).json("alerts")
    return alerts[0]["Severity"] if alerts else None


def test_alerts_follow_the_seed_rule():
    assert severity(60, 80.0, -60.0) is None
    assert severity(9, 80.0, -60.0) == "Medium"
    assert severity(4, 80.0, -60.0) == "High"
    assert severity(60, 15.0, -60.0) == "Medium"
    assert severity(4, 9.0, -60.0) == "Critical"
    assert severity(60, 80.0, -81.0) == "Medium"
    assert severity(10, 20.0, -80.0) is None


def test_the_accumulator_is_the_rust_plugins_form_and_thresholds_come_from_config():
    harness = WindowHarness(config={"min_messages": 100})
    harness.fold(KEY, 0, 600_000, [{"BatteryLevel": 50, "SignalStrength": -70.5}] * 3)
    assert harness.accumulators[('{"DeviceId":"d1","Location":"Paris"}', 0, 600_000)] == \
        b'{"messages":3,"battery_sum":150.0,"signal_sum":-211.5}'
    assert harness.finish(KEY, 0, 600_000).json("alerts")[0]["MessageCount"] == 3
    assert harness.counters == {"alerts": 1}


def test_a_reading_without_a_battery_level_is_rejected():
    harness = WindowHarness()
    assert harness.fold(KEY, 0, 600_000, [{"SignalStrength": -60}]) == \
        [(0, "missing field `BatteryLevel`")]
