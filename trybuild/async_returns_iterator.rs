use memo_runtime::{cache_memoize, cache_memoize_iter};

#[cache_memoize(key = "digits:{n}")]
async fn digits(n: u8) -> impl Iterator<Item = u8> {
    0..n
}

#[cache_memoize_iter(key = "squares:{n}")]
async fn squares(n: u8) -> Vec<u8> {
    (0..n).map(|i| i * i).collect()
}

fn main() {
    let _ = digits(3);
    let _ = squares(3);
}
