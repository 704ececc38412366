use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer")]
const fn answer() -> u32 {
    42
}

fn main() {
    answer();
}
