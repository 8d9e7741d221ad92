//! Join enrichment: the plugin function that turns a joined pair (or an unmatched event alone)
//! into output records.

use crate::bindings::{JoinRequest, OutputBatch};
use crate::context::Context;
use crate::error::Result;
use crate::event::Event;
use crate::projection;
use crate::runner::BatchIndex;

/// Runs a join function over the pairs of requests from the host; the Wasm export and the native
/// harness both use it.
pub(crate) struct JoinRunner {
    pub(crate) ctx: Context,
    index: BatchIndex,
}

impl JoinRunner {
    pub(crate) fn new(ctx: Context) -> Self {
        JoinRunner {
            ctx,
            index: BatchIndex::default(),
        }
    }

    /// Calls `join` once per pair of `request`; the output (indexed by pair) is left in
    /// `ctx.out`.
    pub(crate) fn run<F>(&mut self, request: &JoinRequest, join: &F) -> &OutputBatch
    where
        F: Fn(Option<&Event<'_>>, Option<&Event<'_>>, &mut Context) -> Result<()>,
    {
        let ctx = &mut self.ctx;
        ctx.begin_batch();
        self.index.build(&request.events);
        for (index, pair) in request.pairs.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let left = pair.left.map(|i| self.index.event(&request.events, i));
            let right = pair.right.map(|i| self.index.event(&request.events, i));
            let position = [&left, &right]
                .into_iter()
                .flatten()
                .flatten()
                .map(Event::position)
                .max()
                .unwrap_or_default();
            ctx.begin_event(index, position);
            let empty = pair.left.is_none() && pair.right.is_none();
            if matches!(left, Some(None)) || matches!(right, Some(None)) || empty {
                ctx.reject(format!(
                    "invalid request: pair {index} names no event of the batch"
                ));
                continue;
            }
            let result = join(left.flatten().as_ref(), right.flatten().as_ref(), ctx);
            ctx.end_event(result);
        }
        ctx.end_batch();
        // The fields the structs read so far need, projected by the host from the next request.
        ctx.out.wanted_fields = projection::wanted_fields();
        &ctx.out
    }
}
