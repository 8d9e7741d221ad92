use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process() -> Result<()> {
    Ok(())
}

fn main() {}
