use std::time::Duration;
use weir_sdk::prelude::*;
use weir_sdk::time::{DatePart, datediff};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BookingTime {
    day_of_week: &'static str, // "Sunday"
    weekday: u32,              // 1 (Sunday) to 7, as DATEPART(weekday, ...)
    hour: u32,                 // 0 to 23, UTC
    bucket: Timestamp,         // its 5-minute window: "2026-11-22T18:30:00Z"
    days_to_show: i64,         // DATEDIFF(day, booked, show): midnights in between
}

#[weir_sdk::transform]
fn booking_time(event: &Event, ctx: &mut Context) -> Result<()> {
    let booked = event.timestamp(); // the event time (the pipeline's TIMESTAMP BY)
    let show = event.field_time("ShowTime")?; // RFC 3339 text or epoch milliseconds
    let row = BookingTime {
        day_of_week: booked.weekday_name(),
        weekday: booked.weekday().number_from_sunday(),
        hour: booked.hour(),
        bucket: booked.truncate(Duration::from_secs(5 * 60)),
        days_to_show: datediff(DatePart::Day, booked, show),
    };
    ctx.emit("rows", &row)?;
    Ok(())
}
