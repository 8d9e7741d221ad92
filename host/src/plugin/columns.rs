//! The packed columns of `wit/plugin.wit` (`u32s`, `u64s`, `s64s`, `u16s`, `bools`): numbers in
//! a `list<u8>`, little-endian, a fixed width each. The functions are the guest SDK's own
//! (`sdk/src/columns.rs`, included here by path), so that the host and its plugins read and
//! write the layout from one source.

#[path = "../../../sdk/src/columns.rs"]
mod shared;

pub use shared::*;
