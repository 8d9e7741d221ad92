use weir_sdk::prelude::*;

#[weir_sdk::transform]
async fn process(event: &Event<'_>, ctx: &mut Context) -> Result<()> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
