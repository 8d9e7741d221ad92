use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process(event: Event, ctx: &mut Context) -> Result<()> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
