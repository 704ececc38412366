use memo_runtime::cache_memoize;

#[cache_memoize(key = "warm")]
fn warm() {
    println!("warming");
}

#[cache_memoize(key = "unit")]
fn unit() -> () {}

fn main() {
    warm();
    unit();
}
