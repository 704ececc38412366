use memo_runtime::cache_memoize;

#[cache_memoize(key = "a:{n}", coalesce = "no")]
fn quoted(n: u8) -> u8 {
    n
}

#[cache_memoize(key = "b:{n}", coalese = false)]
fn misspelt(n: u8) -> u8 {
    n
}

#[cache_memoize(key = "c:{n}", single_flight = false)]
fn other_name(n: u8) -> u8 {
    n
}

#[cache_memoize(key = "d:{n}", coalesce(false))]
fn called(n: u8) -> u8 {
    n
}

#[cache_memoize(key = "e:{n}", coalesce = false)]
fn items(n: u8) -> impl Iterator<Item = u8> {
    0..n
}

fn main() {
    let _ = quoted(1) + misspelt(1) + other_name(1) + called(1);
    let _ = items(1).count();
}
