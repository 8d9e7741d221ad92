#[weir_sdk::transform]
struct Process;

fn main() {}
