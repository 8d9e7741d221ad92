use weir_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Reading<'a> {
    #[serde(borrow)]
    device_id: Text<'a>,
    temperature: f64,
}

#[derive(Serialize, Deserialize)]
struct Last {
    temperature: f64,
    time: i64,
}

#[weir_sdk::transform]
fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    let reading: Reading = event.json()?;              // a bad event is rejected with the reason
    if let Some(last) = ctx.get::<Last>(&reading.device_id)?
        && (reading.temperature - last.temperature).abs() > 15.0
    {
        ctx.emit("alerts", &serde_json::json!({ "DeviceId": &*reading.device_id }))?;
    }
    ctx.put(&reading.device_id, &Last { temperature: reading.temperature, time: event.time() })?;
    ctx.forward("rows");                               // the input, unchanged, to output `rows`
    Ok(())
}
