"""The projection of fields (`field-names`/`field-values`/`field-ends` in a batch, `wanted-fields`
in an output): the SDK asks for the fields the plugin reads, serves them without parsing the body,
and answers exactly as without a projection (`pytest sdk/python`)."""

import copy
import json
import pickle

import weir
from weir.testing import Harness, JoinHarness, TestEvent, WindowHarness, _batch, _unpacked

BODIES = [
    {"DeviceId": "d1", "Temperature": 20.5, "Count": 3, "Tags": ["a", "b"], "Nested": {"x": 1},
     "Text": "caf\u00e9 \"quoted\" \\ back", "Flag": True, "Nothing": None},
    {"DeviceId": "d2", "Temperature": -4, "Text": "plain"},
    {"Temperature": 1e21, "DeviceId": "d1", "Big": 123456789012345678901234567890},
]
RAW = [
    b'{"DeviceId": "d3", "Temperature": 7.25}  ',
    b'{"DeviceId":"d1","DeviceId":"d4","Temperature":1}',
    b'[1, 2]',
    b'{"DeviceId": "d5", "Temperature": NaN}',
    b'{oops',
    b'{}',
    '{"DeviceId": "\u00e9t\u00e9", "Temperature": 0.1}'.encode(),
    b'{"DeviceId": "d6", "Temperature": 1.0E2}',
]


def every_read(event, ctx):
    """Reads fields in many ways and emits what it saw (so any difference shows)."""
    reading = event.json()
    if not isinstance(reading, dict):
        ctx.emit("seen", {"not_an_object": reading})
        return
    seen = {
        "device": reading["DeviceId"],
        "temperature": reading["Temperature"],
        "type": type(reading["Temperature"]).__name__,
        "text": reading.get("Text"),
        "missing": reading.get("Missing", "default"),
        "has_tags": "Tags" in reading,
    }
    if seen["device"] == "d1":
        seen["whole"] = json.loads(json.dumps(reading))
        seen["keys"] = list(reading)
        seen["len"] = len(reading)
        seen["items"] = sorted(map(repr, reading.items()))
    ctx.emit("seen", seen)
    ctx.put(str(reading["DeviceId"]), {"temperature": reading["Temperature"]})
    if reading["DeviceId"] == "d2":
        reading["Missing"]  # KeyError: rejects with "missing field `Missing`"


def outcome_of(harness, batches):
    results = []
    for batch in batches:
        outcome = harness.run_batch(batch)
        results.append((outcome.records, outcome.rejections))
    return results, harness.state_json


def batches():
    events = [TestEvent(b) for b in BODIES] + [TestEvent(b) for b in RAW]
    return [events, events[::-1], events, events[2:]]


def test_answers_are_the_same_with_and_without_projection():
    with_projection = Harness(every_read)
    without = Harness(every_read, projection=False)
    assert outcome_of(with_projection, batches()) == outcome_of(without, batches())
    # The plugin's reads were recorded and asked for; later batches carried them.
    assert {"DeviceId", "Temperature", "Text", "Missing", "Tags"} <= set(
        with_projection._ctx.wanted_fields)
    assert without._ctx.wanted_fields  # asked for, even when the host does not project


def test_answers_are_the_same_whatever_fields_are_projected():
    reference = outcome_of(Harness(every_read, projection=False), batches())
    for fields in (["DeviceId"], ["Temperature", "DeviceId", "Tags", "Text", "Nested", "Flag"],
                   ["Absent"], ["Nothing", "Count", "Big"]):
        harness = Harness(every_read)
        harness.project = fields
        assert outcome_of(harness, batches()) == reference, fields


def test_projected_values_are_parsed_as_json_parses_them():
    seen = []

    def keep(event, ctx):
        seen.append(event.json())

    harness = Harness(keep)
    harness.project = ["DeviceId", "Temperature", "Tags", "Nested", "Text", "Flag", "Nothing",
                       "Big", "Count", "Absent"]
    harness.run_batch(BODIES)
    for reading, body in zip(seen, BODIES):
        assert type(reading) is weir._Fields and isinstance(reading, dict)
        for name in harness.project:
            if name in body:
                assert reading[name] == body[name] and type(reading[name]) is type(body[name])
            else:
                assert name not in reading
        assert reading == body and dict(reading) == body
        assert list(reading) == list(body)


def test_values_holding_commas_are_read_whole():
    """The entries of `field-values` are separated by commas; commas inside values (one, two in a
    row, at either end of a string, inside arrays and objects) belong to the values."""
    bodies = [{"a": "x,y", "b": [1, 2], "c": {"d": ",x,"}},
              {"a": ",", "b": ["", ","], "c": "x,,y"},
              {"a": "", "b": ",,", "c": []}]
    for batch in ([bodies[0]], [bodies[0], bodies[1]], bodies, [bodies[2]]):
        seen = []

        def keep(event, ctx):
            seen.append(event.json())

        harness = Harness(keep)
        harness.project = ["a", "b", "c"]
        harness.run_batch(batch)
        assert seen == batch
        assert all(type(reading) is weir._Fields for reading in seen)


def test_projected_events_are_served_from_the_projection_without_their_bodies():
    """Whether every entry is there (one parse of `field-values` as an array) or some are absent
    or a value holds `,,` (each entry sliced out), each event's object is made from the
    projection, before anything reads it, with the values the body has."""
    bodies = [{"a": "x,,y", "b": 1, "c": 0}, {"a": 2, "c": 0}, {"b": [1, ","], "a": ","},
              {"a": "\u00e9,", "b": None}]
    for chosen in (bodies, bodies[:1], bodies[1:], bodies[2:], bodies[3:]):
        batch = _batch([TestEvent(b) for b in chosen], project=["a", "b"])
        shared, events = weir._events(batch)
        assert shared.names == {"a", "b"}
        made = [dict(dict.items(fields)) for fields in shared.parsed]
        assert made == [{k: v for k, v in b.items() if k in ("a", "b")} for b in chosen]


def test_a_projected_object_becomes_the_whole_body_when_asked_whole():
    got = {}

    def whole(event, ctx):
        reading = event.json()
        tags = reading["Tags"]
        tags.append("c")  # a value handed out stays the one the object holds
        got["json"] = json.dumps(reading)
        got["copy"] = copy.copy(reading)
        got["deep"] = copy.deepcopy(reading)
        got["pickle"] = pickle.loads(pickle.dumps(reading))
        got["merged"] = reading | {"New": 1}
        got["repr"] = repr(reading)
        reading["Count"] = 4
        del reading["Flag"]
        got["after"] = dict(reading)

    harness = Harness(whole)
    harness.project = ["Tags", "DeviceId"]
    harness.run(BODIES[0])
    body = dict(BODIES[0], Tags=["a", "b", "c"])
    assert json.loads(got["json"]) == body and list(json.loads(got["json"])) == list(body)
    assert got["copy"] == body and got["deep"] == body and got["pickle"] == body
    assert got["merged"] == dict(body, New=1)
    assert got["repr"] == repr(body)
    assert got["after"] == {k: v for k, v in dict(body, Count=4).items() if k != "Flag"}


def test_an_object_with_no_field_read_yet_is_not_written_empty():
    """`json.dumps` writes an empty dict as `{}` without asking it for its items."""
    harness = Harness(lambda event, ctx: ctx.emit("out", event.json()), projection=False)
    assert harness.run({"a": 1}).json("out") == [{"a": 1}]
    harness = Harness(lambda event, ctx: ctx.emit("out", event.json()))
    harness.project = ["Absent"]
    assert harness.run({"a": 1}).json("out") == [{"a": 1}]


def test_a_field_not_projected_is_read_from_the_body_and_asked_for_next():
    def read(event, ctx):
        reading = event.json()
        ctx.emit("out", {"a": reading["a"], "b": reading["b"] if reading["a"] > 1 else None})

    harness = Harness(read)
    harness.run({"a": 1, "b": "x"})
    assert harness._ctx.wanted_fields == ["a"]
    outcome = harness.run({"a": 2, "b": "y"})  # projected: a; b read from the body
    assert outcome.json("out") == [{"a": 2, "b": "y"}]
    assert harness._ctx.wanted_fields == ["a", "b"]


def test_missing_fields_and_malformed_bodies_reject_as_without_projection():
    def read(event, ctx):
        ctx.emit("out", {"a": event.json()["a"]})

    for projection in (True, False):
        harness = Harness(read, projection=projection)
        harness.run({"a": 1})
        outcome = harness.run_batch([{"b": 1}, b"{oops", {"a": 3}, b"[1]"])
        assert [r for r in outcome.rejections][:2] == [
            (0, "missing field `a`"),
            (1, outcome.rejections[1][1]),
        ]
        assert outcome.rejections[1][1].startswith("malformed JSON")
        assert outcome.rejections[2][0] == 3 and outcome.rejections[2][1].startswith("TypeError")
        assert outcome.json("out") == [{"a": 3}]


def test_projection_stops_when_the_plugin_needs_whole_bodies():
    harness = Harness(lambda event, ctx: ctx.emit("out", event.json()))
    for _ in range(4):
        harness.run_batch([{"a": 1}, {"a": 2}])
    assert harness._ctx.wanted_fields == []


def test_window_and_join_kinds_use_the_projection_too():
    def fold(acc, event, ctx):
        acc["sum"] = acc.get("sum", 0) + event.json()["v"]
        return acc

    for projection in (True, False):
        harness = WindowHarness(init=dict, fold=fold, finish=lambda acc, w, ctx: None,
                                projection=projection)
        harness.fold({"k": 1}, 0, 10, [{"v": 1}, {"v": 2}])
        harness.fold({"k": 1}, 0, 10, [{"v": 3}, {"w": 0, "v": 4}])
        assert harness.accumulator({"k": 1}, 0, 10) == {"sum": 10}
        assert harness._ctx.wanted_fields == ["v"]

    def enrich(left, right, ctx):
        ctx.emit("rows", {"id": left.json()["id"], "name": right and right.json()["name"]})

    for projection in (True, False):
        harness = JoinHarness(enrich, projection=projection)
        assert harness.pair({"id": 1}, {"name": "x"}).json("rows") == [{"id": 1, "name": "x"}]
        assert harness.pair({"id": 2}, None).json("rows") == [{"id": 2, "name": None}]
        assert harness._ctx.wanted_fields == ["id", "name"]


def test_the_harness_projects_as_the_host_does():
    batch = _batch([TestEvent(b'{"a": 1, "b" : "x\\"y", "c": [1, {"d": 2}]}'), TestEvent(b"[1]"),
                    TestEvent(b'{"a": NaN}')], project=["c", "b", "z"])
    assert batch.field_names == ["c", "b", "z"]
    assert batch.projected == bytes([1, 0, 0])  # packed `bools`
    ends = _unpacked("I", batch.field_ends)  # packed `u32s`
    texts = [batch.field_values[s:e] for s, e in zip([0, *[end + 1 for end in ends[:-1]]], ends)]
    assert texts == [b'[1, {"d": 2}]', b'"x\\"y"', b"", b"", b"", b"", b"", b"", b""]
    # Entries separated by one comma: one JSON array without its brackets.
    assert batch.field_values == b'[1, {"d": 2}],"x\\"y",,,,,,,'



def test_readings_that_all_have_the_fields_give_the_same_answers():
    """Every event projected with every field: the batch's values are parsed in one go."""
    readings = [TestEvent({"DeviceId": f"d{i % 3}", "Temperature": i * 1.5, "Humidity": i,
                           "Where": "b\u00e4r" if i % 2 else "x\\y"}, key=f"d{i % 3}", time=i)
                for i in range(20)]

    def rule(event, ctx):
        reading = event.json()
        last = ctx.get(reading["DeviceId"])
        ctx.emit("out", {"d": reading["DeviceId"], "t": reading["Temperature"],
                         "h": reading["Humidity"], "w": reading["Where"], "last": last})
        ctx.put(reading["DeviceId"], {"temperature": reading["Temperature"], "time": event.time})

    with_projection, without = Harness(rule), Harness(rule, projection=False)
    for harness in (with_projection, without):
        harness.run_batch(readings[:5])
    assert with_projection._ctx.wanted_fields == ["DeviceId", "Humidity", "Temperature", "Where"]
    batch = _batch(readings[5:], project=with_projection._ctx.wanted_fields)
    ends = _unpacked("I", batch.field_ends)
    assert batch.projected == bytes([1]) * 15 and len(ends) == 15 * 4 and b"" not in [
        batch.field_values[s:e] for s, e in zip([0, *[end + 1 for end in ends[:-1]]], ends)]
    assert len(json.loads(b"[" + batch.field_values + b"]")) == 15 * 4
    assert (with_projection.run_batch(readings[5:]).records
            == without.run_batch(readings[5:]).records)
    assert with_projection.state_json == without.state_json


def test_batches_are_freed_without_the_cycle_collector():
    import gc

    def read(event, ctx):
        ctx.emit("out", {"a": event.json()["a"]})

    harness = Harness(read)
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            harness.run_batch([{"a": 1, "b": 2}, {"a": 2}])
        alive = sum(type(o) is weir._Batch for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive <= 1
