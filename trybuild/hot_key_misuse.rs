use memo_runtime::cache_memoize;

#[cache_memoize(key = "a:{n}", refresh_ahead = -1.0, stale = "soon")]
fn bad_values(n: u8) -> u8 {
    n
}

#[cache_memoize(key = "b:{n}", swr = 30, xfetch)]
fn other_names(n: u8) -> u8 {
    n
}

#[cache_memoize(key = "c:{n}", local = 60)]
fn items(n: u8) -> impl Iterator<Item = u8> {
    0..n
}

#[cache_memoize(key = "d:{n}", large_data, stale = 60)]
fn large(n: u8) -> Vec<u8> {
    vec![n]
}

fn main() {
    let _ = bad_values(1) + other_names(1);
    let _ = items(1).count();
    let _ = large(1);
}
