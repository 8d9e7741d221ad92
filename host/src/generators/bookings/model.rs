//! The booking model: every order, and when its payment comes, is a pure function of the seed and
//! the order's number, so any stretch of the stream can be regenerated on its own after a crash.
//!
//! Time runs in slots of one booking interval. Order `n` is booked in slot `n`, at
//! `start + n · interval`. Its payment (if any) is made `d` after the booking and sent in slot
//! `n + k`, with `k = ⌈d / interval⌉`: a payment arrives slightly out of order (its event time is up
//! to one interval before the booking sent in the same slot). Positions make the order of the
//! stream: `slot · (K + 1)` for the booking, `slot · (K + 1) + k` for a payment `k` slots late,
//! where `K` is the latest a payment can be.

use crate::generators::random::{hash, unit};
use crate::time::format_millis;

/// Events of the catalogue: name, type, venue id.
const EVENTS: [(&str, &str, &str); 12] = [
    ("Hamlet", "Play", "V01"),
    ("The Tempest", "Play", "V01"),
    ("Swan Lake", "Ballet", "V02"),
    ("Coldplay Live", "Concert", "V03"),
    ("Jazz Night", "Concert", "V04"),
    ("Symphony No. 9", "Concert", "V02"),
    ("Dune: Part Three", "Movie", "V05"),
    ("The Matrix Revisited", "Movie", "V06"),
    ("Stand-up Gala", "Comedy", "V04"),
    ("Les Misérables", "Play", "V07"),
    ("Cup Final", "Sports", "V08"),
    ("Inception", "Movie", "V05"),
];

/// Venue names by id (their cities are reference data: `examples/reference/venues.csv`).
const VENUES: [(&str, &str); 8] = [
    ("V01", "Globe Theatre"),
    ("V02", "Royal Opera House"),
    ("V03", "Wembley Arena"),
    ("V04", "Blue Note"),
    ("V05", "Odeon Leicester Square"),
    ("V06", "Cineworld Dublin"),
    ("V07", "Palace Theatre"),
    ("V08", "Stade de France"),
];

const METHODS: [&str; 4] = ["Card", "PayPal", "ApplePay", "BankTransfer"];
const ROWS: &[u8] = b"ABCDEFGHJK";

mod tag {
    pub(super) const CUSTOMER: u64 = 1;
    pub(super) const EVENT: u64 = 2;
    pub(super) const SEATS: u64 = 3;
    pub(super) const SEAT_ROW: u64 = 4;
    pub(super) const SEAT_NUMBER: u64 = 5;
    pub(super) const PRICE: u64 = 6;
    pub(super) const MISSING: u64 = 7;
    pub(super) const LATE: u64 = 8;
    pub(super) const DELAY: u64 = 9;
    pub(super) const FAILED: u64 = 10;
    pub(super) const METHOD: u64 = 11;
}

/// The parameters of one booking simulation, durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub(crate) seed: u64,
    pub(crate) start_time: i64,
    pub(crate) interval: i64,
    pub(crate) deadline: i64,
    pub(crate) missing_ratio: f64,
    pub(crate) late_ratio: f64,
    pub(crate) failed_ratio: f64,
    /// The streams this source carries.
    pub(crate) stream: super::config::BookingsStream,
}

/// One seat of a booking.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seat {
    pub(crate) id: String,
    pub(crate) price: f64,
}

/// An order's payment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Payment {
    /// Milliseconds after the booking.
    pub(crate) delay: i64,
    /// Slots after the booking's slot that it is sent in (1 to [`Model::max_slots_late`]).
    pub(crate) slots_late: u64,
    pub(crate) failed: bool,
    pub(crate) method: &'static str,
}

impl Model {
    /// The latest a payment is sent, in slots after its booking.
    pub(crate) fn max_slots_late(&self) -> u64 {
        u64::try_from((3 * self.deadline + self.interval - 1) / self.interval)
            .unwrap_or(1)
            .max(1)
    }

    /// Distance between the positions of two consecutive slots.
    pub(crate) fn slot_width(&self) -> u64 {
        self.max_slots_late() + 1
    }

    /// Event time of order `n`'s booking.
    pub(crate) fn booking_time(&self, n: u64) -> i64 {
        self.start_time.saturating_add(
            i64::try_from(n)
                .unwrap_or(i64::MAX)
                .saturating_mul(self.interval),
        )
    }

    /// Order `n`'s payment, if it is ever paid.
    pub(crate) fn payment(&self, n: u64) -> Option<Payment> {
        let seed = self.seed;
        if unit(hash(seed, n, tag::MISSING)) < self.missing_ratio {
            return None;
        }
        let (low, high) = if unit(hash(seed, n, tag::LATE)) < self.late_ratio {
            (self.deadline + 1_000, 3 * self.deadline)
        } else {
            (1_000, (self.deadline - 1_000).max(1_000))
        };
        let span = u64::try_from(high - low + 1).unwrap_or(1).max(1);
        let delay = low + i64::try_from(hash(seed, n, tag::DELAY) % span).unwrap_or(0);
        // Rounded to whole seconds, as payment providers report them.
        let delay = (delay / 1000).max(1) * 1000;
        let slots_late = u64::try_from((delay + self.interval - 1) / self.interval)
            .unwrap_or(1)
            .clamp(1, self.max_slots_late());
        Some(Payment {
            delay,
            slots_late,
            failed: unit(hash(seed, n, tag::FAILED)) < self.failed_ratio,
            method: METHODS[(hash(seed, n, tag::METHOD) % METHODS.len() as u64) as usize],
        })
    }

    /// The order id of order `n`, the events' partition key.
    pub(crate) fn order_id(n: u64) -> String {
        format!("order-{n:07}")
    }

    /// Order `n`'s seats.
    pub(crate) fn seats(&self, n: u64) -> Vec<Seat> {
        let seed = self.seed;
        let count = 1 + hash(seed, n, tag::SEATS) % 4;
        let row = ROWS[(hash(seed, n, tag::SEAT_ROW) % ROWS.len() as u64) as usize] as char;
        let first = 1 + hash(seed, n, tag::SEAT_NUMBER) % 30;
        // A price in half units from 15 to 120, the same for every seat of the order.
        let price = 15.0 + (hash(seed, n, tag::PRICE) % 211) as f64 * 0.5;
        (0..count)
            .map(|i| Seat {
                id: format!("{row}{}", first + i),
                price,
            })
            .collect()
    }

    /// Order `n`'s booking as JSON.
    pub(crate) fn booking_body(&self, n: u64) -> String {
        let seed = self.seed;
        let (event, event_type, venue) =
            EVENTS[(hash(seed, n, tag::EVENT) % EVENTS.len() as u64) as usize];
        let venue_name = VENUES
            .iter()
            .find(|(id, _)| *id == venue)
            .map_or("", |(_, name)| name);
        let seats: Vec<serde_json::Value> = self
            .seats(n)
            .into_iter()
            .map(|s| serde_json::json!({ "SeatId": s.id, "Price": s.price }))
            .collect();
        serde_json::json!({
            "OrderId": Self::order_id(n),
            "CustomerId": format!("cust-{:05}", hash(seed, n, tag::CUSTOMER) % 20_000),
            "EventName": event,
            "EventType": event_type,
            "VenueId": venue,
            "Venue": venue_name,
            "Seats": seats,
            "Timestamp": format_millis(self.booking_time(n)),
        })
        .to_string()
    }

    /// Order `n`'s payment as JSON.
    pub(crate) fn payment_body(&self, n: u64, payment: &Payment) -> String {
        let amount: f64 = self.seats(n).iter().map(|s| s.price).sum();
        serde_json::json!({
            "PaymentId": format!("pay-{n:07}"),
            "OrderId": Self::order_id(n),
            "Method": payment.method,
            "Amount": amount,
            "Status": if payment.failed { "Failed" } else { "Succeeded" },
            "Timestamp": format_millis(self.booking_time(n) + payment.delay),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            seed: 7,
            start_time: 1_800_000_000_000,
            interval: 1_000,
            deadline: 120_000,
            missing_ratio: 0.05,
            late_ratio: 0.05,
            failed_ratio: 0.05,
            stream: super::super::config::BookingsStream::Both,
        }
    }

    #[test]
    fn payments_follow_the_ratios_and_arrive_after_their_event_time() {
        let model = model();
        let orders = 20_000;
        let (mut missing, mut late, mut failed) = (0, 0, 0);
        for n in 0..orders {
            let Some(payment) = model.payment(n) else {
                missing += 1;
                continue;
            };
            if payment.delay > model.deadline {
                late += 1;
            }
            failed += usize::from(payment.failed);
            assert!(payment.delay >= 1000 && payment.delay <= 3 * model.deadline);
            // Sent in the slot of a later booking whose time is not before the payment's.
            let slot_time = model.booking_time(n + payment.slots_late);
            assert!(slot_time >= model.booking_time(n) + payment.delay);
            assert!(slot_time - (model.booking_time(n) + payment.delay) < model.interval);
        }
        for (what, count) in [("missing", missing), ("late", late), ("failed", failed)] {
            assert!((700..1300).contains(&count), "{what}: {count} of {orders}");
        }
        assert_eq!(
            model.booking_body(3),
            model.booking_body(3),
            "a pure function"
        );
    }
}
