//! The bookings fact: each seat row of a booking joined with the order's payment made within
//! 2 minutes of the booking (the pipeline's interval join), the seed's
//!
//! ```sql
//! SELECT s.*, p.PaymentId, p.Method AS PaymentMethod, p.Amount AS PaymentAmount,
//!        p.Status AS PaymentStatus, p.Timestamp AS PaymentTime,
//!        DATEDIFF(second, s.BookingTime, p.Timestamp) AS PaymentDelaySeconds
//! FROM seats s TIMESTAMP BY BookingTime
//! LEFT JOIN payments p TIMESTAMP BY Timestamp
//!   ON s.OrderId = p.OrderId AND DATEDIFF(minute, s, p) BETWEEN 0 AND 2
//! ```
//!
//! A seat whose order was not paid within the bound comes alone (the join's `unmatched_left =
//! "emit"`) and gets empty payment columns and `Paid = false`. Rows go to output `rows`.

use weir_sdk::prelude::*;
use weir_sdk::serde_json;

/// A payment, borrowed from the event's body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Payment<'a> {
    /// The payment.
    #[serde(borrow)]
    pub payment_id: Text<'a>,
    /// How.
    #[serde(borrow)]
    pub method: Text<'a>,
    /// How much.
    pub amount: f64,
    /// `Succeeded` or `Failed`.
    #[serde(borrow)]
    pub status: Text<'a>,
    /// When, as written.
    #[serde(borrow)]
    pub timestamp: Text<'a>,
}

/// The payment columns of a fact row.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PaymentColumns<'a> {
    /// The payment, if the order was paid within the bound.
    pub payment_id: Option<&'a str>,
    /// How it was paid.
    pub payment_method: Option<&'a str>,
    /// How much.
    pub payment_amount: Option<f64>,
    /// `Succeeded` or `Failed`.
    pub payment_status: Option<&'a str>,
    /// When, as written.
    pub payment_time: Option<&'a str>,
    /// Seconds between the booking and the payment.
    pub payment_delay_seconds: Option<i64>,
    /// Whether a payment succeeded within the bound.
    pub paid: bool,
}

/// Adds the payment (or its absence) to the seat row.
#[weir_sdk::join]
pub fn enrich(seat: Option<&Event>, payment: Option<&Event>, ctx: &mut Context) -> Result<()> {
    let Some(seat) = seat else {
        // A payment without its booking: the pipeline drops those; nothing to write if not.
        return Ok(());
    };
    let row: serde_json::Map<String, serde_json::Value> = seat.json()?;
    let parsed: Option<Payment> = payment.map(|p| p.json()).transpose()?;
    let columns = match (&parsed, payment) {
        (Some(p), Some(event)) => PaymentColumns {
            payment_id: Some(&p.payment_id),
            payment_method: Some(&p.method),
            payment_amount: Some(p.amount),
            payment_status: Some(&p.status),
            payment_time: Some(&p.timestamp),
            payment_delay_seconds: Some((event.time() - seat.time()).div_euclid(1000)),
            paid: &*p.status == "Succeeded",
        },
        _ => PaymentColumns {
            payment_id: None,
            payment_method: None,
            payment_amount: None,
            payment_status: None,
            payment_time: None,
            payment_delay_seconds: None,
            paid: false,
        },
    };
    let mut fact = row;
    if let serde_json::Value::Object(more) = serde_json::to_value(&columns)? {
        fact.extend(more);
    }
    ctx.counter(if columns.paid { "paid" } else { "unpaid" }, 1);
    ctx.emit("rows", &fact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{JoinHarness, TestEvent};

    #[test]
    fn a_paid_seat_and_an_unpaid_one() {
        let mut harness = JoinHarness::new(enrich);
        let seat =
            TestEvent::new(r#"{"OrderId":"o1","SeatId":"A1","SeatPrice":40.0}"#).at(1_000_000);
        let payment = TestEvent::new(
            r#"{"PaymentId":"p1","OrderId":"o1","Method":"Card","Amount":40.0,"Status":"Succeeded","Timestamp":"x"}"#,
        )
        .at(1_045_500);
        let row = &harness.pair(Some(seat.clone()), Some(payment)).json("rows")[0];
        assert_eq!(row["SeatId"], "A1");
        assert_eq!(row["PaymentDelaySeconds"], 45);
        assert_eq!(row["Paid"], true);
        let row = &harness.pair(Some(seat), None).json("rows")[0];
        assert!(row["PaymentId"].is_null());
        assert_eq!(row["Paid"], false);
        assert!(
            harness
                .pair(None, Some(TestEvent::new("{}")))
                .json("rows")
                .is_empty()
        );
        assert_eq!(harness.counters()["unpaid"], 1);
    }
}
