use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process(event: &Event, ctx: &Context) -> Result<()> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
