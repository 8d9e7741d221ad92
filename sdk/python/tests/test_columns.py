"""The packed columns of `wit/plugin.wit` (`u32s`, `u64s`, `s64s`, `u16s`, `bools`: bytes of
little-endian numbers) as the component reads and writes them: batches, output batches, fold
requests and responses, state writes and cache starts (`pytest sdk/python`). The columns are
written and read here with `struct` and "<", independently of the SDK's `array` code."""

import dataclasses
import importlib
import struct
import sys
import types as pytypes
from types import SimpleNamespace

import pytest

import weir
from weir.testing import Harness, TestEvent, _batch


def le(code, numbers):
    numbers = list(numbers)
    return struct.pack(f"<{len(numbers)}{code}", *numbers)


def read(code, data):
    width = struct.calcsize(code)
    assert type(data) is bytes and len(data) % width == 0, data
    return list(struct.unpack(f"<{len(data) // width}{code}", data))


def records(emitted):
    numbers = read("I", emitted)
    assert len(numbers) % 4 == 0
    return list(zip(*[iter(numbers)] * 4))


def emit_and_forward(event, ctx):
    reading = event.json()
    if reading.get("alert"):
        ctx.emit("alerts", {"id": reading["id"]})
    if reading.get("raw"):
        ctx.emit_raw("raw", "\u00e9t\u00e9")
    ctx.forward("rows")
    if reading.get("reject"):
        raise weir.Reject("no")


def test_an_output_batch_emitted_column_holds_four_u32s_per_record_in_order():
    harness = Harness(emit_and_forward)
    batch = _batch([TestEvent(b) for b in (
        {"id": 0, "alert": True},
        {"id": 1, "alert": True, "raw": True, "reject": True},  # its records are taken back
        {"id": 2},
        {"id": 3, "raw": True, "alert": True},
    )])
    targets, payloads, emitted, rejected = weir.run_transform(harness._ctx, emit_and_forward,
                                                              batch)
    assert type(payloads) is bytes and type(emitted) is bytes
    assert len(emitted) == 16 * 6
    first = len(b'{"id":0}')
    third = first + len(b'{"id":3}')
    end = third + len("\u00e9t\u00e9".encode())
    assert targets == ["alerts", "rows", "raw"]
    # (event, target, payload_end, forward)
    assert records(emitted) == [
        (0, 0, first, 0), (0, 1, first, 1),
        (2, 1, first, 1),
        (3, 0, third, 0), (3, 2, end, 0), (3, 1, end, 1),
    ]
    assert payloads == b'{"id":0}{"id":3}' + "\u00e9t\u00e9".encode()
    assert rejected == [(1, "no")]


def test_nothing_emitted_is_an_empty_column_of_bytes():
    harness = Harness(lambda event, ctx: None)
    result = weir.run_transform(harness._ctx, lambda event, ctx: None, _batch([TestEvent({})]))
    assert result[1] == b"" and type(result[1]) is bytes
    assert result[2] == b"" and type(result[2]) is bytes


def test_wide_and_negative_numbers_of_a_batch_are_read_whole():
    seen = []

    def look(event, ctx):
        seen.append((event.position, event.time, event.enqueued_time, event.key, event.source,
                     event.text))
        ctx.info("seen")

    big = 2**64 - 2
    events = [TestEvent("a", key="k\u00e9", time=-(2**40) - 1, enqueued_time=2**33 + 7,
                        source="left"),
              TestEvent("bc", time=2**62, enqueued_time=-1, source="right"),
              TestEvent("", key="z", time=-1, enqueued_time=0)]
    batch = _batch(events, first_position=big - 1)
    assert read("Q", batch.positions) == [big - 1, big, big + 1]
    assert read("q", batch.event_times) == [-(2**40) - 1, 2**62, -1]
    assert read("H", batch.event_sources) == [0, 1, 2]
    harness = Harness(look)
    weir.run_transform(harness._ctx, look, batch)
    assert seen == [(big - 1, -(2**40) - 1, 2**33 + 7, "k\u00e9", "left", "a"),
                    (big, 2**62, -1, None, "right", "bc"),
                    (big + 1, -1, 0, "z", "", "")]
    # A log record's position comes from the positions column.
    assert [fields[0] for _, _, fields in harness.logs] == [
        ("position", str(big - 1)), ("position", str(big)), ("position", str(big + 1))]


def test_state_writes_reach_the_host_as_packed_ends_and_delete_flags():
    def write(event, ctx):
        for key, value in event.json().items():
            if value is None:
                ctx.delete(key)
            else:
                ctx.put(key, value)

    harness = Harness(write, state={"gone": 1})
    calls = []
    host = harness._ctx._host
    original = host.state_write_batch

    def capture(*columns):
        calls.append(columns)
        original(*columns)

    host.state_write_batch = capture
    harness.run_batch([{"a": 1, "gone": None}, {"cl\u00e9": "\u00e9", "b": [1, 2]}])
    ((keys, key_ends, values, value_ends, deletes),) = calls
    assert all(type(column) is bytes for column in calls[0])
    assert keys == "agonecl\u00e9b".encode()
    assert read("I", key_ends) == [1, 5, 9, 10]  # byte offsets: "é" is two bytes
    assert values == '1"\u00e9"[1,2]'.encode()
    assert read("I", value_ends) == [1, 1, 5, 10]
    assert deletes == bytes([0, 1, 0, 0])
    assert harness.state == {"a": 1, "cl\u00e9": "\u00e9", "b": [1, 2]}


def test_a_cache_start_is_read_from_packed_columns():
    def count(event, ctx):
        ctx.emit("seen", {"a": ctx.get("a"), "b": ctx.get("b", "none")})

    harness = Harness(count)
    start = SimpleNamespace(
        entries=SimpleNamespace(keys=b"ab", key_ends=le("I", [1, 2]), values=b"[7]",
                                value_ends=le("I", [3, 3]), deletes=bytes([0, 1])),
        whole=True)
    harness._ctx._host.state_check_cache = lambda: start
    # The whole state came with the cache start: no key is asked for.
    assert harness.run({}).json("seen") == [{"a": [7], "b": "none"}]
    assert harness.state_calls == 0

    # A cache start whose columns disagree is not used: keys are asked for.
    harness = Harness(count, state={"a": 1})
    start.entries.deletes = bytes([0])
    harness._ctx._host.state_check_cache = lambda: start
    assert harness.run({}).json("seen") == [{"a": 1, "b": "none"}]
    assert harness.state_calls == 2


def test_fold_requests_and_responses_use_packed_columns():
    def fold(acc, event, ctx):
        acc.append(event.json()["v"])
        return acc

    plugin = SimpleNamespace(init=list, fold=fold, finish=None)
    harness = Harness(lambda event, ctx: None)
    events = _batch([TestEvent({"v": v}) for v in (10, 11, 12)])
    request = SimpleNamespace(
        events=events,
        windows=[SimpleNamespace(key="{}", start=0, end=1),
                 SimpleNamespace(key="{}", start=1, end=2)],
        accumulators=b"[1]", accumulator_ends=le("I", [3, 3]),
        members=le("I", [2, 0, 1, 2]), member_ends=le("I", [2, 4]))
    accumulators, ends, rejected = weir.run_fold(harness._ctx, request, plugin)
    assert type(accumulators) is bytes and type(ends) is bytes
    assert accumulators == b"[1,12,10][11,12]"
    assert read("I", ends) == [9, 16]
    assert rejected == []

    finish = SimpleNamespace(windows=request.windows, accumulators=accumulators,
                             accumulator_ends=ends)
    plugin.finish = lambda acc, window, ctx: ctx.emit("sums", sum(acc))
    targets, payloads, emitted, _ = weir.run_finish(harness._ctx, finish, plugin)
    assert (targets, payloads, records(emitted)) == (["sums"], b"2323", [(0, 0, 2, 0),
                                                                         (1, 0, 4, 0)])


def test_a_malformed_column_from_the_host_fails_with_a_clear_error():
    harness = Harness(emit_and_forward)
    batch = _batch([TestEvent({"id": 1}), TestEvent({"id": 2})])
    batch.body_ends = batch.body_ends[:-1]
    with pytest.raises(ValueError, match="body-ends"):
        weir.run_transform(harness._ctx, emit_and_forward, batch)
    batch = _batch([TestEvent({"id": 1}), TestEvent({"id": 2})])
    batch.positions = batch.positions[:12]
    with pytest.raises(ValueError, match="positions"):
        weir.run_transform(harness._ctx, emit_and_forward, batch)
    batch = _batch([TestEvent({"id": 1})])
    batch.event_times = [0]  # the layout of 0.1.0: a list
    with pytest.raises(ValueError, match="event-times"):
        weir.run_transform(harness._ctx, emit_and_forward, batch)
    # A projection the SDK cannot read is left unused: the bodies are parsed.
    batch = _batch([TestEvent({"id": 1, "alert": True})], project=["id", "alert"])
    batch.field_ends = batch.field_ends[:-2]
    targets, payloads, emitted, _ = weir.run_transform(harness._ctx, emit_and_forward, batch)
    assert payloads == b'{"id":1}' and len(records(emitted)) == 2


def test_columns_are_little_endian_whatever_the_machine(monkeypatch):
    """On a big-endian machine the SDK swaps bytes: forcing the other order reads and writes
    big-endian bytes, which shows the swap is applied both ways."""
    numbers = [1, 2**31 + 5, 2**32 - 1]
    assert weir._unpack(le("I", numbers), weir._U32, "c") == numbers
    assert weir._pack(weir._U32, numbers) == le("I", numbers)
    assert weir._unpack(le("q", [-2, 2**40]), weir._S64, "c") == [-2, 2**40]
    monkeypatch.setattr(weir, "_SWAP", not weir._SWAP)
    assert weir._unpack(struct.pack(">3I", *numbers), weir._U32, "c") == numbers
    assert weir._pack(weir._U32, numbers) == struct.pack(">3I", *numbers)
    assert weir._unpack(struct.pack(">2q", -2, 2**40), weir._S64, "c") == [-2, 2**40]


# ----- The component side (`weir._guest`), with bindings as componentize-py generates them -----


def _strict(name, fields):
    """A dataclass like a componentize-py binding's, which checks each `list<u8>` field is
    exactly `bytes`, as componentize-py's lowering does (it panics otherwise)."""
    cls = dataclasses.make_dataclass(name, [f for f, _ in fields])
    binary = [f for f, kind in fields if kind is bytes]

    def check(self):
        for field in binary:
            value = getattr(self, field)
            if type(value) is not bytes:
                raise TypeError(f"{name}.{field} is a {type(value).__name__}, not bytes")

    cls.__post_init__ = check
    return cls


@pytest.fixture
def guest(monkeypatch):
    writes = []
    imports = pytypes.ModuleType("wit_world.imports")
    module = {name: pytypes.ModuleType(f"wit_world.imports.{name}")
              for name in ("config", "log", "metrics", "reference", "state", "types")}
    for name, value in module.items():
        setattr(imports, name, value)
    module["types"].OutputBatch = _strict("OutputBatch", [
        ("targets", list), ("payloads", bytes), ("emitted", bytes), ("rejected", list),
        ("wanted_fields", list)])
    module["types"].FoldResponse = _strict("FoldResponse", [
        ("accumulators", bytes), ("accumulator_ends", bytes), ("rejected", list),
        ("wanted_fields", list)])
    module["types"].Rejection = _strict("Rejection", [("event", int), ("reason", str)])
    module["state"].Writes = _strict("Writes", [
        ("keys", bytes), ("key_ends", bytes), ("values", bytes), ("value_ends", bytes),
        ("deletes", bytes)])
    module["state"].get = lambda key: None
    module["state"].check_cache = lambda: None
    module["state"].write_batch = writes.append
    module["metrics"].counter_add = lambda name, delta: None
    module["config"].get = lambda: "{}"
    module["reference"].lookup = lambda table, key: None
    module["log"].Level = SimpleNamespace(TRACE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4)
    module["log"].write = lambda level, message, fields: None
    package = pytypes.ModuleType("wit_world")
    package.imports = imports
    monkeypatch.setitem(sys.modules, "wit_world", package)
    monkeypatch.setitem(sys.modules, "wit_world.imports", imports)
    for name, value in module.items():
        monkeypatch.setitem(sys.modules, f"wit_world.imports.{name}", value)
    monkeypatch.delitem(sys.modules, "weir._guest", raising=False)
    component = importlib.import_module("weir._guest")
    monkeypatch.setattr(component, "_tune_gc", lambda: None)  # keep this process's collector
    yield component, writes
    sys.modules.pop("weir._guest", None)


def test_the_component_hands_bytes_to_the_host(guest, monkeypatch):
    component, writes = guest

    def process(event, ctx):
        ctx.put(event.json()["k"], 1)
        ctx.emit("out", {"k": event.json()["k"]})
        ctx.forward("rows")

    monkeypatch.setattr(weir.PLUGIN, "transform", process)
    output = component.process(_batch([TestEvent({"k": "a"}), TestEvent({"k": "b"})]))
    assert records(output.emitted) == [(0, 0, 9, 0), (0, 1, 9, 1), (1, 0, 18, 0),
                                       (1, 1, 18, 1)]
    assert output.payloads == b'{"k":"a"}{"k":"b"}' and output.targets == ["out", "rows"]
    (written,) = writes
    assert (written.keys, read("I", written.key_ends), written.deletes) == (
        b"ab", [1, 2], b"\x00\x00")

    monkeypatch.setattr(weir.PLUGIN, "transform", None)
    monkeypatch.setattr(weir.PLUGIN, "init", list)
    monkeypatch.setattr(weir.PLUGIN, "fold", lambda acc, event, ctx: acc + [event.json()["k"]])
    response = component.fold(SimpleNamespace(
        events=_batch([TestEvent({"k": "a"})]), windows=[SimpleNamespace(key="{}", start=0,
                                                                         end=1)],
        accumulators=b"", accumulator_ends=le("I", [0]), members=le("I", [0]),
        member_ends=le("I", [1])))
    assert (response.accumulators, read("I", response.accumulator_ends)) == (b'["a"]', [5])
