"""The plugin's functions run natively (`pytest`), through the SDK's harness."""

from weir.testing import WindowHarness

import plugin  # noqa: F401 - registers the aggregate's functions


def test_a_window_counts_averages_and_keeps_the_maximum():
    harness = WindowHarness()
    key = {"DeviceId": "d1"}
    rejected = harness.fold(key, 0, 60_000, [{"Temperature": 20.0}, {}, {"Temperature": 30.0}])
    assert rejected == [(1, "no Temperature")]
    rows = harness.finish(key, 0, 60_000).json("rows")
    assert rows == [{"EventCount": 2, "AvgTemperature": 25.0, "MaxTemperature": 30.0}]
