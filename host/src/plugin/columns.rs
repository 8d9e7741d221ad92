//! The packed columns of `wit/plugin.wit` (`u32s`, `u64s`, `s64s`, `u16s`, `bools`): numbers in
//! a `list<u8>`, little-endian, a fixed width each. The functions are the guest SDK's own
//! (`sdk/src/columns.rs`, included here by path), so that the host and its plugins read and
//! write the layout from one source; the host adds what it checks of a column a guest sent.

#[path = "../../../sdk/src/columns.rs"]
mod shared;

pub use shared::*;

/// Bytes of one record of an `output-batch.emitted` column.
pub const EMITTED_RECORD_BYTES: usize = 16;

/// Whether an `output-batch.emitted` column holds a whole number of records.
pub fn whole_records(column: &[u8]) -> bool {
    column.len().is_multiple_of(EMITTED_RECORD_BYTES)
}
