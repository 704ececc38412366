use memo_runtime::cache_memoize;

macro_rules! point {
    () => {
        (x, y)
    };
}

#[cache_memoize]
fn distance((x, y): (i64, i64), _: u8, (_, _): (u8, u8)) -> i64 {
    x.abs() + y.abs()
}

#[cache_memoize]
fn hidden(point!(): (i64, i64)) -> i64 {
    x + y
}

fn main() {
    distance((3, 4), 0, (1, 2));
    hidden((3, 4));
}
