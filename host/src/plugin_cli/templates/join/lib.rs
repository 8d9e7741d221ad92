//! A Weir join enrichment: for every pair of a seat (left input) and its payment (right input)
//! that the host joins on `OrderId`, one row to output `rows` with the seat's fields and whether it
//! was paid in time; a payment alone writes nothing. Built with `weir plugin build`; see the README
//! of Weir, "Writing a plugin".

use weir_sdk::prelude::*;

/// Called for every pair the host makes: both sides when they joined within the stage's bound,
/// one side alone when the other did not come in time (if the stage's `unmatched_*` policy emits
/// it). An `Err` sends the pair to the dead letters.
#[weir_sdk::join]
pub fn enrich(seat: Option<&Event>, payment: Option<&Event>, ctx: &mut Context) -> Result<()> {
    let Some(seat) = seat else { return Ok(()) };
    let mut row: serde_json::Value = seat.value()?;
    row["Paid"] = payment.is_some().into();
    if let Some(payment) = payment {
        let amount: serde_json::Value = payment.value()?;
        row["Amount"] = amount["Amount"].clone();
    }
    ctx.emit("rows", &row)
}
