//! The SDK crates carry copies of the plugin contract (`sdk/wit/plugin.wit`,
//! `sdk/macros/wit/plugin.wit`) so that they build outside this repository; `wit/plugin.wit`, which
//! the host's `bindgen!` reads, stays the one source. This test fails when a copy differs from it.

use std::path::Path;

#[test]
fn the_sdk_crates_carry_the_hosts_contract_unchanged() {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = sdk.join("../wit/plugin.wit");
    let contract = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("cannot read the contract {}: {e}", source.display()));
    for copy in ["wit/plugin.wit", "macros/wit/plugin.wit"] {
        let path = sdk.join(copy);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read the copy {}: {e}", path.display()));
        assert!(
            text == contract,
            "sdk/{copy} differs from wit/plugin.wit: run scripts/sync-wit"
        );
    }
}
