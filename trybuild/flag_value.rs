use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer", encrypt = 1, large_data(yes))]
fn answer() -> u32 {
    42
}

fn main() {
    answer();
}
