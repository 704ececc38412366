use memo_runtime::cache_memoize;

#[cache_memoize(key = "price:{sku}", fail_safe = 60)]
fn price(sku: u32) -> u32 {
    sku * 100
}

fn main() {
    price(1);
}
