use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer", expiration = "soon")]
fn answer() -> u32 {
    42
}

fn main() {
    answer();
}
