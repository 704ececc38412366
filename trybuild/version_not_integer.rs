use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer", version = "2")]
fn answer() -> u32 {
    42
}

fn main() {
    answer();
}
