//! Compile-fail snapshots of every error `#[cache_memoize]` reports, and
//! programs that must compile however they name their own items.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
    cases.pass("ui/pass/*.rs");
}
