//! The Wasm side: the host's imports as a [`Backend`], and the batch entry point the export glue
//! of [`crate::transform`] calls.

use std::cell::RefCell;

use crate::__private::wit::weir::plugin::{config, log, metrics, state};
use crate::bindings::{EventBatch, OutputBatch, StateWrites};
use crate::context::{Backend, Context, Level};
use crate::error::Result;
use crate::event::Event;
use crate::runner::Runner;

/// The host, through the imports of the `event-transform` world.
struct WasmHost;

impl Backend for WasmHost {
    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }

    fn state_write_batch(&mut self, writes: &StateWrites) {
        state::write_batch(writes);
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
