use memo_runtime::cache_memoize;

fn is_long(text: &String) -> bool {
    text.len() > 3
}

fn score(n: &u64) -> u8 {
    (*n % 7) as u8
}

fn is_ok(result: &Result<u64, String>) -> bool {
    result.is_ok()
}

const THRESHOLD: u64 = 3;

/// The predicate takes another type.
#[cache_memoize(key = "a:{n}", cache_if = is_long)]
fn a(n: u64) -> u64 {
    n
}

/// The predicate returns no `bool`.
#[cache_memoize(key = "b:{n}", cache_if = score)]
fn b(n: u64) -> u64 {
    n
}

/// For a `Result`, the predicate sees the `Ok` value, not the `Result`.
#[cache_memoize(key = "c:{n}", cache_if = is_ok)]
async fn c(n: u64) -> Result<u64, String> {
    Ok(n)
}

/// Not a function at all.
#[cache_memoize(key = "d:{n}", cache_if = THRESHOLD, stale = 60)]
fn d(n: u64) -> u64 {
    n
}

fn main() {
    a(1);
    b(1);
    let _ = c(1);
    d(1);
}
