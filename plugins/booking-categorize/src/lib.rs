//! Booking categorisation: one row per booked seat, with the event's category and when the
//! booking was made. Payments pass through, to be joined with the rows. The seed's Azure Stream
//! Analytics query:
//!
//! ```sql
//! SELECT b.OrderId, b.CustomerId, b.EventName, b.EventType,
//!        CASE b.EventType WHEN 'Concert' THEN 'Music' WHEN 'Play' THEN 'Theater'
//!                         WHEN 'Movie' THEN 'Cinema' ELSE 'Other' END AS Category,
//!        b.VenueId, b.Venue, seat.ArrayValue.SeatId AS SeatId, seat.ArrayValue.Price AS SeatPrice,
//!        DATEPART(weekday, b.Timestamp) AS BookingDayOfWeek, DATEPART(hour, b.Timestamp) AS BookingHour
//! FROM bookings b TIMESTAMP BY Timestamp
//! CROSS APPLY GetArrayElements(b.Seats) AS seat
//! ```
//!
//! The venue's city comes from the reference table `venues` (the stage's `reference`
//! configuration; Fabric Eventstream's "join with reference data"), looked up by `VenueId`;
//! without it, `VenueCity` is empty.
//!
//! # Outputs
//!
//! - `seats`: one [`SeatRow`] per seat of a booking (an event with `Seats`).
//! - `payments`: every payment (an event with `PaymentId`), unchanged.
//!
//! A booking without seats, or an event that is neither, is rejected with the reason.

use weir_sdk::prelude::*;

/// A booking, borrowed from the event's body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Booking<'a> {
    /// The order.
    #[serde(borrow)]
    pub order_id: Text<'a>,
    /// Who booked.
    #[serde(borrow)]
    pub customer_id: Text<'a>,
    /// What is on.
    #[serde(borrow)]
    pub event_name: Text<'a>,
    /// `Concert`, `Play`, `Movie`, ...
    #[serde(borrow)]
    pub event_type: Text<'a>,
    /// Where.
    #[serde(borrow)]
    pub venue_id: Text<'a>,
    /// The venue's name.
    #[serde(borrow, default)]
    pub venue: Option<Text<'a>>,
    /// The seats booked.
    #[serde(borrow)]
    pub seats: Vec<Seat<'a>>,
    /// When the booking was made, as written.
    #[serde(borrow)]
    pub timestamp: Text<'a>,
}

/// One seat of a booking.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Seat<'a> {
    /// Seat number, such as `F12`.
    #[serde(borrow)]
    pub seat_id: Text<'a>,
    /// Its price.
    pub price: f64,
}

/// A row of the reference table `venues`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Venue {
    /// The city the venue is in.
    pub city: String,
}

/// What tells a payment apart from a booking.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Kind<'a> {
    #[serde(borrow, default)]
    payment_id: Option<Text<'a>>,
}

/// The record sent to output `seats`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SeatRow<'a> {
    /// The order.
    pub order_id: &'a str,
    /// Who booked.
    pub customer_id: &'a str,
    /// What is on.
    pub event_name: &'a str,
    /// Its type, as booked.
    pub event_type: &'a str,
    /// Its category (see [`category`]).
    pub category: &'static str,
    /// Where.
    pub venue_id: &'a str,
    /// The venue's name.
    pub venue: Option<&'a str>,
    /// The venue's city, from the reference table `venues`.
    pub venue_city: Option<String>,
    /// The seat.
    pub seat_id: &'a str,
    /// The seat's price.
    pub seat_price: f64,
    /// Seats in the order.
    pub seat_count: usize,
    /// When the booking was made, as written.
    pub booking_time: &'a str,
    /// Day of the week of the booking (UTC), `Monday` to `Sunday`.
    pub booking_day_of_week: &'static str,
    /// Hour of the booking (UTC), 0 to 23.
    pub booking_hour: i64,
}

/// The category of an event type: Concert → Music, Play → Theater, Movie → Cinema, else Other.
pub fn category(event_type: &str) -> &'static str {
    match event_type {
        "Concert" => "Music",
        "Play" => "Theater",
        "Movie" => "Cinema",
        _ => "Other",
    }
}

/// Day of the week (its name, as `DATENAME(weekday, ...)` gives it) and hour (UTC) of a time in
/// milliseconds since the Unix epoch.
pub fn day_and_hour(millis: i64) -> (&'static str, i64) {
    let time = Timestamp::from_epoch_millis(millis);
    (time.weekday_name(), i64::from(time.hour()))
}

/// Splits a booking into seat rows; forwards a payment.
#[weir_sdk::transform]
pub fn categorize(event: &Event, ctx: &mut Context) -> Result<()> {
    let kind: Kind = event.json()?;
    if kind.payment_id.is_some() {
        ctx.forward("payments");
        return Ok(());
    }
    let booking: Booking = event.json()?;
    if booking.seats.is_empty() {
        return Err(Error::reject("a booking without seats"));
    }
    let (day, hour) = day_and_hour(event.time());
    let venue_city = ctx
        .lookup::<Venue>("venues", &booking.venue_id)?
        .map(|venue| venue.city);
    for seat in &booking.seats {
        ctx.emit(
            "seats",
            &SeatRow {
                order_id: &booking.order_id,
                customer_id: &booking.customer_id,
                event_name: &booking.event_name,
                event_type: &booking.event_type,
                category: category(&booking.event_type),
                venue_id: &booking.venue_id,
                venue: booking.venue.as_deref(),
                venue_city: venue_city.clone(),
                seat_id: &seat.seat_id,
                seat_price: seat.price,
                seat_count: booking.seats.len(),
                booking_time: &booking.timestamp,
                booking_day_of_week: day,
                booking_hour: hour,
            },
        )?;
    }
    ctx.counter("seats", booking.seats.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{Harness, TestEvent};

    #[test]
    fn one_row_per_seat_with_category_day_and_hour() {
        let mut harness = Harness::new(categorize).with_reference(
            "venues",
            "V01",
            weir_sdk::serde_json::json!({"VenueId": "V01", "City": "London"}),
        );
        // 2026-11-22 is a Sunday.
        let booking = r#"{"OrderId":"o1","CustomerId":"c1","EventName":"Hamlet","EventType":"Play",
            "VenueId":"V01","Venue":"Globe","Seats":[{"SeatId":"A1","Price":40.0},{"SeatId":"A2","Price":40.0}],
            "Timestamp":"2026-11-22T18:30:00Z"}"#;
        let outcome = harness.run_event(TestEvent::new(booking).at(1_795_372_200_000));
        let rows = outcome.json("seats");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["SeatId"], "A2");
        assert_eq!(rows[0]["Category"], "Theater");
        assert_eq!(rows[0]["BookingDayOfWeek"], "Sunday");
        assert_eq!(rows[0]["BookingHour"], 18);
        assert_eq!(rows[0]["SeatCount"], 2);
        assert_eq!(rows[0]["VenueCity"], "London");
        let payment = r#"{"PaymentId":"p1","OrderId":"o1","Amount":80.0}"#;
        assert!(harness.run(payment).forwarded_to("payments"));
        assert!(harness.run(r#"{"OrderId":"o2"}"#).is_rejected());
    }

    #[test]
    fn categories_and_days() {
        assert_eq!(category("Concert"), "Music");
        assert_eq!(category("Movie"), "Cinema");
        assert_eq!(category("Sports"), "Other");
        assert_eq!(day_and_hour(0), ("Thursday", 0));
        assert_eq!(day_and_hour(-1), ("Wednesday", 23));
    }
}
