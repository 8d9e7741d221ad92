//! Window aggregates: an accumulator type that folds a window's events and produces its outputs.

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};

use crate::bindings::{FinishRequest, FoldRequest, FoldResponse, OutputBatch};
use crate::columns;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::projection;
use crate::runner::BatchIndex;

/// The accumulator of a window aggregate: implement it for your type and mark the `impl` with
/// [`#[weir_sdk::window]`](crate::window).
///
/// The host owns windows and time. It assigns every event to its (key, window) groups, keeps one
/// accumulator per group in the partition's checkpointed state (serialised as JSON by the SDK, so
/// the type needs `Serialize` and `Deserialize`), calls [`fold`](Aggregate::fold) for each event of
/// a window in event-time order, starting from [`Default::default`], and calls
/// [`finish`](Aggregate::finish) once, when the partition's watermark passes the window's end.
///
/// ```
/// use weir_sdk::prelude::*;
///
/// #[derive(Debug, Default, Clone, Serialize, Deserialize)]
/// struct Temperatures {
///     count: u64,
///     sum: f64,
/// }
///
/// #[derive(Deserialize)]
/// #[serde(rename_all = "PascalCase")]
/// struct Reading {
///     temperature: f64,
/// }
///
/// #[weir_sdk::window]
/// impl Aggregate for Temperatures {
///     fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
///         let reading: Reading = event.json()?; // check first: a rejected event changes nothing
///         self.count += 1;
///         self.sum += reading.temperature;
///         Ok(())
///     }
///
///     fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
///         // The host adds the group's fields, WindowStart and WindowEnd to the record.
///         ctx.emit("rows", &serde_json::json!({
///             "EventCount": self.count,
///             "AvgTemperature": self.sum / self.count as f64,
///         }))
///     }
/// }
/// # fn main() {}
/// ```
///
/// An `Err` from `fold` rejects that event: it goes to the dead-letter sink, and the accumulator
/// is left as it was before it. An `Err` from `finish` sends the window (its key, bounds and
/// accumulator) to the dead-letter sink instead of its outputs. Records emitted during `fold` are
/// discarded: outputs come from `finish`.
pub trait Aggregate: Default + Clone + Serialize + DeserializeOwned + 'static {
    /// Folds one event of the window into the accumulator.
    fn fold(&mut self, event: &Event<'_>, ctx: &mut Context) -> Result<()>;

    /// Produces the window's outputs with [`Context::emit`], once the window has closed.
    fn finish(self, window: &Window<'_>, ctx: &mut Context) -> Result<()>;
}

/// A window that closed: its group's key and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'a> {
    pub(crate) key: &'a str,
    pub(crate) start: i64,
    pub(crate) end: i64,
}

impl<'a> Window<'a> {
    /// A window of the group `key` (a JSON object of the grouped fields) from `start` to `end`.
    pub fn new(key: &'a str, start: i64, end: i64) -> Self {
        Window { key, start, end }
    }

    /// The group's key as JSON: an object with the fields the stage groups by, such as
    /// `{"DeviceId":"device-001","Location":"Paris"}`.
    pub fn key_json(&self) -> &'a str {
        self.key
    }

    /// The group's key deserialized, for example into a struct with the grouped fields.
    pub fn key<T: Deserialize<'a>>(&self) -> Result<T> {
        serde_json::from_str(self.key).map_err(|e| Error::from(e).context("window key"))
    }

    /// Start of the window (inclusive), in milliseconds since the Unix epoch.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// End of the window (exclusive), in milliseconds since the Unix epoch.
    pub fn end(&self) -> i64 {
        self.end
    }
}

/// Runs a window aggregate's `fold` and `finish` over requests from the host; the Wasm export and
/// the native harness both use it.
pub(crate) struct WindowRunner {
    pub(crate) ctx: Context,
    index: BatchIndex,
}

/// The range `[previous end, ends[i])` of a concatenated list.
/// Range `i` of a `u32s` column of ends.
fn range(ends: &[u8], i: usize) -> Option<(usize, usize)> {
    let end = columns::u32_at(ends, i)? as usize;
    let start = if i == 0 {
        0
    } else {
        columns::u32_at(ends, i - 1)? as usize
    };
    (start <= end).then_some((start, end))
}

fn offset(len: usize) -> u32 {
    // Accumulators cross the WIT boundary, whose lists are u32-sized.
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl WindowRunner {
    pub(crate) fn new(ctx: Context) -> Self {
        WindowRunner {
            ctx,
            index: BatchIndex::default(),
        }
    }

    /// Folds the request's events into their groups' accumulators.
    pub(crate) fn fold<A: Aggregate>(&mut self, request: &FoldRequest) -> FoldResponse {
        let ctx = &mut self.ctx;
        ctx.begin_batch();
        self.index.build(&request.events);
        let mut response = FoldResponse {
            accumulators: Vec::new(),
            accumulator_ends: Vec::with_capacity(request.windows.len() * 4),
            rejected: Vec::new(),
            wanted_fields: Vec::new(),
        };
        for (group, window) in request.windows.iter().enumerate() {
            let stored = range(&request.accumulator_ends, group)
                .and_then(|(start, end)| request.accumulators.get(start..end))
                .unwrap_or_default();
            let members = range(&request.member_ends, group)
                .and_then(|(start, end)| request.members.get(start * 4..end * 4))
                .unwrap_or_default();
            let mut accumulator = if stored.is_empty() {
                A::default()
            } else {
                match serde_json::from_slice::<A>(stored) {
                    Ok(accumulator) => accumulator,
                    Err(e) => {
                        // Keep the bytes: the events are refused, the window is not lost.
                        for member in columns::u32s(members) {
                            ctx.begin_event(member, 0);
                            ctx.reject(format!(
                                "the accumulator of window {}..{} of {} cannot be read: {e}",
                                window.start, window.end, window.key
                            ));
                        }
                        response.accumulators.extend_from_slice(stored);
                        let end = offset(response.accumulators.len());
                        columns::push_u32(&mut response.accumulator_ends, end);
                        continue;
                    }
                }
            };
            for member in columns::u32s(members) {
                let Some(event) = self.index.event(&request.events, member) else {
                    ctx.begin_event(member, 0);
                    ctx.reject(format!("invalid request: no event {member} in the batch"));
                    continue;
                };
                ctx.begin_event(member, event.position);
                let before = accumulator.clone();
                let result = accumulator.fold(&event, ctx);
                if result.is_err() {
                    accumulator = before;
                }
                ctx.end_event(result);
            }
            let start = response.accumulators.len();
            if let Err(e) = serde_json::to_writer(&mut response.accumulators, &accumulator) {
                // Nothing better to keep than what was stored: refuse this batch's events.
                response.accumulators.truncate(start);
                response.accumulators.extend_from_slice(stored);
                for member in columns::u32s(members) {
                    ctx.begin_event(member, 0);
                    ctx.reject(format!("cannot serialise the accumulator: {e}"));
                }
            }
            let end = offset(response.accumulators.len());
            columns::push_u32(&mut response.accumulator_ends, end);
        }
        ctx.end_batch();
        if !ctx.out.emitted.is_empty() {
            ctx.warn("records emitted during `fold` are discarded: emit them in `finish`");
        }
        response.rejected = std::mem::take(&mut ctx.out.rejected);
        // As a transform's output: the fields the structs read so far need.
        response.wanted_fields = projection::wanted_fields();
        response
    }

    /// Produces the outputs of the request's closed windows; the output is left in `ctx.out`.
    pub(crate) fn finish<A: Aggregate>(&mut self, request: &FinishRequest) -> &OutputBatch {
        let ctx = &mut self.ctx;
        ctx.begin_batch();
        for (index, window) in request.windows.iter().enumerate() {
            let index = offset(index);
            ctx.begin_event(index, 0);
            let stored = range(&request.accumulator_ends, index as usize)
                .and_then(|(start, end)| request.accumulators.get(start..end))
                .unwrap_or_default();
            let accumulator = if stored.is_empty() {
                Ok(A::default())
            } else {
                serde_json::from_slice::<A>(stored)
                    .map_err(|e| Error::from(e).context("the window's accumulator cannot be read"))
            };
            let result = accumulator.and_then(|accumulator| {
                accumulator.finish(&Window::new(&window.key, window.start, window.end), ctx)
            });
            ctx.end_event(result);
        }
        ctx.end_batch();
        &ctx.out
    }
}
