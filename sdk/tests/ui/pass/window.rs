use weir_sdk::prelude::*;
use weir_sdk::testing::{TestEvent, TestWindow, WindowHarness};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Count(u64);

#[weir_sdk::window]
impl weir_sdk::Aggregate for Count {
    fn fold(&mut self, _event: &weir_sdk::Event<'_>, _ctx: &mut weir_sdk::Context) -> weir_sdk::Result<()> {
        self.0 += 1;
        Ok(())
    }
    fn finish(self, window: &Window<'_>, ctx: &mut Context) -> Result<()> {
        ctx.emit("counts", &serde_json::json!({ "Count": self.0, "Start": window.start() }))
    }
}

fn main() {
    let mut harness = WindowHarness::<Count>::new();
    let window = TestWindow::new(serde_json::json!({}), 0, 10);
    let outcome = harness.window(&window, [TestEvent::new("{}"), TestEvent::new("{}")]);
    assert_eq!(outcome.json("counts")[0]["Count"], 2);
}
