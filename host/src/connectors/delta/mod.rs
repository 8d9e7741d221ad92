//! Delta Lake: a table, local or on Azure Data Lake Storage, written exactly once (sink). The
//! reference-data reader of Delta tables lives in [`crate::reference`].

pub mod config;
#[cfg(feature = "delta")]
pub mod sink;
pub mod types;
