use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process<T: Default>(event: &Event, ctx: &mut Context) -> Result<()> {
    let _ = (event, ctx, T::default());
    Ok(())
}

fn main() {}
