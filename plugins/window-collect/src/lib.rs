//! A window aggregate that shows what each window received: the number of events, the sum of
//! their `Value` fields and their `Id`s in the order they were folded. The golden window tests
//! use it, because its output can be worked out by hand; it is also the smallest complete window
//! plugin.
//!
//! An event with `"Panic": true` makes `fold` panic (a trap), to show that the host isolates the
//! poison event and keeps the window; an event without a numeric `Value` is rejected.

use weir_sdk::prelude::*;

/// What a window has seen so far.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    /// Events folded.
    pub count: u64,
    /// Sum of their `Value`s.
    pub sum: f64,
    /// Their `Id`s, in fold order.
    pub ids: Vec<String>,
}

/// The fields of an input event this plugin reads.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Input {
    id: String,
    value: f64,
    #[serde(default)]
    panic: bool,
}

#[weir_sdk::window]
impl Aggregate for Collected {
    fn fold(&mut self, event: &Event, _ctx: &mut Context) -> Result<()> {
        let input: Input = event.json()?;
        if input.panic {
            panic!("asked to panic by event {}", input.id);
        }
        self.count += 1;
        self.sum += input.value;
        self.ids.push(input.id);
        Ok(())
    }

    fn finish(self, _window: &Window, ctx: &mut Context) -> Result<()> {
        ctx.emit(
            "windows",
            &weir_sdk::serde_json::json!({ "Count": self.count, "Sum": self.sum, "Ids": self.ids }),
        )
    }
}
