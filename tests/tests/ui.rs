//! Compile-fail snapshots of every error `#[cache_memoize]` reports, and
//! programs that must compile however they name their own items.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("../trybuild/*.rs");
    cases.pass("../trybuild/pass/*.rs");
}
