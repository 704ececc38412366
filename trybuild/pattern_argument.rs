use memo_runtime::cache_memoize;

#[cache_memoize]
fn distance((x, y): (i64, i64), _: u8) -> i64 {
    x.abs() + y.abs()
}

fn main() {
    distance((3, 4), 0);
}
