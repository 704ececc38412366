use memo_runtime::cache_memoize;

const SPREAD: u32 = 1;

#[cache_memoize(key = "a:{n}", jitter = 1.5)]
fn a(n: u64) -> u64 {
    n
}

#[cache_memoize(key = "b:{n}", jitter = -0.1)]
fn b(n: u64) -> u64 {
    n
}

#[cache_memoize(key = "c:{n}", jitter = "10%")]
fn c(n: u64) -> u64 {
    n
}

#[cache_memoize(key = "d:{n}", jitter = SPREAD)]
fn d(n: u64) -> u64 {
    n
}

fn main() {
    a(1);
    b(1);
    c(1);
    d(1);
}
