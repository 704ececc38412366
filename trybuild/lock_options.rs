use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer", lock(timout = 5, retry = "fast"))]
fn answer() -> u32 {
    42
}

fn main() {
    answer();
}
