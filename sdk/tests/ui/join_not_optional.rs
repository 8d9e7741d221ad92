use weir_sdk::prelude::*;

#[weir_sdk::join]
fn enrich(left: &Event, right: Option<&Event>, ctx: &mut Context) -> Result<()> {
    let _ = (left, right, ctx);
    Ok(())
}

fn main() {}
