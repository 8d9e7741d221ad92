use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process(event: &Event, ctx: &mut Context) -> Result<bool> {
    let _ = (event, ctx);
    Ok(true)
}

fn main() {}
