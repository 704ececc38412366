use memo_runtime::cache_memoize;

#[cache_memoize(key = "answer", expiraton = 60)]
fn answer() -> u32 {
    42
}

#[cache_memoize(key = "other", ttl = 60)]
fn other() -> u32 {
    42
}

fn main() {
    answer();
    other();
}
