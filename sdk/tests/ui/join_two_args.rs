use weir_sdk::prelude::*;

#[weir_sdk::join]
fn enrich(left: Option<&Event>, ctx: &mut Context) -> Result<()> {
    let _ = (left, ctx);
    Ok(())
}

fn main() {}
