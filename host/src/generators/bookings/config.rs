//! Configuration of the booking platform simulator.

use serde::Deserialize;

use crate::config::{ConfigDuration, ConfigError, Document};

/// A cinema, concert and theatre booking platform: a stream of bookings (an order with its seats)
/// and a stream of payments, in one source, partitioned by `OrderId` so that an order's booking
/// and payment meet in the same partition. Some payments come late, some never, some fail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingsSourceConfig {
    /// Number of partitions; events are partitioned by `OrderId`.
    #[serde(default = "crate::generators::default_partitions")]
    pub partitions: u32,
    /// Orders per second; 0 produces as fast as the pipeline consumes.
    #[serde(default = "default_booking_rate")]
    pub rate: u32,
    /// Stop after this many orders (their payments included); absent runs until stopped.
    #[serde(default)]
    pub max_orders: Option<u64>,
    /// Seed of the generator: the same seed gives the same events.
    #[serde(default = "crate::generators::default_seed")]
    pub seed: u64,
    /// Event time of the first booking (RFC 3339). Absent: the time of the pipeline's first start,
    /// kept in the checkpoint store so that a restart replays the same events.
    #[serde(default)]
    pub start_time: Option<String>,
    /// Event time between two bookings.
    #[serde(default = "default_booking_interval")]
    pub booking_interval: ConfigDuration,
    /// A payment on time comes within this long after its booking; a late one after it.
    #[serde(default = "default_payment_deadline")]
    pub payment_deadline: ConfigDuration,
    /// Fraction of orders never paid.
    #[serde(default = "default_missing_payment_ratio")]
    pub missing_payment_ratio: f64,
    /// Fraction of payments made after the deadline (up to three times it).
    #[serde(default = "default_late_payment_ratio")]
    pub late_payment_ratio: f64,
    /// Fraction of payments with the status `Failed`.
    #[serde(default = "default_failed_payment_ratio")]
    pub failed_payment_ratio: f64,
    /// Which of the platform's two streams this source carries: `both` (one source, each event
    /// with its `stream` property), or `bookings` or `payments` alone, so that two sources with
    /// the same seed and `start_time` are the platform's two streams, as two Event Hubs carry
    /// them (an order's booking and payment land in the same partition of each).
    #[serde(default)]
    pub stream: BookingsStream,
}

/// The streams a booking platform simulator source carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingsStream {
    /// Bookings and payments, in one stream.
    #[default]
    Both,
    /// Bookings only.
    Bookings,
    /// Payments only.
    Payments,
}

impl BookingsStream {
    /// Whether an event of stream `name` (`bookings` or `payments`) belongs here.
    pub fn carries(self, name: &str) -> bool {
        match self {
            BookingsStream::Both => true,
            BookingsStream::Bookings => name == "bookings",
            BookingsStream::Payments => name == "payments",
        }
    }
}

fn default_booking_rate() -> u32 {
    200
}
fn default_booking_interval() -> ConfigDuration {
    ConfigDuration::from_millis(1_000)
}
fn default_payment_deadline() -> ConfigDuration {
    ConfigDuration::from_millis(120_000)
}
fn default_missing_payment_ratio() -> f64 {
    0.05
}
fn default_late_payment_ratio() -> f64 {
    0.05
}
fn default_failed_payment_ratio() -> f64 {
    0.05
}

/// Checks a booking platform simulator source: what types cannot.
pub(crate) fn validate(
    doc: &Document<'_>,
    name: &str,
    bookings: &BookingsSourceConfig,
) -> Result<(), ConfigError> {
    crate::generators::validate_fractions(
        doc,
        name,
        &[
            ("missing_payment_ratio", bookings.missing_payment_ratio),
            ("late_payment_ratio", bookings.late_payment_ratio),
            ("failed_payment_ratio", bookings.failed_payment_ratio),
        ],
    )?;
    for (key, duration) in [
        ("booking_interval", bookings.booking_interval),
        ("payment_deadline", bookings.payment_deadline),
    ] {
        if duration.get().as_millis() < 1000 {
            return Err(doc.error(&["sources", name, key], "expected at least one second"));
        }
    }
    crate::generators::validate_start_time(doc, name, bookings.start_time.as_deref())?;
    Ok(())
}
