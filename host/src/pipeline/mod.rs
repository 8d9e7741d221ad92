//! Running pipelines.
