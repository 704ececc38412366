use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer")]
async fn answer() -> u32 {
    42
}

fn main() {
    let _ = answer();
}
