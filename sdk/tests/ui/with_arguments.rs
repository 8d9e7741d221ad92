use weir_sdk::prelude::*;

#[weir_sdk::transform(output = "alerts")]
fn process(event: &Event, ctx: &mut Context) -> Result<()> {
    let _ = (event, ctx);
    Ok(())
}

fn main() {}
