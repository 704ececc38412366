//! Functions whose signature borrows keep compiling with `stale` and
//! `refresh_ahead`: their refresh runs in the foreground, as the borrowed
//! calls do; owned signatures use the owned calls, `local` included.
#![allow(dead_code)]

use std::borrow::Cow;
use std::rc::Rc;

use memo_runtime::cache_memoize;

#[cache_memoize(key = "name:{name}", stale = 60)]
fn by_name(name: &str) -> String {
    name.to_owned()
}

#[cache_memoize(key = "cow:{name}", refresh_ahead)]
fn by_cow(name: Cow<'_, str>) -> String {
    name.into_owned()
}

#[cache_memoize(key = "generic:{x}", stale = 60, refresh_ahead = 2.0)]
fn generic<T: std::fmt::Display>(x: T) -> String {
    x.to_string()
}

// Not `Send`, and ignored in the key: written as a reference, so the
// foreground refresh serves it.
#[cache_memoize(key = "rc:{id}", stale = 60, ignore(db))]
fn with_db(id: u64, db: &Rc<u8>) -> u64 {
    id + u64::from(**db)
}

struct Store {
    base: u64,
}

impl Store {
    #[cache_memoize(key = "store:{id}", stale = 60, local = 5)]
    fn get(&self, id: u64) -> u64 {
        self.base + id
    }

    #[cache_memoize(key = "store-async:{id}", stale = 60)]
    async fn fetch(&self, id: u64) -> u64 {
        self.base + id
    }
}

#[cache_memoize(key = "owned:{id}", stale = 60, local = 5)]
fn owned(id: u64) -> Result<Vec<u64>, String> {
    Ok(vec![id])
}

#[cache_memoize(key = "owned-async:{id}", local = 5)]
async fn owned_async(id: u64) -> Vec<u64> {
    vec![id]
}

#[cache_memoize(key = "borrowed-async:{name}", stale = 60)]
async fn borrowed_async(name: &str) -> Result<String, String> {
    Ok(name.to_owned())
}

fn main() {}
