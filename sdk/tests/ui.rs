//! A wrong `#[weir_sdk::transform]` function or `#[weir_sdk::window]` implementation is reported
//! at the author's code, saying what is expected. The expected compiler output is checked in next to each case (`ui/*.stderr`);
//! regenerate it with `TRYBUILD=overwrite cargo test -p weir-sdk --test ui` and review the diff.

#[test]
fn wrong_plugin_functions_and_impls_are_reported_at_the_authors_code() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/*.rs");
}
