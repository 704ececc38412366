use memo_runtime::cache_memoize;

#[cache_memoize(key = "config")]
struct Config {
    name: String,
}

fn main() {}
