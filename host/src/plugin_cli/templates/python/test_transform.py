"""The plugin's functions run natively (`pytest`), through the SDK's harness."""

from weir.testing import Harness

from plugin import process


def test_a_jump_alerts_and_every_reading_is_forwarded():
    harness = Harness(process, config={"max_jump": 15.0})
    first = harness.run({"DeviceId": "d1", "Temperature": 20.0})
    assert first.json("alerts") == [] and first.forwarded_to("rows")
    second = harness.run({"DeviceId": "d1", "Temperature": 40.0})
    assert second.json("alerts") == [{"DeviceId": "d1", "From": 20.0, "To": 40.0}]
    assert harness.state == {"d1": {"temperature": 40.0}}


def test_a_reading_without_temperature_is_rejected():
    assert Harness(process).run({"DeviceId": "d1"}).rejection == "missing field `Temperature`"
