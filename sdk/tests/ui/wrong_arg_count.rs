use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process(event: &Event) -> Result<()> {
    let _ = event;
    Ok(())
}

fn main() {}
