"""Write Weir stream plugins in Python, built into WebAssembly components with componentize-py.

A plugin is a module with one function under a decorator:

    import weir

    @weir.transform
    def process(event, ctx):
        reading = event.json()                  # the body as a dict; malformed JSON rejects
        if reading["Temperature"] > 80:
            ctx.emit("alerts", {"DeviceId": reading["DeviceId"]})
        ctx.forward("rows")                     # the input, unchanged and uncopied

- `@weir.transform`: `fn(event, ctx)`, called for every event.
- `@weir.init`, `@weir.fold`, `@weir.finish`: a window aggregate. `init()` gives a new window's
  accumulator, `fold(acc, event, ctx)` returns it with the event folded in, `finish(acc, window,
  ctx)` emits the outputs of a closed window. Accumulators are stored as JSON.
- `@weir.join`: `fn(left, right, ctx)`, called for every joined pair (a side is `None` when an
  event comes alone).

Raising `weir.Reject(reason)` (or any other `Exception`) rejects the event: what it emitted and
wrote to keyed state is discarded and it goes to the dead-letter sink with the reason. Keyed state
is stored as compact JSON text under string keys, the form the Rust SDK stores, so a stage can be
swapped between a Rust, a Python and a JavaScript version with its state.

The batch layout of the WIT contract is hidden: the runners here walk a batch once, the keyed state
is cached in the instance and reaches the host in one `write-batch` call per batch, and
`check-cache` tells at the start of each batch whether the cache still holds (see `_StateCache`).
The contract's columns of numbers (one per event, record or write) are packed columns, bytes of
little-endian numbers, read and written here once per batch by C loops (see `_unpack`, `_pack`).
`weir.testing` runs the same runners natively, without building a component.
"""

import json
import sys
from array import array as _array
from functools import reduce as _reduce
from itertools import accumulate as _accumulate
from itertools import repeat as _repeat
from operator import add as _add
from operator import iconcat as _iconcat
from operator import itemgetter as _itemgetter
from operator import not_ as _not

__all__ = [
    "Context",
    "Event",
    "Level",
    "Reject",
    "Window",
    "finish",
    "fold",
    "init",
    "join",
    "transform",
]

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_loads = json.loads


def _c_encoder():
    """A maker of the C encoder `_ENCODER.encode` itself uses (without its two Python frames per
    value), or None. The encoder is made once and used again while it succeeds (its table of the
    containers being serialised, which finds circular references, is empty again after every
    value it finished; after a failure it is made anew: `_renew_encoder`). Used only when it gives
    `encode`'s text on a sample and refuses what `encode` refuses (it is an internal of the
    `json` module), else `encode` is."""
    try:
        from json.encoder import c_make_encoder, encode_basestring

        default = _ENCODER.default

        def make():
            return c_make_encoder({}, default, encode_basestring, None, ":", ",", False, False,
                                  False)

        sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {"c": -0.1}}
        if _join(make()(sample, 0)) != _ENCODER.encode(sample):
            return None
        for bad in (float("nan"), {1j: 1}, object()):
            try:
                _join(make()([bad], 0))
            except (TypeError, ValueError):
                continue
            return None
        return make
    except Exception:  # noqa: BLE001 - any surprise: the public encoder
        return None


_join = "".join
_new_encoder = _c_encoder()
#: The C encoder in use, or None: `_ENCODER.encode` is. `put` and `emit` call it inline (a Python
#: frame fewer per value); whoever sees it fail calls `_renew_encoder`.
_encode = _new_encoder() if _new_encoder is not None else None


def _renew_encoder():
    """Replaces the C encoder after a failure (its table of containers may hold stale entries)."""
    global _encode
    if _new_encoder is not None:
        _encode = _new_encoder()


def _dumps(value):
    """`value` as JSON text, compact, refusing NaN and infinities (TypeError or ValueError)."""
    encode = _encode
    if encode is None:
        return _ENCODER.encode(value)
    try:
        return _join(encode(value, 0))
    except BaseException:
        _renew_encoder()
        raise

# The C scanner behind `json.loads`: it parses a value at an offset of a string, so every body is
# parsed straight from the batch's text, without slicing it out or detecting its encoding.
_scan = json.JSONDecoder().scan_once


class Reject(Exception):
    """Rejects the current event with a reason (it goes to the dead-letter sink)."""


class Level:
    """Severity of a log record."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


# ----- Packed columns -----
#
# Every column of the WIT contract with one number per event (or per record, or per write) is a
# packed column: a `list<u8>` of little-endian numbers of one width (`u32s`: 4 bytes, `u64s`: 8,
# `s64s`: 8 signed, `u16s`: 2, `bools`: 1 byte, 0 or 1). componentize-py hands a `list<u8>` over
# as one `bytes` object (and takes exactly `bytes` back), where it would lift and lower any other
# list one element at a time; the SDK turns a column into a list of numbers, or numbers into a
# column, with one C loop (`array`), once per batch.


def _typecode(width, signed):
    """The `array` type code of `width`-byte integers."""
    for code in "bhilq" if signed else "BHILQ":
        if _array(code).itemsize == width:
            return code
    raise ImportError(f"the `array` module has no {width}-byte integers")


_U16, _U32, _U64, _S64 = _typecode(2, False), _typecode(4, False), _typecode(8, False), \
    _typecode(8, True)
#: Whether numbers must be byte-swapped between this machine's order and the columns' (always
#: little-endian, as WebAssembly is; a native test may run on a big-endian machine).
_SWAP = sys.byteorder != "little"


def _unpack(data, code, column):
    """The numbers of packed column `data` (`bytes` of little-endian numbers of `array` type
    `code`) as a list. A length that is not a whole number of numbers is the host's bug: a
    ValueError that names `column`."""
    numbers = _array(code)
    if len(data) % numbers.itemsize:
        raise ValueError(f"invalid column `{column}` from the host: {len(data)} bytes, not a "
                         f"multiple of {numbers.itemsize}")
    try:
        numbers.frombytes(data)
    except TypeError:
        raise TypeError(f"invalid column `{column}` from the host: {type(data).__name__}, not "
                        f"the bytes of a packed column") from None
    if _SWAP:
        numbers.byteswap()
    return numbers.tolist()


def _pack(code, numbers):
    """The packed column (`bytes`, little-endian) of the list of ints `numbers`, of `array` type
    `code` (OverflowError when one does not fit)."""
    column = _array(code)
    column.fromlist(numbers)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _pack_emitted(records):
    """`output-batch.emitted`: the `(event, target, payload_end, forward)` tuples `records`, four
    `u32`s each (forward 0 or 1), concatenated into one list by one C loop and packed."""
    return _pack(_U32, _reduce(_iconcat, records, [])) if records else b""


# ----- Registration -----


class _Plugin:
    """The functions a plugin module registered, by kind."""

    def __init__(self):
        self.transform = None
        self.init = None
        self.fold = None
        self.finish = None
        self.join = None

    def kind(self):
        """`transform`, `window` or `join`: the kind of plugin registered (None if none)."""
        if self.transform is not None:
            return "transform"
        if self.fold is not None or self.finish is not None or self.init is not None:
            return "window"
        if self.join is not None:
            return "join"
        return None


PLUGIN = _Plugin()


def _register(slot, function):
    if not callable(function):
        raise TypeError(f"@weir.{slot} goes on a function")
    if getattr(PLUGIN, slot) is not None and getattr(PLUGIN, slot) is not function:
        raise TypeError(f"a plugin has one @weir.{slot} function")
    setattr(PLUGIN, slot, function)
    window = any(f is not None for f in (PLUGIN.init, PLUGIN.fold, PLUGIN.finish))
    if (PLUGIN.transform is not None) + window + (PLUGIN.join is not None) > 1:
        raise TypeError("a plugin is of one kind: transform, window (init/fold/finish) or join")
    return function


def transform(function):
    """Marks the plugin's transform function: `fn(event, ctx)`, called for every event."""
    return _register("transform", function)


def init(function):
    """Marks a window aggregate's `init()`: the accumulator of a window with no event yet."""
    return _register("init", function)


def fold(function):
    """Marks a window aggregate's `fold(acc, event, ctx)`: returns the accumulator with the event
    folded in (or None after changing `acc` in place)."""
    return _register("fold", function)


def finish(function):
    """Marks a window aggregate's `finish(acc, window, ctx)`: emits a closed window's outputs."""
    return _register("finish", function)


def join(function):
    """Marks a join enrichment's function: `fn(left, right, ctx)`, one side None when alone."""
    return _register("join", function)


# ----- Events -----


class _Batch:
    """What the events of one batch share: the WIT batch, its bodies decoded once (when they are
    ASCII, byte offsets are then character offsets), its packed columns decoded (`body-ends` at
    once, the others when first asked for: `column`), each body once parsed, and the fields the
    host projected out of the bodies (see `_project`)."""

    __slots__ = ("wit", "text", "ends", "starts", "columns", "parsed", "full", "sources",
                 "properties", "names", "unprojected", "reads")

    def __init__(self, wit, reads=None):
        self.wit = wit
        bodies = wit.bodies
        self.text = bodies.decode("ascii") if bodies.isascii() else None
        #: End offset of each body in `bodies` (the decoded `body-ends`).
        ends = self.ends = _unpack(wit.body_ends, _U32, "body-ends")
        count = len(ends)
        # Every column with one number per event must have one: checked here (lengths only) so
        # that a host's malformed batch fails the call with a clear error, not an event later.
        for name, width in (("positions", 8), ("event_times", 8), ("enqueued_times", 8),
                            ("key_ends", 4)):
            size = len(getattr(wit, name))
            if size != count * width:
                raise ValueError(f"invalid batch from the host: `{name.replace('_', '-')}` "
                                 f"holds {size} bytes, not {width} for each of its {count} "
                                 f"events")
        self.starts = [0, *ends[:-1]] if ends else []
        #: The packed columns decoded so far, by name (see `column`).
        self.columns = {}
        #: What `event.json()` returns, per event, once made (`_Fields` from the projection).
        self.parsed = [_UNPARSED] * len(ends)
        #: Each body parsed in full, per event, when something needed it.
        self.full = None
        self.sources = None
        self.properties = None
        #: The fields the host projected for this batch (empty: none).
        self.names = _NO_NAMES
        #: Indices of events the host did not project (their bodies are parsed).
        self.unprojected = None
        #: Where the fields the plugin reads are recorded (`_Reads`), or None.
        self.reads = reads

    def column(self, name, code):
        """The numbers of the batch's packed column `name` (an attribute of the WIT batch) of
        `array` type `code`, decoded when first asked for."""
        numbers = self.columns.get(name)
        if numbers is None:
            numbers = self.columns[name] = _unpack(getattr(self.wit, name), code,
                                                   name.replace("_", "-"))
        return numbers

    def body_value(self, index):
        """The body of event `index` parsed in full (cached); malformed JSON rejects it."""
        full = self.full
        if full is None:
            full = self.full = [_UNPARSED] * len(self.starts)
        value = full[index]
        if value is _UNPARSED:
            text, start, end = self.text, self.starts[index], self.ends[index]
            if text is not None:
                try:
                    value, stop = _scan(text, start)
                    if stop != end:
                        value = _UNPARSED  # Whitespace or garbage after it: see below.
                except (StopIteration, ValueError):
                    value = _UNPARSED
            if value is _UNPARSED:
                try:
                    value = _loads(self.wit.bodies[start:end])
                except ValueError as error:
                    raise Reject(f"malformed JSON: {error}") from None
            full[index] = value
        return value

    def parse(self, index, event):
        """What `event.json()` returns for an event the projection did not give."""
        value = self.body_value(index)
        if type(value) is dict:
            reads = self.reads
            if reads is not None and reads.learning:
                # Nothing read yet: each field read is recorded as it is taken from the body.
                fields = _Fields(_LEARNING)
                _set_event(fields, event)
            else:
                fields = _Fields(value)
                _set_event(fields, None)
            value = fields
        self.parsed[index] = value
        return value


_NO_NAMES = frozenset()


_time = property(_itemgetter(0), doc="Event time, milliseconds since the Unix epoch (the "
                 "pipeline's TIMESTAMP BY).")


class Event(tuple):
    """One input event: its body (JSON, parsed on demand), key, times, partition and source.

    Events are made for every event of every batch, so an event is a small immutable tuple
    (made without running Python code) and everything but its time is read from its batch when
    asked for."""

    __slots__ = ()

    time = _time

    @property
    def key(self):
        """The partition key (str), or None when the event has none."""
        batch, index = self[1], self[2]
        ends = batch.column("key_ends", _U32)
        end = ends[index]
        start = ends[index - 1] if index else 0
        return batch.wit.keys[start:end].decode("utf-8", "replace") if end > start else None

    @property
    def enqueued_time(self):
        """When the event entered Weir or its broker, milliseconds since the Unix epoch."""
        return self[1].column("enqueued_times", _S64)[self[2]]

    @property
    def position(self):
        """Position (offset or sequence number) in its source partition."""
        return self[1].column("positions", _U64)[self[2]]

    @property
    def partition(self):
        """The source partition."""
        return self[1].wit.partition

    @property
    def source(self):
        """The name of the source the event comes from, when the host says (else None)."""
        batch = self[1]
        if batch.sources is None:
            batch.sources = _batch_sources(batch) or ()
        return batch.sources[self[2]] if self[2] < len(batch.sources) else None

    @property
    def body(self):
        """The body as the source delivered it (bytes, usually one JSON object)."""
        batch, index = self[1], self[2]
        return batch.wit.bodies[batch.starts[index]:batch.ends[index]]

    def json(self):
        """The body parsed from JSON (cached): a dict for a JSON object (a `dict` subclass that
        takes the fields the plugin reads from the host's projection when there is one);
        malformed JSON rejects the event."""
        batch, index = self[1], self[2]
        value = batch.parsed[index]
        if value is _UNPARSED:
            value = batch.parse(index, self)
        return value

    @property
    def text(self):
        """The body as text; rejects the event when it is not UTF-8."""
        batch, index = self[1], self[2]
        if batch.text is not None:
            return batch.text[batch.starts[index]:batch.ends[index]]
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Reject(f"not valid UTF-8: {error}") from None

    def _property_pairs(self):
        batch = self[1]
        if batch.properties is None:
            batch.properties = _batch_properties(batch.wit)
        return batch.properties.get(self[2], ())

    @property
    def properties(self):
        """Application properties (Event Hubs properties, Kafka or HTTP headers) as a dict."""
        return dict(self._property_pairs())

    def property(self, name):
        """The value of application property `name`, or None."""
        for key, value in self._property_pairs():
            if key == name:
                return value
        return None

    def __repr__(self):
        return f"Event(position={self.position}, key={self.key!r}, body={self.body[:60]!r})"


_UNPARSED = object()


class _Pad:
    """The key of the one entry a `_Fields` holds before any field was read: a dict that is
    empty would be written as `{}` by the C JSON encoder without asking it for its items."""

    __slots__ = ()

    def __repr__(self):
        return "<no field read yet>"


_PAD = _Pad()
_LEARNING = ((_PAD, None),)


class _Fields(dict):
    """An event's JSON object, as a dict filled from the host's projection: the host hands over
    the JSON text of each top-level field the plugin reads (`wanted-fields`), so the body need
    not be parsed. A field read that the projection does not hold (`__missing__`) is recorded,
    so the next batch asks for it, and taken from the body, parsed then; anything that sees the
    whole object (iteration, `len`, `in`, `get`, `==`, changes, copies, JSON) first completes
    the dict from the body, in the body's order, keeping the values already handed out. So the
    answers are those of `json.loads(body)` with or without a projection."""

    __slots__ = ("_event",)

    def __missing__(self, key):
        event = self._event
        if event is None:
            raise KeyError(key)
        batch, index = event[1], event[2]
        if key in batch.names and (batch.unprojected is None
                                   or index not in batch.unprojected):
            raise KeyError(key)  # projected, and not in this event's body
        reads = batch.reads
        if reads is not None:
            reads.record(key)
        value = batch.body_value(index).get(key, _UNPARSED)
        if value is _UNPARSED:
            raise KeyError(key)
        dict.__setitem__(self, key, value)
        return value

    def _complete(self):
        """Makes this dict the whole body (in the body's order), keeping the values it holds."""
        event = self._event
        if event is None:
            return
        batch = event[1]
        if batch.reads is not None:
            batch.reads.completed += 1
        body = batch.body_value(event[2])
        # `dict.copy` would iterate through `__iter__`, hence the view.
        held = dict(dict.items(self))
        dict.clear(self)
        for key, value in body.items():
            dict.__setitem__(self, key, held.get(key, value))
        self._event = None

    def get(self, key, default=None):
        value = dict.get(self, key, _UNPARSED)
        if value is not _UNPARSED:
            return value
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key):
        if dict.__contains__(self, key):
            return True
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __iter__(self):
        self._complete()
        return dict.__iter__(self)

    def __reversed__(self):
        self._complete()
        return dict.__reversed__(self)

    def __len__(self):
        self._complete()
        return dict.__len__(self)

    def __repr__(self):
        self._complete()
        return dict.__repr__(self)

    def __eq__(self, other):
        self._complete()
        if isinstance(other, _Fields):
            other._complete()
        return dict.__eq__(self, other)

    def __ne__(self, other):
        self._complete()
        if isinstance(other, _Fields):
            other._complete()
        return dict.__ne__(self, other)

    __hash__ = None

    def __or__(self, other):
        if not isinstance(other, dict):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ior__(self, other):
        self._complete()
        return dict.__ior__(self, other)

    def __setitem__(self, key, value):
        self._complete()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        self._complete()
        dict.__delitem__(self, key)

    def keys(self):
        self._complete()
        return dict.keys(self)

    def values(self):
        self._complete()
        return dict.values(self)

    def items(self):
        self._complete()
        return dict.items(self)

    def copy(self):
        self._complete()
        return dict(dict.items(self))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        import copy

        return copy.deepcopy(self.copy(), memo)

    def __reduce__(self):
        return (dict, (self.copy(),))

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __sizeof__(self):
        self._complete()
        return dict.__sizeof__(self)

    def pop(self, *args):
        self._complete()
        return dict.pop(self, *args)

    def popitem(self):
        self._complete()
        return dict.popitem(self)

    def setdefault(self, key, default=None):
        self._complete()
        return dict.setdefault(self, key, default)

    def update(self, *args, **kwargs):
        self._complete()
        dict.update(self, *args, **kwargs)

    def clear(self):
        self._event = None
        dict.clear(self)

    @classmethod
    def fromkeys(cls, iterable, value=None):
        return dict.fromkeys(iterable, value)


_set_event = _Fields._event.__set__


class _Reads:
    """The top-level fields the plugin read from event bodies, which each output asks the host
    to project (`wanted-fields`). Recorded while the plugin reads bodies the host did not
    project: in the instance's first batches (`learning`), and whenever a projected body lacks
    a field the plugin reads. The projection is left unused for good when most events need
    their whole body (the plugin iterates or serialises them): completing each object would
    cost more than parsing the body at once (the host goes on projecting: an empty list does
    not change what it sends)."""

    #: Most fields asked for.
    MAX_FIELDS = 64
    #: Batches in which the plugin's reads are recorded field by field.
    LEARNING_BATCHES = 2

    __slots__ = ("fields", "learning", "batches", "completed", "off", "names")

    def __init__(self):
        self.fields = set()
        self.learning = True
        self.batches = 0
        self.completed = 0
        self.off = False
        self.names = []

    def record(self, key):
        fields = self.fields
        if type(key) is str and key not in fields and len(fields) < self.MAX_FIELDS:
            fields.add(key)
            self.names = sorted(fields)

    def end_batch(self, events):
        """Ends a batch of `events` events; returns the fields the next batch should carry."""
        self.batches += 1
        if self.batches >= self.LEARNING_BATCHES or self.fields:
            self.learning = False
        if events and self.completed * 2 > events and self.batches > self.LEARNING_BATCHES:
            self.off = True
        self.completed = 0
        return [] if self.off else self.names



class Window:
    """A closed window: its group's key (a dict of the grouped fields) and bounds (ms)."""

    __slots__ = ("key_json", "start", "end")

    def __init__(self, key_json, start, end):
        #: The group's key as JSON text, such as `{"DeviceId":"device-001"}`.
        self.key_json = key_json
        #: Start of the window, inclusive, ms since the Unix epoch.
        self.start = start
        #: End of the window, exclusive, ms since the Unix epoch.
        self.end = end

    @property
    def key(self):
        """The group's key as a dict."""
        return _loads(self.key_json) if self.key_json else {}

    def __repr__(self):
        return f"Window({self.key_json}, {self.start}, {self.end})"


# ----- The context -----


class Context:
    """What a plugin function can do besides reading its event: emit records, keep keyed state,
    read its configuration and reference data, count and log. One lives as long as the instance."""

    def __init__(self, host):
        self._host = host
        self._state = _StateCache()
        self._config = None
        self._counters = {}
        self._targets = {}
        self._target_names = []
        self._payloads = bytearray()
        #: The records emitted in this batch: `(event, target, payload_end, forward)` tuples (the
        #: fields of the WIT `emitted` record, forward 0 or 1), packed once the batch ends.
        self._emitted = []
        self._rejected = []
        self._event = 0
        # The current event's position, or None: then it is the batch's (`_Batch`) positions
        # column at `_event`.
        self._position = 0
        self._batch = None
        self._reads = _Reads()
        #: The fields the last batch's output asks the host to project (`wanted-fields`).
        self.wanted_fields = []

    # ----- Outputs -----

    def emit(self, output, value):
        """Sends `value`, serialised as JSON, to output `output`."""
        # `_dumps` and `emit_raw`, inline: two Python frames fewer per record.
        encode = _encode
        try:
            text = _join(encode(value, 0)) if encode is not None else _ENCODER.encode(value)
        except BaseException as error:
            _renew_encoder()
            if isinstance(error, (TypeError, ValueError)):
                raise Reject(
                    f"cannot serialise a record for output `{output}`: {error}") from None
            raise
        payloads = self._payloads
        payloads += text.encode("utf-8")
        target = self._targets.get(output)
        if target is None:
            target = self._target(output)
        self._emitted.append((self._event, target, len(payloads), 0))

    def emit_raw(self, output, data):
        """Sends `data` (bytes or str) unchanged to output `output`."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        payloads = self._payloads
        payloads += data
        target = self._targets.get(output)
        if target is None:
            target = self._target(output)
        self._emitted.append((self._event, target, len(payloads), 0))

    def forward(self, output):
        """Sends the input event's body unchanged to output `output` (nothing is copied)."""
        target = self._targets.get(output)
        if target is None:
            target = self._target(output)
        self._emitted.append((self._event, target, len(self._payloads), 1))

    def _target(self, name):
        index = self._targets.get(name)
        if index is None:
            index = len(self._target_names)
            self._targets[name] = index
            self._target_names.append(name)
        return index

    # ----- Keyed state -----

    def get(self, key, default=None):
        """The value stored under `key` (parsed from JSON), or `default`. The value is the
        caller's own: change it, then `put` it."""
        state = self._state
        flat = state.flat.get(key)
        if flat is not None:
            return flat.copy()
        text = state.texts.get(key, _UNKNOWN)
        if text is _UNKNOWN:
            text = state.read(self._host, key)
        if text is None:
            return default
        # The cache's texts are this SDK's own JSON: the C scanner reads them whole.
        return _scan(text, 0)[0]

    def put(self, key, value):
        """Stores `value`, as JSON, under `key` (serialised now, which checks that it is JSON
        (a value that is not rejects the event), and sent to the host when the batch ends)."""
        # `_dumps`, inline: a Python frame fewer per write.
        encode = _encode
        try:
            text = _join(encode(value, 0)) if encode is not None else _ENCODER.encode(value)
        except BaseException as error:
            _renew_encoder()
            if isinstance(error, (TypeError, ValueError, RecursionError)):
                raise Reject(f"cannot serialise keyed state `{key}`: {error}") from None
            raise
        # `_StateCache.write`, inline: called once per event.
        state = self._state
        texts, written = state.texts, state.written
        state.undo.append((key, texts.get(key, _UNKNOWN), written.get(key, _UNKNOWN)))
        texts[key] = text
        written[key] = text
        # A dict of text keys and scalar values is kept as well, copied: the next `get` copies
        # it again instead of parsing the text (what parsing gives back is equal to it).
        if (type(value) is dict and _SCALARS.issuperset(map(type, value.values()))
                and (_TEXT_KEYS.issuperset(value) or _text_keys(value))):
            state.flat[key] = value.copy()
        elif key in state.flat:
            del state.flat[key]

    def delete(self, key):
        """Removes `key` from the keyed state."""
        self._state.write(key, None, "")

    # ----- Configuration and reference data -----

    @property
    def config(self):
        """The stage's `config` table as a dict (`{}` when absent), read once per instance."""
        if self._config is None:
            text = self._host.config() or "{}"
            try:
                self._config = _loads(text) if text.strip() else {}
            except ValueError as error:
                raise Reject(f"invalid stage config: {error}") from None
        return self._config

    def lookup(self, table, key):
        """The row of reference table `table` whose key is `key`, as a dict; None when none."""
        row = self._host.reference_lookup(table, str(key))
        return None if row is None else _loads(row)

    # ----- Logs and counters -----

    def counter(self, name, delta=1):
        """Adds `delta` to counter `name` (summed in the plugin, sent once per batch)."""
        self._counters[name] = self._counters.get(name, 0) + delta

    def log(self, level, message, **fields):
        """Writes a log record into the host's logs, with the event's position and `fields`."""
        position = self._position
        if position is None:
            batch = self._batch
            position = batch.column("positions", _U64)[self._event] if batch is not None else 0
        pairs = [("position", str(position))]
        pairs.extend((k, str(v)) for k, v in fields.items())
        self._host.log(level, str(message), pairs)

    def trace(self, message, **fields):
        """Logs at TRACE."""
        self.log(Level.TRACE, message, **fields)

    def debug(self, message, **fields):
        """Logs at DEBUG."""
        self.log(Level.DEBUG, message, **fields)

    def info(self, message, **fields):
        """Logs at INFO."""
        self.log(Level.INFO, message, **fields)

    def warn(self, message, **fields):
        """Logs at WARN."""
        self.log(Level.WARN, message, **fields)

    def error(self, message, **fields):
        """Logs at ERROR."""
        self.log(Level.ERROR, message, **fields)

    # ----- Driven by the runners -----

    def _begin_batch(self):
        self._state.discard_unflushed()
        start = self._host.state_check_cache()
        if start is not None:
            self._state.restart(start)
        self._counters = {}
        self._targets = {}
        self._target_names = []
        self._payloads = bytearray()
        self._emitted = []
        self._rejected = []

    def _begin_event(self, index, position):
        self._event = index
        self._position = position
        self._state.begin_event()

    def _reject(self, reason):
        # What the event emitted is at the end of `_emitted`, with its payloads after the
        # previous record's.
        emitted, event = self._emitted, self._event
        keep = len(emitted)
        while keep and emitted[keep - 1][0] == event:
            keep -= 1
        del emitted[keep:]
        del self._payloads[emitted[keep - 1][2] if keep else 0:]
        self._state.rollback_event()
        self._rejected.append((self._event, reason))

    def _end_batch(self, events=None):
        if events is not None:
            self.wanted_fields = self._reads.end_batch(events)
        self._state.flush(self._host)
        for name, delta in self._counters.items():
            if delta > 0:
                self._host.counter_add(name, delta)
        self._counters = {}


def _reason(error):
    """The dead-letter reason of an exception raised by the author's function."""
    if isinstance(error, Reject):
        return str(error)
    if isinstance(error, KeyError) and len(error.args) == 1:
        return f"missing field `{error.args[0]}`"
    where = ""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
    return f"{type(error).__name__}: {error}{where}"


# ----- Keyed state cache -----

#: Most keys cached; past this the cache is emptied after a flush, bounding the instance's memory.
MAX_CACHED_KEYS = 65_536
_INF = float("inf")


def _entries(writes):
    """[(key, value or None)] of a WIT `writes` record (`key-ends` and `value-ends` packed
    `u32s`, `deletes` packed `bools`); a ValueError when its columns do not say one key per
    write."""
    keys, values, deletes = writes.keys, writes.values, writes.deletes
    key_ends = _unpack(writes.key_ends, _U32, "key-ends")
    value_ends = _unpack(writes.value_ends, _U32, "value-ends")
    if not len(key_ends) == len(value_ends) == len(deletes):
        raise ValueError(f"invalid writes from the host: {len(key_ends)} keys, "
                         f"{len(value_ends)} values and {len(deletes)} delete flags")
    entries = []
    key_start = value_start = 0
    for index, key_end in enumerate(key_ends):
        value_end = value_ends[index]
        key = keys[key_start:key_end]
        value = None if deletes[index] else bytes(values[value_start:value_end])
        key_start, value_start = key_end, value_end
        entries.append((key, value))
    return entries


class _StateCache:
    """The instance's keyed-state cache, with an undo log for the current event.

    Every value is kept as JSON text in this SDK's own form (`texts`: key -> text, None for a key
    known to have no value): `get` parses it with the C scanner, so the caller has its own copy,
    and `put` serialises the value once, which checks that it is JSON and is what the host gets.
    A flat value `put` (a dict of text keys and scalar values, the usual per-key state) is also
    kept as a dict (`flat`), which `get` copies instead of parsing the text: a copy costs a tenth
    of a parse. Anything that changes a key's text other than `put` drops its `flat` entry.
    Values the host handed over stay its bytes (`raw`) until first read. A key read is asked of
    the host once, unless the host handed the whole state over (`complete`). The keys written
    since the last flush (`written`: key -> text, "" for a delete) reach the host in one
    `write-batch` call. The undo log holds (key, previous text, previous written text) for each
    write of the current event, rolled back newest first."""

    def __init__(self):
        self.texts = {}
        self.flat = {}
        self.raw = {}
        self.complete = False
        self.written = {}
        self.undo = []

    def restart(self, start):
        self.texts = {}
        self.flat = {}
        self.raw = {}
        self.written = {}
        try:
            entries = _entries(start.entries)
        except (TypeError, ValueError):
            # Not a layout this SDK knows: nothing is taken from it, every key is asked for.
            self.complete = False
            return
        for key, value in entries:
            try:
                self.raw[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                continue  # Keys the SDKs write are text: anything else is asked for.
        self.complete = bool(start.whole) and len(self.raw) <= MAX_CACHED_KEYS

    def read(self, host, key):
        """The JSON text of `key`'s value in this SDK's form, or None when it has none."""
        texts = self.texts
        text = texts.get(key, _UNKNOWN)
        if text is not _UNKNOWN:
            return text
        data = self.raw.get(key, _UNKNOWN)
        if data is _UNKNOWN:
            data = None if self.complete else host.state_get(key.encode("utf-8"))
        if data is None:
            text = None
        else:
            try:
                text = _dumps(_loads(data))
            except (ValueError, TypeError, RecursionError) as error:
                raise Reject(f"keyed state `{key}`: {error}") from None
        texts[key] = text
        return text

    def write(self, key, value, text):
        """Sets `key` to the JSON text `value` (None with text "" to delete it)."""
        texts, written = self.texts, self.written
        self.undo.append((key, texts.get(key, _UNKNOWN), written.get(key, _UNKNOWN)))
        texts[key] = value
        written[key] = text
        self.flat.pop(key, None)

    def begin_event(self):
        if self.undo:
            self.undo.clear()

    def rollback_event(self):
        texts, written, flat = self.texts, self.written, self.flat
        for key, text, wrote in reversed(self.undo):
            flat.pop(key, None)
            if text is _UNKNOWN:
                texts.pop(key, None)
            else:
                texts[key] = text
            if wrote is _UNKNOWN:
                written.pop(key, None)
            else:
                written[key] = wrote
        self.undo.clear()

    def flush(self, host):
        self.undo.clear()
        written = self.written
        if written:
            # Packed columns built by C loops (`map`, `accumulate`, `array`): a batch writes
            # about one key per event. A delete's text is "", and only a delete's.
            keys, values = list(written), list(written.values())
            key_text, value_text = "".join(keys), "".join(values)
            key_ends = _pack(_U32, list(_accumulate(map(len, keys if key_text.isascii()
                                                        else map(_utf8, keys)))))
            value_ends = _pack(_U32, list(_accumulate(map(len, values if value_text.isascii()
                                                          else map(_utf8, values)))))
            deletes = bytes(map(_not, values))
            self.written = {}
            host.state_write_batch(key_text.encode("utf-8"), key_ends,
                                   value_text.encode("utf-8"), value_ends, deletes)
        if len(self.texts) + len(self.raw) > MAX_CACHED_KEYS:
            self.texts = {}
            self.flat = {}
            self.raw = {}
            self.complete = False

    def discard_unflushed(self):
        """Forgets everything when the last batch did not end with a flush (a native test whose
        function raised past the runner): its writes never reached the host."""
        if self.written or self.undo:
            self.texts = {}
            self.flat = {}
            self.raw = {}
            self.written = {}
            self.complete = False
        self.undo.clear()


_utf8 = str.encode
_UNKNOWN = object()
#: The types of a flat value's keys and values (exact types: a subclass may serialise otherwise).
_TEXT = frozenset((str,))
_SCALARS = frozenset((str, int, float, bool, type(None)))
#: Keys seen to be exactly `str` in flat values, so that `put` checks a value's keys with one
#: C call: a key found among them is text (a `str`, or a subclass of it: no other type the
#: encoder takes as a key equals a string). Natively (CPython 3.13) the whole check of a
#: two-field value takes 390 ns instead of 520 with every key's type checked. Bounded: past
#: `_MAX_TEXT_KEYS`, new keys are checked each time.
_TEXT_KEYS = set()
_MAX_TEXT_KEYS = 4096


def _text_keys(value):
    """Whether every key of dict `value` is exactly `str` (remembered in `_TEXT_KEYS`)."""
    if not _TEXT.issuperset(map(type, value)):
        return False
    if len(_TEXT_KEYS) + len(value) <= _MAX_TEXT_KEYS:
        _TEXT_KEYS.update(value)
    return True


# ----- Runners: one pass over a batch in the WIT layout -----


def _batch_sources(shared):
    """Per event, the name of its source, when the batch (`_Batch`) carries `sources` and
    `event-sources` (packed `u16s`, one per event; otherwise it is left unused)."""
    wit = shared.wit
    names = getattr(wit, "sources", None)
    column = getattr(wit, "event_sources", None)
    if not names or not column or len(column) != 2 * len(shared.ends):
        return None
    return [names[i] if i < len(names) else None for i in shared.column("event_sources", _U16)]


def _batch_properties(batch):
    """Per event index, its [(name, value)] (only events that have any)."""
    found = {}
    for prop in batch.properties:
        found.setdefault(prop.event, []).append((prop.name, prop.value))
    return found


def batch_events(batch, reads=None):
    """The events of a batch in the WIT layout, as `Event`s, in order. `reads` records the
    fields the plugin reads (`_Reads`), when it asks for a projection. A ValueError when the
    batch's packed columns do not hold one number per event."""
    return _events(batch, reads)[1]


def _events(batch, reads=None):
    """`batch_events`, with the `_Batch` its events share."""
    shared = _Batch(batch, reads)
    count = len(shared.ends)
    times = _unpack(batch.event_times, _S64, "event-times")
    # `tuple.__new__` over zipped columns: no Python code runs per event.
    events = list(map(_new_tuple, _repeat(Event, count),
                      zip(times, _repeat(shared, count), range(count))))
    if count and getattr(batch, "field_names", None) and (reads is None or not reads.off):
        _project(shared, batch, events)
    return shared, events


def _release(events):
    """Ends the batch of `events`: the objects `json()` made refer to their events, which refer
    to the batch, which listed those objects; the list goes, so that reference counting frees
    the batch at once rather than the cycle collector later. An event kept past its batch makes
    its object again when asked."""
    if events:
        batch = events[0][1]
        batch.parsed = [_UNPARSED] * len(batch.parsed)


def _project(shared, wit, events):
    """Fills `shared.parsed` with a `_Fields` per event the host projected, from the JSON text
    of each projected field's value (`field-values`: the entries of one JSON array without its
    brackets, field by field within each event, event by event, separated by commas and ended
    by `field-ends` (packed `u32s`); an empty entry for a field the body does not have), for the
    events `projected` (packed `bools`) flags."""
    names = list(wit.field_names)
    count, width = len(events), len(names)
    try:
        ends = _unpack(wit.field_ends, _U32, "field-ends")
    except (TypeError, ValueError):
        return  # Not a layout this SDK knows: every body is parsed.
    if len(ends) != count * width:
        return
    flags = getattr(wit, "projected", None)
    if flags is not None and len(flags) != count:
        return
    data = wit.field_values
    ascii_text = data.isascii()
    try:
        text = data.decode("ascii") if ascii_text else data.decode("utf-8")
    except (UnicodeDecodeError, AttributeError):
        return  # Not text: every body is parsed.
    values = texts = None
    # No empty entry (no field absent): the entries are one JSON array, parsed by one call
    # without a slice per value. (`,,` inside a string value only takes the other way.)
    if text and text[0] != "," and text[-1] != "," and ",," not in text:
        try:
            values = _loads("[" + text + "]")
        except (ValueError, RecursionError):
            values = None
    if values is None or len(values) != count * width:
        # Each entry sliced out (it starts one past the end of the one before: past the comma),
        # an empty one (absent) parsed as null.
        starts = [0, *map(_add, ends[:-1], _repeat(1, len(ends)))] if ends else []
        if ascii_text:
            texts = list(map(text.__getitem__, map(slice, starts, ends)))
        else:
            try:
                texts = [bytes(data[start:end]).decode("utf-8")
                         for start, end in zip(starts, ends)]
            except UnicodeDecodeError:
                return
        try:
            values = _loads("[" + ",".join([t or "null" for t in texts]) + "]")
        except (ValueError, RecursionError):
            return  # The host's texts are not JSON: every body is parsed.
        if len(values) != count * width:
            return
        if "" not in texts:
            texts = None
    unprojected = None
    if flags is not None and 0 in flags:  # A flag byte 0 (any other is true, as the host reads)
        unprojected = {index for index, flag in enumerate(flags) if not flag}
    shared.names = frozenset(names)
    shared.unprojected = unprojected
    if texts is None and unprojected is None:
        fields = list(map(_Fields, map(zip, _repeat(names, count),
                                       zip(*[iter(values)] * width))))
        list(map(_set_event, fields, events))
        shared.parsed = fields
        return
    parsed = shared.parsed
    for index, event in enumerate(events):
        if unprojected is not None and index in unprojected:
            continue
        first = index * width
        fields = _Fields((name, values[first + at]) for at, name in enumerate(names)
                         if texts is None or texts[first + at])
        if not dict.__len__(fields):
            dict.__setitem__(fields, _PAD, None)
        _set_event(fields, event)
        parsed[index] = fields


_new_tuple = tuple.__new__


def run_transform(ctx, function, batch):
    """Runs `function` over every event of `batch`; returns (targets, payloads, emitted, rejected):
    the fields of the WIT `output-batch`, with `emitted` its packed `u32s` column (bytes: four
    numbers per record, event, target, payload_end and forward (0 or 1)) and `rejected` as
    (event, reason) tuples."""
    ctx._begin_batch()
    undo = ctx._state.undo
    index = 0
    shared, events = _events(batch, ctx._reads)
    ctx._position, ctx._batch = None, shared
    for event in events:
        # `Context._begin_event`, reduced to what must happen per event: what a rejection
        # rolls back is found from `_emitted` and the state's undo log.
        ctx._event = index
        if undo:
            undo.clear()
        try:
            function(event, ctx)
        except Exception as error:  # The author's error rejects the event, as `Err` in Rust.
            ctx._reject(_reason(error))
        index += 1
    _release(events)
    ctx._batch = None
    ctx._end_batch(len(events))
    return ctx._target_names, bytes(ctx._payloads), _pack_emitted(ctx._emitted), ctx._rejected


def _ranges(data, ends):
    start = 0
    for end in ends:
        yield data[start:end]
        start = end


def _snapshot(acc):
    """A copy of `acc` to restore if a fold raises (cheap for flat accumulators)."""
    if isinstance(acc, dict):
        if all(v is None or isinstance(v, (int, float, str, bool)) for v in acc.values()):
            return dict(acc)
    elif acc is None or isinstance(acc, (int, float, str, bool)):
        return acc
    return _loads(_dumps(acc))


def run_fold(ctx, request, plugin=PLUGIN):
    """Folds a request's events into its groups' accumulators; returns (accumulators bytes,
    accumulator_ends, rejected): the fields of the WIT `fold-response`, `accumulator_ends` its
    packed `u32s` column (bytes). `plugin` has the `init`, `fold` and `finish` functions."""
    fold_function = plugin.fold
    init_function = plugin.init or dict
    ctx._begin_batch()
    # The request's packed columns (`u32s`); `member-ends` counts numbers of `members`.
    accumulator_ends = _unpack(request.accumulator_ends, _U32, "accumulator-ends")
    members = list(_ranges(_unpack(request.members, _U32, "members"),
                           _unpack(request.member_ends, _U32, "member-ends")))
    events = batch_events(request.events, ctx._reads)
    out = bytearray()
    ends = []
    for group, stored in enumerate(_ranges(request.accumulators, accumulator_ends)):
        window = request.windows[group]
        group_members = members[group] if group < len(members) else []
        try:
            acc = _loads(stored) if stored else init_function()
        except ValueError as error:
            for member in group_members:
                ctx._begin_event(member, 0)
                ctx._reject(f"the accumulator of window {window.start}..{window.end} of "
                            f"{window.key} cannot be read: {error}")
            out += stored
            ends.append(len(out))
            continue
        for member in group_members:
            if member >= len(events):
                ctx._begin_event(member, 0)
                ctx._reject(f"invalid request: no event {member} in the batch")
                continue
            event = events[member]
            ctx._begin_event(member, event.position)
            before = _snapshot(acc)
            try:
                result = fold_function(acc, event, ctx)
                if result is not None:
                    acc = result
            except Exception as error:
                acc = before
                ctx._reject(_reason(error))
        try:
            out += _dumps(acc).encode("utf-8")
        except (TypeError, ValueError) as error:
            out += stored
            for member in group_members:
                ctx._begin_event(member, 0)
                ctx._reject(f"cannot serialise the accumulator: {error}")
        ends.append(len(out))
    _release(events)
    ctx._end_batch(len(events))
    if ctx._emitted:
        ctx.warn("records emitted during `fold` are discarded: emit them in `finish`")
    return bytes(out), _pack(_U32, ends), ctx._rejected


def run_finish(ctx, request, plugin=PLUGIN):
    """Produces the outputs of closed windows; returns (targets, payloads, emitted, rejected) as
    `run_transform` does, indexed by window."""
    finish_function = plugin.finish
    init_function = plugin.init or dict
    ctx._begin_batch()
    accumulator_ends = _unpack(request.accumulator_ends, _U32, "accumulator-ends")
    for index, stored in enumerate(_ranges(request.accumulators, accumulator_ends)):
        window = request.windows[index]
        ctx._begin_event(index, 0)
        try:
            acc = _loads(stored) if stored else init_function()
            if finish_function is not None:
                finish_function(acc, Window(window.key, window.start, window.end), ctx)
        except Exception as error:
            ctx._reject(_reason(error))
    ctx._end_batch()
    return ctx._target_names, bytes(ctx._payloads), _pack_emitted(ctx._emitted), ctx._rejected


def run_join(ctx, request, join_function=None):
    """Calls the join function per pair; returns (targets, payloads, emitted, rejected) as
    `run_transform` does, indexed by pair."""
    join_function = join_function or PLUGIN.join
    ctx._begin_batch()
    events = batch_events(request.events, ctx._reads)
    for index, pair in enumerate(request.pairs):
        left = events[pair.left] if pair.left is not None and pair.left < len(events) else None
        right = events[pair.right] if pair.right is not None and pair.right < len(events) else None
        position = max((e.position for e in (left, right) if e is not None), default=0)
        ctx._begin_event(index, position)
        if (left is None and right is None) or (pair.left is not None and left is None) or (
                pair.right is not None and right is None):
            ctx._reject(f"invalid request: pair {index} names no event of the batch")
            continue
        try:
            join_function(left, right, ctx)
        except Exception as error:
            ctx._reject(_reason(error))
    _release(events)
    ctx._end_batch(len(events))
    return ctx._target_names, bytes(ctx._payloads), _pack_emitted(ctx._emitted), ctx._rejected


def _version():
    return f"{sys.version_info.major}.{sys.version_info.minor}"
