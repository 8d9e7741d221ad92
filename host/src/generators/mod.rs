//! Demo generators: built-in sources that make up events from a seed, for demos, tests and
//! benchmarks. They are not connectors to a real system.
//!
//! - [`telemetry`]: IoT devices reporting temperature, humidity, pressure, battery and signal;
//! - [`bookings`]: a booking platform's bookings and their payments.

pub mod bookings;
pub mod telemetry;

/// Default number of partitions of a generator.
fn default_partitions() -> u32 {
    4
}

/// Default seed of a generator.
fn default_seed() -> u64 {
    1
}
