"""The Python SDK's runners, state cache and harness (`pytest sdk/python`)."""

import subprocess
import sys
import textwrap

import weir
from weir.testing import Harness, JoinHarness, TestEvent, WindowHarness


def count(event, ctx):
    """Counts readings per device in keyed state; rejects readings of device `bad` after
    writing (the write must be rolled back)."""
    reading = event.json()
    device = reading["DeviceId"]
    seen = ctx.get(device, {"count": 0})
    seen["count"] += 1
    ctx.put(device, seen)
    ctx.emit("counts", {"DeviceId": device, "Count": seen["count"]})
    if device == "bad":
        raise weir.Reject("bad device")
    ctx.forward("rows")


def test_outputs_state_and_counters():
    harness = Harness(count)
    outcome = harness.run_batch([{"DeviceId": "a"}, {"DeviceId": "a"}, {"DeviceId": "b"}])
    assert [c["Count"] for c in outcome.json("counts")] == [1, 2, 1]
    assert outcome.raw("rows") == [b'{"DeviceId": "a"}', b'{"DeviceId": "a"}', b'{"DeviceId": "b"}']
    assert harness.state_json == {"a": '{"count":2}', "b": '{"count":1}'}


def test_a_rejected_event_leaves_no_output_and_no_state():
    harness = Harness(count)
    outcome = harness.run_batch([{"DeviceId": "bad"}, {"DeviceId": "a"}, b"{oops"])
    assert outcome.rejections[0] == (0, "bad device")
    assert outcome.rejections[1][0] == 2 and outcome.rejections[1][1].startswith("malformed JSON")
    assert outcome.json("counts") == [{"DeviceId": "a", "Count": 1}]
    assert harness.state == {"a": {"count": 1}}


def test_other_exceptions_reject_with_their_type_and_place():
    harness = Harness(count)
    assert harness.run({"Device": "a"}).rejection == "missing field `DeviceId`"

    def divide(event, ctx):
        return 1 / 0

    reason = Harness(divide).run({}).rejection
    assert reason.startswith("ZeroDivisionError: division by zero (at ") and "test_sdk.py" in reason


def test_state_reaches_the_host_once_per_batch_and_is_cached_between_batches():
    harness = Harness(count, state={"a": {"count": 5}})
    harness.run_batch([{"DeviceId": d} for d in "abcabc"])
    # The first batch of an instance starts from the whole (small) state: no get at all.
    assert harness.state_calls == 1  # one write-batch
    harness.run_batch([{"DeviceId": d} for d in "abc"])
    assert harness.state_calls == 2
    assert harness.state == {"a": {"count": 8}, "b": {"count": 3}, "c": {"count": 3}}


def test_a_new_instance_starts_its_cache_again_from_the_host():
    harness = Harness(count)
    harness.run({"DeviceId": "a"})
    harness.new_instance()  # what a hot swap does: another instance (or language) wrote since
    harness.run({"DeviceId": "a"})
    assert harness.state == {"a": {"count": 2}}


def test_event_metadata():
    seen = []

    def look(event, ctx):
        seen.append((event.key, event.time, event.partition, event.position, event.source,
                     event.property("h"), event.properties, event.text))

    Harness(look).run_batch([
        TestEvent("x", key="k", time=5, properties={"h": "v"}, source="left"),
        TestEvent("y"),
    ])
    assert seen == [("k", 5, 0, 0, "left", "v", {"h": "v"}, "x"),
                    (None, 0, 0, 1, "", None, {}, "y")]


def test_config_reference_logs_and_delete():
    def enrich(event, ctx):
        row = ctx.lookup("venues", event.json()["VenueId"])
        ctx.info("looked up", venue=event.json()["VenueId"])
        ctx.delete("old")
        ctx.emit("rows", {"City": row and row["City"], "Limit": ctx.config["limit"]})

    harness = Harness(enrich, config={"limit": 3}, state={"old": 1},
                      reference={("venues", "v1"): {"City": "Oslo"}})
    assert harness.run({"VenueId": "v1"}).json("rows") == [{"City": "Oslo", "Limit": 3}]
    assert harness.run({"VenueId": "v2"}).json("rows") == [{"City": None, "Limit": 3}]
    assert harness.state == {}
    assert harness.logs[0] == (weir.Level.INFO, "looked up", [("position", "0"), ("venue", "v1")])


def init():
    return {"count": 0, "sum": 0.0}


def fold(acc, event, ctx):
    value = event.json()["Value"]
    if value < 0:
        raise weir.Reject("negative")
    acc["count"] += 1
    acc["sum"] += value
    return acc


def finish(acc, window, ctx):
    ctx.emit("rows", {"Key": window.key, "Count": acc["count"], "Avg": acc["sum"] / acc["count"]})


def test_a_window_folds_across_calls_and_a_rejected_event_leaves_the_accumulator():
    harness = WindowHarness(init=init, fold=fold, finish=finish)
    key = {"DeviceId": "d1"}
    assert harness.fold(key, 0, 60_000, [{"Value": 1.0}, {"Value": -1.0}]) == [(1, "negative")]
    harness.fold(key, 0, 60_000, [{"Value": 2.0}])
    assert harness.accumulator(key, 0, 60_000) == {"count": 2, "sum": 3.0}
    outcome = harness.finish(key, 0, 60_000)
    assert outcome.json("rows") == [{"Key": {"DeviceId": "d1"}, "Count": 2, "Avg": 1.5}]


def test_a_join_sees_both_sides_or_one():
    def enrich(left, right, ctx):
        ctx.emit("rows", {"Left": left and left.json(), "Right": right and right.json()})

    harness = JoinHarness(enrich)
    assert harness.pair({"a": 1}, {"b": 2}).json("rows") == [{"Left": {"a": 1}, "Right": {"b": 2}}]
    assert harness.pair(None, {"b": 2}).json("rows") == [{"Left": None, "Right": {"b": 2}}]


def test_registration_finds_the_kind():
    plugin = weir._Plugin()
    assert plugin.kind() is None


def test_a_harness_test_with_a_wrong_expectation_fails(tmp_path):
    """The harness can fail: pytest run on a test that expects the wrong alert count fails."""
    (tmp_path / "test_wrong.py").write_text(textwrap.dedent("""
        from weir.testing import Harness
        def forward(event, ctx):
            ctx.forward("rows")
        def test_wrong():
            assert Harness(forward).run({}).raw("rows") == []
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout


def test_bodies_are_parsed_one_by_one_from_the_batch_text():
    def parse(event, ctx):
        ctx.emit("rows", event.json())

    outcome = Harness(parse).run_batch([b'{"a":"x', b'"}', b' {"b": 1} ', "{\"c\": \"\u00e9\"}"])
    # A truncated body does not borrow the next one's text.
    assert [index for index, _ in outcome.rejections] == [0, 1]
    assert outcome.json("rows") == [{"b": 1}, {"c": "\u00e9"}]


def test_state_values_are_copies_and_must_be_json():
    def keep(event, ctx):
        value = ctx.get("k", {"n": 0})
        value["n"] += 1  # changed but not put: the state keeps what was stored
        if event.json().get("put"):
            ctx.put("k", value)
        if event.json().get("nan"):
            ctx.put("k", {"n": float("nan")})

    harness = Harness(keep)
    harness.run_batch([{"put": True}, {}, {}, {"put": True}])
    assert harness.state == {"k": {"n": 2}}
    assert "cannot serialise keyed state `k`" in harness.run({"nan": True}).rejection
    assert harness.state == {"k": {"n": 2}}


def test_state_writes_of_a_rejected_event_are_undone_newest_first():
    def edit(event, ctx):
        command = event.json()
        seen = {"before": ctx.get("k"), "nested": ctx.get("n")}
        if seen["nested"]:
            seen["nested"]["list"].append(9)  # the caller's copy: the state does not change
        for step in command["steps"]:
            if step == "delete":
                ctx.delete("k")
            else:
                ctx.put("k", step)
        seen["after"] = ctx.get("k", "none")
        ctx.emit("seen", seen)
        if command.get("reject"):
            raise weir.Reject("no")

    harness = Harness(edit)
    # The host's text, with spaces, as another SDK may have written it.
    harness._memory.state[b"k"] = b'{"a": [1, 2.5]}'
    harness._memory.state[b"n"] = b'{"list": [1]}'
    outcome = harness.run_batch([
        {"steps": [1, "delete", 2], "reject": True},
        {"steps": []},
        {"steps": ["delete"], "reject": True},
        {"steps": ["delete"]},
        {"steps": []},
    ])
    seen = outcome.json("seen")
    assert [s["before"] for s in seen] == [{"a": [1, 2.5]}, {"a": [1, 2.5]}, None]
    assert [s["after"] for s in seen] == [{"a": [1, 2.5]}, "none", "none"]
    assert seen[0]["nested"] == {"list": [1, 9]} and seen[2]["nested"] == {"list": [1, 9]}
    assert harness.state == {"n": {"list": [1]}}


def test_flat_values_put_read_back_as_fresh_copies_equal_to_their_json():
    def edit(event, ctx):
        command = event.json()
        got = ctx.get("k")
        if got is not None:
            got["seen"] = True  # the caller's copy: the state does not change
        value = ctx.get("k")
        ctx.emit("got", {"value": value, "keys": sorted({type(k).__name__ for k in value or ()})})
        if "put" in command:
            value = command["put"]
            ctx.put("k", value)
            value["after_put"] = 1  # changed after `put`: the state keeps what was put
        if command.get("int_keys"):
            ctx.put("k", {1: "one", "t": True, "f": 2.5, "none": None})
        if command.get("reject"):
            raise weir.Reject("no")

    harness = Harness(edit)
    outcome = harness.run_batch([
        {"put": {"n": 1, "s": "x"}},
        {},
        {"put": {"n": 2}, "reject": True},  # rolled back: the next event sees n = 1
        {},
        {"int_keys": True},
        {},
    ])
    # The rejected event's record is discarded with it.
    got = [record["value"] for record in outcome.json("got")]
    assert got == [None, {"n": 1, "s": "x"}, {"n": 1, "s": "x"}, {"n": 1, "s": "x"},
                   {"1": "one", "t": True, "f": 2.5, "none": None}]
    assert outcome.json("got")[-1]["keys"] == ["str"]  # as parsed from the JSON put
    assert harness.state == {"k": {"1": "one", "t": True, "f": 2.5, "none": None}}
