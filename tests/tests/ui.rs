//! Compile-fail snapshots of every error `#[cache_memoize]` reports, and
//! programs that must compile however they name their own items. Both live
//! in the workspace's top-level `trybuild/` folder.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("../trybuild/*.rs");
    cases.pass("../trybuild/pass/*.rs");
}
