use std::future::Future;

use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer")]
fn answer() -> impl Future<Output = u32> {
    async { 42 }
}

fn main() {
    let _ = answer();
}
