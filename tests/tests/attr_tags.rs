//! The attribute's `tags(...)` and `fail_safe`: tags are key templates
//! naming the arguments, invalidated with `invalidate_tag`; `fail_safe`
//! serves the last good `Ok` when a recomputation returns `Err`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure, invalidate_tag};
use memo_tests::serial;

static ORDERS: AtomicU32 = AtomicU32::new(0);

#[cache_memoize(key = "order:{id}", tags("user:{user}", "orders"), ignore(user))]
fn order(id: u32, user: u32) -> String {
    ORDERS.fetch_add(1, Ordering::SeqCst);
    format!("order {id} of {user}")
}

#[test]
fn tag_templates_name_the_arguments_and_invalidate_tag_drops_them() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = || ORDERS.load(Ordering::SeqCst);
    let start = computed();
    assert_eq!(order(1, 7), "order 1 of 7");
    assert_eq!(order(2, 8), "order 2 of 8");
    assert_eq!(order(1, 7), "order 1 of 7");
    assert_eq!(computed(), start + 2);
    // User 7's entries go; user 8's stay.
    invalidate_tag("user:7", &Options::new()).unwrap();
    order(1, 7);
    order(2, 8);
    assert_eq!(computed(), start + 3);
    // Both share the other tag.
    invalidate_tag("orders", &Options::new()).unwrap();
    order(1, 7);
    order(2, 8);
    assert_eq!(computed(), start + 5);
}

static DOWN: AtomicBool = AtomicBool::new(false);

#[cache_memoize(key = "price:{sku}", expiration = 1, fail_safe = 30)]
fn price(sku: u32) -> Result<u32, String> {
    if DOWN.load(Ordering::SeqCst) {
        return Err("the price service is down".into());
    }
    Ok(sku * 100)
}

#[test]
fn fail_safe_serves_the_last_good_value_when_the_function_fails() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    DOWN.store(false, Ordering::SeqCst);
    assert_eq!(price(3), Ok(300));
    std::thread::sleep(Duration::from_millis(1_200));
    DOWN.store(true, Ordering::SeqCst);
    assert_eq!(price(3), Ok(300), "the last good value");
    // Nothing to fall back on: the error is the caller's.
    assert_eq!(price(4), Err("the price service is down".into()));
    DOWN.store(false, Ordering::SeqCst);
}
