//! The Wasm side: the host's imports as a [`Backend`], and the batch entry point the export glue
//! of [`crate::transform`] calls.

use std::cell::RefCell;

use crate::__private::wit::weir::plugin::{config, log, metrics, reference, state};
use crate::bindings::{
    CacheStart, EventBatch, FinishRequest, FoldRequest, FoldResponse, JoinRequest, OutputBatch,
    StateWrites,
};
use crate::context::{Backend, Context, Level};
use crate::error::Result;
use crate::event::Event;
use crate::join::JoinRunner;
use crate::runner::Runner;
use crate::window::{Aggregate, WindowRunner};

/// The host, through the imports of the `event-transform` world.
struct WasmHost;

impl Backend for WasmHost {
    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }

    fn state_write_batch(&mut self, writes: &StateWrites) {
        state::write_batch(writes);
    }

    fn state_set_ttl(&mut self, ttl_ms: u64) {
        state::set_ttl(ttl_ms);
    }

    fn state_check_cache(&mut self) -> Option<CacheStart> {
        state::check_cache()
    }

    fn counter_add(&mut self, name: &str, delta: u64) {
        metrics::counter_add(name, delta);
    }

    fn log(&mut self, level: Level, message: &str, fields: &[(String, String)]) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::write(level, message, fields);
    }

    fn config(&mut self) -> String {
        config::get()
    }

    fn reference_lookup(&mut self, table: &str, key: &str) -> Option<String> {
        reference::lookup(table, key)
    }
}

thread_local! {
    /// The instance's runner, created at the first batch and kept until the host drops the
    /// instance. Only the configuration and buffer sizes outlive a batch: keyed state is cached per
    /// batch, because the host may replace the instance between any two batches.
    static RUNNER: RefCell<Option<Runner>> = const { RefCell::new(None) };
}

/// Runs `transform` over `batch` with the host's imports; called by the export glue.
pub(crate) fn process_batch<F>(batch: EventBatch, transform: F) -> OutputBatch
where
    F: Fn(&Event<'_>, &mut Context) -> Result<()>,
{
    RUNNER.with_borrow_mut(|runner| {
        let runner = runner.get_or_insert_with(|| Runner::new(Box::new(WasmHost)));
        runner.run(&batch, &transform);
        runner.take_output()
    })
}

thread_local! {
    /// The instance's window runner, kept like [`RUNNER`].
    static WINDOW_RUNNER: RefCell<Option<WindowRunner>> = const { RefCell::new(None) };
}

fn with_window_runner<R>(f: impl FnOnce(&mut WindowRunner) -> R) -> R {
    WINDOW_RUNNER.with_borrow_mut(|runner| {
        let runner =
            runner.get_or_insert_with(|| WindowRunner::new(Context::new(Box::new(WasmHost))));
        f(runner)
    })
}

/// Folds a batch into window accumulators; called by the export glue of [`crate::window`].
pub(crate) fn fold_windows<A: Aggregate>(request: FoldRequest) -> FoldResponse {
    with_window_runner(|runner| runner.fold::<A>(&request))
}

/// Produces closed windows' outputs; called by the export glue of [`crate::window`].
pub(crate) fn finish_windows<A: Aggregate>(request: FinishRequest) -> OutputBatch {
    with_window_runner(|runner| {
        runner.finish::<A>(&request);
        runner.ctx.take_output()
    })
}

thread_local! {
    /// The instance's join runner, kept like [`RUNNER`].
    static JOIN_RUNNER: RefCell<Option<JoinRunner>> = const { RefCell::new(None) };
}

/// Enriches the pairs of one request; called by the export glue of [`crate::join`].
pub(crate) fn join_pairs(request: JoinRequest, join: crate::__private::JoinFn) -> OutputBatch {
    JOIN_RUNNER.with_borrow_mut(|runner| {
        let runner =
            runner.get_or_insert_with(|| JoinRunner::new(Context::new(Box::new(WasmHost))));
        runner.run(&request, &join);
        runner.ctx.take_output()
    })
}
