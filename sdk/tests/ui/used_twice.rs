use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn first(event: &Event, ctx: &mut Context) -> Result<()> {
    let _ = (event, ctx);
    Ok(())
}

mod more {
    use weir_sdk::prelude::*;

    #[weir_sdk::transform]
    fn second(event: &Event, ctx: &mut Context) -> Result<()> {
        let _ = (event, ctx);
        Ok(())
    }
}

fn main() {}
