use weir_sdk::prelude::*;

/// The host stores accumulators as bytes: this one cannot be serialised.
#[derive(Default, Clone)]
struct Count(u64);

#[weir_sdk::window]
impl Aggregate for Count {
    fn fold(&mut self, _event: &Event, _ctx: &mut Context) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn finish(self, _window: &Window, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
