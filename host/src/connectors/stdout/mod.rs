//! Standard output, one JSON document per line (sink).

pub mod config;
pub mod sink;
