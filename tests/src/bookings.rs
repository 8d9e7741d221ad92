//! Booking test data made here (not by Weir's simulator): orders with seats, payments on time,
//! late, missing or failed, in arrival order up to one second out of order; and the bookings fact
//! derived from them relationally, as the seed's join defines it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::telemetry::timestamp;

/// 2026-11-22T18:00:00Z, a Sunday.
pub const BOOKINGS_BASE_MS: i64 = 1_795_370_400_000;
/// The join's bound: a payment counts if made at most this long after its booking.
pub const JOIN_WITHIN_MS: i64 = 120_000;

/// One generated order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// `o-00001`.
    pub order_id: String,
    /// Event type as booked.
    pub event_type: &'static str,
    /// Seat ids and prices.
    pub seats: Vec<(String, f64)>,
    /// Booking time.
    pub time_ms: i64,
    /// The payment: delay after the booking (ms) and whether it failed.
    pub payment: Option<(i64, bool)>,
    /// The venue (`V01`..`V08` are in the example's reference table, `V99` is not).
    pub venue: String,
}

/// `orders` orders, one a second from [`BOOKINGS_BASE_MS`].
pub fn generated_orders(orders: usize, seed: u64) -> Vec<Order> {
    let mut rng = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(17);
    let mut next = move || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let types = ["Concert", "Play", "Movie", "Comedy", "Sports"];
    (0..orders)
        .map(|n| {
            let seats = 1 + (next() * 4.0) as usize;
            let price = 20.0 + (next() * 100.0).floor() * 0.5;
            let r = next();
            let payment = if r < 0.05 {
                None
            } else {
                let late = next() < 0.06;
                let delay = if late {
                    121_000 + (next() * 200.0) as i64 * 1000
                } else {
                    1_000 + (next() * 118.0) as i64 * 1000
                };
                Some((delay, next() < 0.05))
            };
            Order {
                order_id: format!("o-{n:05}"),
                event_type: types[(next() * types.len() as f64) as usize % types.len()],
                seats: (0..seats).map(|s| (format!("R{}", s + 1), price)).collect(),
                time_ms: BOOKINGS_BASE_MS + n as i64 * 1000,
                payment,
                venue: match (next() * 9.0) as usize {
                    8 => "V99".to_owned(),
                    v => format!("V0{}", v.min(7) + 1),
                },
            }
        })
        .collect()
}

fn booking_json(order: &Order) -> Value {
    json!({
        "OrderId": order.order_id,
        "CustomerId": format!("c-{}", order.order_id),
        "EventName": format!("Show {}", order.event_type),
        "EventType": order.event_type,
        "VenueId": order.venue,
        "Venue": format!("Venue {}", order.venue),
        "Seats": order.seats.iter().map(|(id, price)| json!({"SeatId": id, "Price": price})).collect::<Vec<_>>(),
        "Timestamp": timestamp(order.time_ms),
    })
}

fn payment_json(order: &Order, delay: i64, failed: bool) -> Value {
    let amount: f64 = order.seats.iter().map(|(_, p)| p).sum();
    json!({
        "PaymentId": format!("p-{}", order.order_id),
        "OrderId": order.order_id,
        "Method": "Card",
        "Amount": amount,
        "Status": if failed { "Failed" } else { "Succeeded" },
        "Timestamp": timestamp(order.time_ms + delay),
    })
}

/// One line of the input: an order's booking or its payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// Index of the order in the orders given.
    pub order: usize,
    /// Whether it is the order's payment (else its booking).
    pub payment: bool,
    /// The event, as a JSON document.
    pub line: String,
}

/// The orders' bookings and payments in arrival order: a payment arrives with the first booking
/// made at or after its own time (up to a second out of order), always after its own booking.
pub fn arrivals(orders: &[Order]) -> Vec<Arrival> {
    let mut arrivals: Vec<(i64, usize, Arrival)> = Vec::new();
    for (n, order) in orders.iter().enumerate() {
        let booking = Arrival {
            order: n,
            payment: false,
            line: booking_json(order).to_string(),
        };
        arrivals.push((order.time_ms, 0, booking));
        if let Some((delay, failed)) = order.payment {
            let at = order.time_ms + delay;
            let slot = (at - BOOKINGS_BASE_MS + 999).div_euclid(1000) * 1000 + BOOKINGS_BASE_MS;
            let payment = Arrival {
                order: n,
                payment: true,
                line: payment_json(order, delay, failed).to_string(),
            };
            arrivals.push((slot, 1 + n, payment));
        }
    }
    arrivals.sort_by_key(|(slot, order, _)| (*slot, *order));
    arrivals
        .into_iter()
        .map(|(_, _, arrival)| arrival)
        .collect()
}

/// Writes the orders' bookings and payments as JSON Lines in arrival order (see [`arrivals`]).
pub fn write_orders(path: &Path, orders: &[Order]) {
    let mut text = String::new();
    for arrival in arrivals(orders) {
        text.push_str(&arrival.line);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write orders");
}

/// The orders' bookings and payments as two streams, each in its arrival order (see
/// [`arrivals`]): the bookings' lines, then the payments' lines, as two sources would carry them.
pub fn streams(orders: &[Order]) -> (Vec<String>, Vec<String>) {
    let (payments, bookings): (Vec<Arrival>, Vec<Arrival>) =
        arrivals(orders).into_iter().partition(|a| a.payment);
    (
        bookings.into_iter().map(|a| a.line).collect(),
        payments.into_iter().map(|a| a.line).collect(),
    )
}

fn category(event_type: &str) -> &'static str {
    match event_type {
        "Concert" => "Music",
        "Play" => "Theater",
        "Movie" => "Cinema",
        _ => "Other",
    }
}

/// The cities of the venues of the example's reference table `examples/reference/venues.csv`,
/// read with Python's `csv` module (an independent reader).
pub fn example_venue_cities() -> BTreeMap<String, String> {
    const SCRIPT: &str = r#"
import csv, json, sys
with open(sys.argv[1], newline="") as f:
    print(json.dumps({row["VenueId"]: row["City"] for row in csv.DictReader(f)}))
"#;
    let path = crate::workspace_dir().join("examples/reference/venues.csv");
    let output = crate::python_command(SCRIPT)
        .arg(&path)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("venue cities")
}

/// The bookings fact by (OrderId, SeatId): each seat with its order's payment made within the
/// bound (`0 ≤ payment − booking ≤ 2 min`), or without payment columns; the venue's city from
/// `cities`.
pub fn expected_fact(
    orders: &[Order],
    cities: &BTreeMap<String, String>,
) -> BTreeMap<(String, String), Value> {
    let mut rows = BTreeMap::new();
    for order in orders {
        let payment = order
            .payment
            .filter(|(delay, _)| (0..=JOIN_WITHIN_MS).contains(delay));
        for (seat, price) in &order.seats {
            let mut row = json!({
                "OrderId": order.order_id,
                "EventType": order.event_type,
                "Category": category(order.event_type),
                "SeatId": seat,
                "SeatPrice": price,
                "SeatCount": order.seats.len(),
                "BookingDayOfWeek": "Sunday",
                "BookingHour": 18 + (order.time_ms - BOOKINGS_BASE_MS) / 3_600_000,
                "BookingDate": timestamp(order.time_ms)[..10],
                "Paid": payment.is_some_and(|(_, failed)| !failed),
                "VenueCity": cities.get(&order.venue),
            });
            match payment {
                Some((delay, failed)) => {
                    row["PaymentId"] = json!(format!("p-{}", order.order_id));
                    row["PaymentAmount"] = json!(order.seats.iter().map(|(_, p)| p).sum::<f64>());
                    row["PaymentStatus"] = json!(if failed { "Failed" } else { "Succeeded" });
                    row["PaymentDelaySeconds"] = json!(delay / 1000);
                }
                None => {
                    for column in [
                        "PaymentId",
                        "PaymentAmount",
                        "PaymentStatus",
                        "PaymentDelaySeconds",
                    ] {
                        row[column] = Value::Null;
                    }
                }
            }
            rows.insert((order.order_id.clone(), seat.clone()), row);
        }
    }
    rows
}

/// Checks that `rows` (read from the fact table) are exactly the bookings fact of `orders`: one
/// row per seat, each once, with the expected values in every column [`expected_fact`] gives.
pub fn assert_fact(rows: &[Value], orders: &[Order]) {
    let expected = expected_fact(orders, &example_venue_cities());
    let mut seen = std::collections::BTreeSet::new();
    for row in rows {
        let key = (
            row["OrderId"].as_str().expect("OrderId").to_owned(),
            row["SeatId"].as_str().expect("SeatId").to_owned(),
        );
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected row {row}"));
        for (field, value) in want.as_object().expect("object") {
            assert!(crate::close(&row[field], value), "{field}: {row} vs {want}");
        }
        assert!(seen.insert(key), "row twice: {row}");
    }
    let missing: Vec<&(String, String)> = expected.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} seats missing: {missing:?}",
        missing.len(),
        expected.len()
    );
}
