use weir_sdk::prelude::*;

#[weir_sdk::window]
fn fold(event: &Event, ctx: &mut Context) -> Result<()> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
