use memo_runtime::cache_memoize;

#[cache_memoize(key = "label")]
fn label() -> impl std::fmt::Display {
    42
}

fn main() {
    let _ = label();
}
