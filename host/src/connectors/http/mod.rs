//! HTTP ingest: an endpoint that accepts JSON events and makes them durable in a write-ahead log
//! before it answers.

pub(crate) mod auth;
pub mod config;
mod entra;
pub mod source;
