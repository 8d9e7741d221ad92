//! JSON Lines files: a file replayed (or followed) as a source, and one file per pipeline
//! partition as an exactly-once sink.

pub mod config;
pub mod sink;
pub mod source;
