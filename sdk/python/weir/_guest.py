"""The component side: the host's imports as the SDK's host, and the bodies of the exports.

Imported only inside a component built by componentize-py (the build command generates the entry
module that subclasses the world's export and calls these functions); `weir.testing` replaces the
host with memory for native tests.
"""

import gc

from wit_world.imports import config, log, metrics, reference, state, types

import weir

_LEVELS = {
    weir.Level.TRACE: log.Level.TRACE,
    weir.Level.DEBUG: log.Level.DEBUG,
    weir.Level.INFO: log.Level.INFO,
    weir.Level.WARN: log.Level.WARN,
    weir.Level.ERROR: log.Level.ERROR,
}


class _Host:
    """The host, through the imports every plugin world has."""

    state_get = staticmethod(state.get)
    state_check_cache = staticmethod(state.check_cache)
    counter_add = staticmethod(metrics.counter_add)
    config = staticmethod(config.get)
    reference_lookup = staticmethod(reference.lookup)

    @staticmethod
    def state_write_batch(keys, key_ends, values, value_ends, deletes):
        # Every argument is `bytes` (the packed columns too, `u32s` and `bools`), which is what
        # componentize-py takes for a `list<u8>`.
        state.write_batch(state.Writes(keys, key_ends, values, value_ends, deletes))

    @staticmethod
    def log(level, message, fields):
        log.write(_LEVELS.get(level, log.Level.INFO), message, fields)


_CTX = None


def _ctx():
    global _CTX
    if _CTX is None:
        _CTX = weir.Context(_Host)
        _tune_gc()
    return _CTX


def _tune_gc():
    """Makes the cyclic garbage collector cheaper for a stream of short-lived objects.

    Everything alive before the first call (the interpreter's modules, the SDK, the plugin) is
    moved out of the collector's sight for good (`gc.freeze`), and a collection starts after
    50,000 allocations rather than 2,000: with the defaults, collections took a fifth of a
    component's time on the anomaly rule. Reference counting still frees every acyclic object at
    once; cycles are still collected, less often."""
    gc.freeze()
    gc.set_threshold(50_000)


def _output(result):
    targets, payloads, emitted, rejected = result
    # `payloads` and `emitted` (the packed `u32s` column, four numbers per record) are `bytes`,
    # the only type componentize-py takes for a `list<u8>`.
    return types.OutputBatch(
        list(targets),
        payloads,
        emitted,
        [types.Rejection(e, reason) for e, reason in rejected],
        # The fields the plugin reads, for the host to project (see `weir._Reads`).
        list(_CTX.wanted_fields),
    )


def process(batch):
    """The body of `transform.process`."""
    return _output(weir.run_transform(_ctx(), weir.PLUGIN.transform, batch))


def fold(request):
    """The body of `aggregate.fold`."""
    # `accumulators` and `ends` (the packed `u32s` column) are `bytes`.
    accumulators, ends, rejected = weir.run_fold(_ctx(), request)
    return types.FoldResponse(accumulators, ends,
                              [types.Rejection(e, reason) for e, reason in rejected],
                              list(_CTX.wanted_fields))


def finish(request):
    """The body of `aggregate.finish`."""
    return _output(weir.run_finish(_ctx(), request))


def enrich(request):
    """The body of `join.enrich`."""
    return _output(weir.run_join(_ctx(), request))
