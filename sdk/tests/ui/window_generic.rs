use weir_sdk::prelude::*;

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count<T>(Vec<T>);

#[weir_sdk::window]
impl<T: Default + Clone + Serialize + serde::de::DeserializeOwned + 'static> Aggregate for Count<T> {
    fn fold(&mut self, _event: &Event, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }
    fn finish(self, _window: &Window, _ctx: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
