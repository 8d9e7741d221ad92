use weir_sdk::prelude::*;

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count(u64);

#[weir_sdk::window]
impl Aggregate for Count {
    fn fold(&mut self, _event: &Event) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn finish(self, _window: &Window, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
