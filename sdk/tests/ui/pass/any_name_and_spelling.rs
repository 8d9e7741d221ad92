use weir_sdk::prelude::*;

#[weir_sdk::transform]
fn enrich<'a>(_event: &weir_sdk::Event<'a>, _: &mut weir_sdk::Context) -> weir_sdk::Result<()> {
    Ok(())
}

fn main() {
    let _ = weir_sdk::testing::Harness::new(enrich).run("{}");
}
