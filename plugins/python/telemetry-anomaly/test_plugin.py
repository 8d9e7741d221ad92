"""The anomaly rule, run natively through the SDK's harness (`pytest`)."""

from weir.testing import Harness, TestEvent

from plugin import process

MINUTE = 60_000


def reading(device, minute, temperature, event_id):
    body = {"DeviceId": device, "Location": "Paris", "Temperature": temperature,
            "Timestamp": f"2026-11-01T00:{minute:02d}:00.000Z", "EventId": event_id}
    return TestEvent(body, key=device, time=1_793_491_200_000 + minute * MINUTE)


def test_a_jump_within_five_minutes_alerts_with_its_severity():
    harness = Harness(process)
    assert harness.run(reading("d1", 0, 20.0, "a1")).json("alerts") == []
    alert = harness.run(reading("d1", 1, 36.0, "a2")).json("alerts")[0]
    assert (alert["Severity"], alert["PrevTemperature"], alert["TempDelta"]) == ("Medium", 20.0, 16.0)
    assert harness.run(reading("d1", 2, 57.5, "a3")).json("alerts")[0]["Severity"] == "High"
    # Six minutes later the previous reading no longer counts.
    assert harness.run(reading("d1", 8, 20.0, "a4")).json("alerts") == []
    assert harness.run(reading("d2", 8, 90.0, "b1")).json("alerts")[0]["Severity"] == "Critical"
    assert harness.counters == {"alerts": 3}


def test_every_valid_reading_is_forwarded_and_its_state_is_the_rust_plugins_form():
    harness = Harness(process)
    outcome = harness.run(reading("d1", 0, 20.5, "a1"))
    assert outcome.forwarded_to("rows")
    assert harness.state_json == {"d1": '{"temperature":20.5,"time":1793491200000}'}


def test_the_state_of_the_rust_plugin_is_read():
    harness = Harness(process, state={"d1": {"temperature": 20, "time": 1_793_491_200_000}})
    assert harness.run(reading("d1", 1, 40.0, "a2")).json("alerts")[0]["TempDelta"] == 20.0


def test_bad_readings_are_rejected_and_change_nothing():
    harness = Harness(process)
    assert harness.run(b'{"DeviceId": "d1"').rejection.startswith("malformed JSON")
    assert harness.run({"DeviceId": "d1", "Timestamp": "x", "EventId": "e"}).rejection == \
        "missing field `Temperature`"
    assert "expected a number" in harness.run(
        {"DeviceId": "d1", "Temperature": "hot", "Timestamp": "x", "EventId": "e"}).rejection
    assert harness.state == {}


def test_thresholds_come_from_the_stage_config():
    harness = Harness(process, config={"max_temperature": 50.0})
    assert harness.run(reading("d1", 0, 60.0, "a1")).json("alerts")[0]["Severity"] == "Critical"
    assert Harness(process, config={"max_temp": 1}).run(reading("d1", 0, 1.0, "a1")).rejection \
        == "invalid stage config: unknown field `max_temp`"
