use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn process(event: &Event, ctx: &mut Context) {
    ctx.forward("out");
    let _ = event;
}

fn main() {}
