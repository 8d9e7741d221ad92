use weir_sdk::prelude::*;

#[derive(Default, Serialize, Deserialize)]
struct Count(u64);

#[weir_sdk::window]
impl Clone for Count {
    fn clone(&self) -> Self {
        Count(self.0)
    }
}

fn main() {}
