"""Run a plugin's functions natively (pytest), through the same runners as the component.

    from weir.testing import Harness

    def test_alerts_when_too_hot():
        harness = Harness(process, config={"max_temperature": 80})
        outcome = harness.run({"DeviceId": "d1", "Temperature": 91.5})
        assert outcome.json("alerts")[0]["Temperature"] == 91.5
        assert outcome.forwarded_to("rows")
        assert harness.run(b"{oops").rejection.startswith("malformed JSON")

The harness lays events out in a batch exactly as the host does (bodies and keys concatenated,
the numbers of each field in a packed column: bytes of little-endian numbers), runs it through the
runner the component's export runs (the same state cache, the same rollback of a rejected event,
the same output encoding), and decodes and checks the output and the state writes as the host
does. Keyed state, counters, logs, the stage config and reference tables live in memory; keyed
state is kept as the host keeps it, JSON text per key.
"""

import json
import re
import struct
from types import SimpleNamespace

import weir

__all__ = ["Harness", "JoinHarness", "Outcome", "TestEvent", "WindowHarness"]

#: Most keys a state may have for a stale cache to start again from all of it (as the host).
WHOLE_STATE_KEYS = 16_384


class TestEvent:
    """One input event for a harness: a body (dict/list → JSON, str, or bytes) and metadata."""

    __test__ = False  # not a pytest test class

    def __init__(self, body, key=None, time=0, enqueued_time=None, properties=None, source=None):
        if isinstance(body, (dict, list, int, float, bool)) or body is None:
            body = json.dumps(body)
        self.body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        self.key = key
        self.time = time
        self.enqueued_time = time if enqueued_time is None else enqueued_time
        self.properties = dict(properties or {})
        self.source = source


def _event(value):
    return value if isinstance(value, TestEvent) else TestEvent(value)


# Packed columns as the host writes and reads them (`wit/plugin.wit`, `columns`): `struct` codes
# of little-endian numbers, written here independently of the SDK's own `array` code.
_WIDTHS = {"I": 4, "Q": 8, "q": 8, "H": 2, "B": 1}


def _packed(code, numbers):
    """The packed column (little-endian bytes) of `numbers`: `code` "I" for `u32s`, "Q" `u64s`,
    "q" `s64s`, "H" `u16s`, "B" `bools` (0 or 1)."""
    numbers = list(numbers)
    return struct.pack(f"<{len(numbers)}{code}", *numbers)


def _unpacked(code, data, column="column"):
    """The numbers of a packed column (see `_packed`); a ValueError, as the host's error, when
    its length is not a whole number of numbers or it is not bytes."""
    if type(data) is not bytes:
        raise ValueError(f"`{column}` is a {type(data).__name__}, not bytes (a packed column)")
    width = _WIDTHS[code]
    if len(data) % width:
        raise ValueError(f"`{column}` has {len(data)} bytes, not a multiple of {width}")
    return list(struct.unpack(f"<{len(data) // width}{code}", data))


def _flags(data, column):
    """A `bools` column as the host reads it: any byte but 0 is true."""
    return [flag != 0 for flag in _unpacked("B", data, column)]


class _Memory:
    """The host's side in memory: committed state (bytes → JSON bytes) and what it tracks."""

    def __init__(self, config, state, reference):
        self.state = {k.encode(): json.dumps(v, separators=(",", ":")).encode()
                      for k, v in (state or {}).items()}
        self.counters = {}
        self.logs = []
        self.config = json.dumps(config or {})
        self.reference = {(t, str(k)): json.dumps(row) for (t, k), row in (reference or {}).items()}
        self.recent = []
        self.cache_holder = 0
        self.instances = 0
        self.state_calls = 0


class _MemoryHost:
    """One instance's view of the memory host (the imports of the component)."""

    def __init__(self, memory):
        memory.instances += 1
        self.memory = memory
        self.id = memory.instances

    def state_get(self, key):
        self.memory.state_calls += 1
        return self.memory.state.get(bytes(key))

    def state_write_batch(self, keys, key_ends, values, value_ends, deletes):
        memory = self.memory
        memory.state_calls += 1
        # The component hands `bytes` over for every `list<u8>` (componentize-py takes nothing
        # else), the packed columns included.
        for name, data in (("keys", keys), ("values", values)):
            if type(data) is not bytes:
                raise ValueError(f"`{name}` is a {type(data).__name__}, not bytes")
        key_ends = _unpacked("I", key_ends, "key-ends")
        value_ends = _unpacked("I", value_ends, "value-ends")
        deletes = _flags(deletes, "deletes")
        if not len(key_ends) == len(value_ends) == len(deletes):
            raise ValueError(f"writes of {len(key_ends)} keys, {len(value_ends)} values and "
                             f"{len(deletes)} delete flags")
        memory.recent = []
        key_start = value_start = 0
        for index, key_end in enumerate(key_ends):
            key = bytes(keys[key_start:key_end])
            memory.recent.append(key)
            if deletes[index]:
                memory.state.pop(key, None)
            else:
                memory.state[key] = bytes(values[value_start:value_ends[index]])
            key_start, value_start = key_end, value_ends[index]

    def state_check_cache(self):
        memory = self.memory
        if memory.cache_holder == self.id:
            return None
        memory.cache_holder = self.id
        whole = len(memory.state) <= WHOLE_STATE_KEYS
        keys = list(memory.state) if whole else list(memory.recent)
        key_buffer, value_buffer = bytearray(), bytearray()
        key_ends, value_ends, deletes = [], [], []
        for key in keys:
            value = memory.state.get(key)
            key_buffer += key
            key_ends.append(len(key_buffer))
            value_buffer += value or b""
            value_ends.append(len(value_buffer))
            deletes.append(value is None)
        entries = SimpleNamespace(keys=bytes(key_buffer), key_ends=_packed("I", key_ends),
                                  values=bytes(value_buffer), value_ends=_packed("I", value_ends),
                                  deletes=_packed("B", deletes))
        return SimpleNamespace(entries=entries, whole=whole)

    def counter_add(self, name, delta):
        self.memory.counters[name] = self.memory.counters.get(name, 0) + delta

    def log(self, level, message, fields):
        self.memory.logs.append((level, message, list(fields)))

    def config(self):
        return self.memory.config

    def reference_lookup(self, table, key):
        return self.memory.reference.get((table, key))


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCAN = json.JSONDecoder().scan_once


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _field_texts(body, names):
    """The JSON text of each of `names` in `body` as the host projects it (the value's bytes as
    they stand in the body; b"" for a field it does not have), or None when the body is not a
    JSON object (the host does not project it)."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return None
    if type(value) is not dict:
        return None
    spans = {}
    at = _WHITESPACE.match(text, 0).end() + 1  # past "{"
    while True:
        at = _WHITESPACE.match(text, at).end()
        if text[at] == "}":
            break
        key, at = json.decoder.scanstring(text, at + 1)
        at = _WHITESPACE.match(text, at).end() + 1  # past ":"
        start = _WHITESPACE.match(text, at).end()
        _, at = _SCAN(text, start)
        spans[key] = text[start:at].encode("utf-8")  # the last of a key repeated, as parsed
        at = _WHITESPACE.match(text, at).end()
        if text[at] == "}":
            break
        at += 1  # past ","
    return [spans.get(name, b"") for name in names]


def _batch(events, partition=0, first_position=0, project=()):
    """`events` in the WIT batch layout, as the host lays them out (every column of numbers
    packed: `body-ends`, `key-ends`, `field-ends` as `u32s`, `positions` `u64s`, `event-times`
    and `enqueued-times` `s64s`, `event-sources` `u16s`, `projected` `bools`); with the fields
    `project` projected out of the bodies that are JSON objects, as the host does for a plugin
    that asked for them (`wanted-fields`)."""
    bodies, keys = bytearray(), bytearray()
    # The columns are filled as lists, then packed.
    batch = SimpleNamespace(partition=partition, body_ends=[], positions=[], event_times=[],
                            enqueued_times=[], key_ends=[], properties=[], sources=[],
                            event_sources=[], field_names=list(project), field_values=b"",
                            field_ends=[], projected=[])
    values = bytearray()
    for event in events if project else ():  # No projection: its lists are empty.
        texts = _field_texts(event.body, batch.field_names)
        batch.projected.append(texts is not None)
        for text in texts or [b""] * len(batch.field_names):
            if batch.field_ends:
                values += b","  # entries separated by one comma
            values += text
            batch.field_ends.append(len(values))
    batch.field_values = bytes(values)
    for index, event in enumerate(events):
        bodies += event.body
        batch.body_ends.append(len(bodies))
        keys += (event.key or "").encode("utf-8")
        batch.key_ends.append(len(keys))
        batch.positions.append(first_position + index)
        batch.event_times.append(event.time)
        batch.enqueued_times.append(event.enqueued_time)
        for name, value in event.properties.items():
            batch.properties.append(SimpleNamespace(event=index, name=name, value=value))
        source = event.source or ""
        if source not in batch.sources:
            batch.sources.append(source)
        batch.event_sources.append(batch.sources.index(source))
    if all(not event.source for event in events):
        batch.sources, batch.event_sources = [], []
    batch.bodies, batch.keys = bytes(bodies), bytes(keys)
    for name, code in _BATCH_COLUMNS:
        setattr(batch, name, _packed(code, getattr(batch, name)))
    return batch


#: The packed columns of an `event-batch`, with their `struct` codes.
_BATCH_COLUMNS = (("body_ends", "I"), ("positions", "Q"), ("event_times", "q"),
                  ("enqueued_times", "q"), ("key_ends", "I"), ("event_sources", "H"),
                  ("field_ends", "I"), ("projected", "B"))


def _emitted(targets, payloads, emitted, events):
    """The records of an output's `emitted` column (`u32s`, four numbers per record: event,
    target, payload end, forward), checked as the host checks them."""
    for name, data in (("payloads", payloads), ("emitted", emitted)):
        if type(data) is not bytes:
            raise ValueError(f"`{name}` is a {type(data).__name__}, not bytes")
    numbers = _unpacked("I", emitted, "emitted")
    if len(numbers) % 4:
        raise ValueError(f"an emitted column of {len(emitted)} bytes, not a whole number of "
                         f"16-byte records")
    records = list(zip(*[iter(numbers)] * 4))
    start = 0
    for event, target, end, forward in records:
        if forward > 1:
            raise ValueError(f"a record whose forward flag is {forward} (0 or 1)")
        if event >= events:
            raise ValueError(f"a record for event {event} of a batch of {events}")
        if target >= len(targets):
            raise ValueError(f"a record for target {target} of {len(targets)}")
        if end < start or end > len(payloads):
            raise ValueError(f"payload end {end} after {start} in a buffer of "
                             f"{len(payloads)} bytes")
        start = end
    return records


class Outcome:
    """What the plugin produced for one run: records per output, and rejections."""

    def __init__(self, result, inputs):
        targets, payloads, emitted, rejected = result
        self.records = []  # (input index, output, bytes, forwarded)
        start = 0
        for event, target, end, forward in _emitted(targets, payloads, emitted, len(inputs)):
            if forward:
                data = inputs[event]
            else:
                data = payloads[start:end]
                start = end
            self.records.append((event, targets[target], bytes(data), forward == 1))
        #: (input index, reason) of every rejected input.
        self.rejections = list(rejected)

    def outputs(self):
        """The names of the outputs that received records."""
        return sorted({output for _, output, _, _ in self.records})

    def raw(self, output):
        """The records sent to `output`, as bytes."""
        return [data for _, name, data, _ in self.records if name == output]

    def json(self, output):
        """The records sent to `output`, parsed from JSON."""
        return [json.loads(data) for data in self.raw(output)]

    def forwarded_to(self, output):
        """Whether an input was forwarded unchanged to `output`."""
        return any(name == output and forward for _, name, _, forward in self.records)

    @property
    def rejection(self):
        """The reason the (first) input was rejected, or None."""
        return self.rejections[0][1] if self.rejections else None


class _Base:
    def __init__(self, config=None, state=None, reference=None, projection=True):
        self._memory = _Memory(config, state, reference)
        self._ctx = weir.Context(_MemoryHost(self._memory))
        self._position = 0
        #: Whether batches carry the fields the plugin's last output asked for, as the host
        #: does (False: never, as a host without projection); `project` forces a list.
        self.projection = projection
        self.project = None

    def _projected(self):
        """The fields the next batch carries."""
        if self.project is not None:
            return list(self.project)
        return list(self._ctx.wanted_fields) if self.projection else []

    def new_instance(self):
        """Replaces the plugin instance (as a hot swap or a trap does): its cache starts again."""
        self._ctx = weir.Context(_MemoryHost(self._memory))

    @property
    def state(self):
        """The committed keyed state, parsed: {key: value}."""
        return {k.decode(): json.loads(v) for k, v in self._memory.state.items()}

    @property
    def state_json(self):
        """The committed keyed state as the host stores it: {key: JSON text}."""
        return {k.decode(): v.decode() for k, v in self._memory.state.items()}

    @property
    def counters(self):
        """Counters summed so far."""
        return dict(self._memory.counters)

    @property
    def logs(self):
        """(level, message, fields) of every log record."""
        return list(self._memory.logs)

    @property
    def state_calls(self):
        """Calls to the host's keyed state (`get` and `write-batch`) so far."""
        return self._memory.state_calls


class Harness(_Base):
    """Runs a transform function (`@weir.transform`) on events."""

    def __init__(self, function, config=None, state=None, reference=None, projection=True):
        super().__init__(config, state, reference, projection)
        self.function = function

    def run(self, event):
        """Runs one event (a TestEvent, or a body: dict, str or bytes) as a batch of one."""
        return self.run_batch([event])

    def run_batch(self, events):
        """Runs the events as one batch."""
        events = [_event(e) for e in events]
        batch = _batch(events, first_position=self._position, project=self._projected())
        self._position += len(events)
        result = weir.run_transform(self._ctx, self.function, batch)
        return Outcome(result, [e.body for e in events])


class WindowHarness(_Base):
    """Folds and finishes a window aggregate (`@weir.init/fold/finish`) as the host does: one
    fold call per batch, the accumulator stored as JSON between calls. The functions are the
    ones the module registered with `@weir.init/fold/finish`, unless given here."""

    def __init__(self, config=None, state=None, reference=None, init=None, fold=None,
                 finish=None, projection=True):
        super().__init__(config, state, reference, projection)
        self._plugin = SimpleNamespace(init=init or weir.PLUGIN.init,
                                       fold=fold or weir.PLUGIN.fold,
                                       finish=finish or weir.PLUGIN.finish)
        #: JSON text of each window's accumulator, by (key JSON, start, end).
        self.accumulators = {}

    def fold(self, key, start, end, events):
        """Folds `events` into the window (key: dict of the grouped fields); returns the
        rejections as (index, reason)."""
        events = [_event(e) for e in events]
        window_key = json.dumps(key, separators=(",", ":"))
        stored = self.accumulators.get((window_key, start, end), b"")
        request = SimpleNamespace(
            events=_batch(events, first_position=self._position, project=self._projected()),
            windows=[SimpleNamespace(key=window_key, start=start, end=end)],
            accumulators=stored, accumulator_ends=_packed("I", [len(stored)]),
            members=_packed("I", range(len(events))), member_ends=_packed("I", [len(events)]))
        self._position += len(events)
        accumulators, ends, rejected = weir.run_fold(self._ctx, request, self._plugin)
        if type(accumulators) is not bytes:
            raise ValueError(f"`accumulators` is a {type(accumulators).__name__}, not bytes")
        ends = _unpacked("I", ends, "accumulator-ends")
        if len(ends) != 1 or ends[0] > len(accumulators):
            raise ValueError(f"accumulator ends {ends} for 1 group in {len(accumulators)} bytes")
        self.accumulators[(window_key, start, end)] = accumulators[:ends[0]]
        return list(rejected)

    def accumulator(self, key, start, end):
        """The window's accumulator, parsed (None before any fold)."""
        stored = self.accumulators.get((json.dumps(key, separators=(",", ":")), start, end))
        return json.loads(stored) if stored else None

    def finish(self, key, start, end):
        """Closes the window: its outputs (an Outcome; `rejection` when finish raised)."""
        window_key = json.dumps(key, separators=(",", ":"))
        stored = self.accumulators.pop((window_key, start, end), b"")
        request = SimpleNamespace(windows=[SimpleNamespace(key=window_key, start=start, end=end)],
                                  accumulators=stored,
                                  accumulator_ends=_packed("I", [len(stored)]))
        return Outcome(weir.run_finish(self._ctx, request, self._plugin), [b""])

    def window(self, key, start, end, events):
        """Folds `events` in one batch and closes the window: its Outcome."""
        self.fold(key, start, end, events)
        return self.finish(key, start, end)


class JoinHarness(_Base):
    """Runs a join function (`@weir.join`) on pairs."""

    def __init__(self, function, config=None, state=None, reference=None, projection=True):
        super().__init__(config, state, reference, projection)
        self.function = function

    def pair(self, left, right):
        """Enriches one pair (either side may be None): its Outcome (forwards decode to the
        left event's body, else the right's)."""
        events, pair = [], SimpleNamespace(left=None, right=None)
        for side in ("left", "right"):
            value = left if side == "left" else right
            if value is not None:
                setattr(pair, side, len(events))
                events.append(_event(value))
        request = SimpleNamespace(events=_batch(events, first_position=self._position,
                                                project=self._projected()),
                                  pairs=[pair])
        self._position += len(events)
        return Outcome(weir.run_join(self._ctx, request, self.function), [events[0].body])
