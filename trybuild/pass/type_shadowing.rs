//! The expansion names nothing that a user's own items can capture.
#![allow(dead_code, non_camel_case_types, unused_macros, unused_imports)]

struct Result;
struct Option;
struct String;
struct Vec;
struct Box;
struct Duration;
struct Options;
struct LockOptions;
struct CacheKey;
struct bool;
trait ToString {}
trait FromIterator {}
trait Serialize {}
trait DeserializeOwned {}
mod serde {}
mod log {}
mod core {}
mod memo_runtime {}
macro_rules! format {
    ($($t:tt)*) => {
        compile_error!("the user's format! was used")
    };
}
macro_rules! module_path {
    () => {
        compile_error!("the user's module_path! was used")
    };
}
fn type_name() {}
fn cache_memoize() {}
fn try_cache_memoize() {}
fn cache_memoize_iter() {}
fn invalidate() {}
fn cache_memoize_async() {}
fn try_cache_memoize_async() {}
fn invalidate_async() {}
struct Future;
struct Pin;
struct MemoStream;
fn cache_memoize_stream() {}
fn memoize_stream() {}

#[::memo_runtime::cache_memoize(key = "plain:{n}:x{n}y:{n:?}", expiration = 60, lock(timeout = 1, retry = 5))]
fn plain(n: u32) -> u64 {
    u64::from(n)
}

#[::memo_runtime::cache_memoize]
fn default_key(a: u8, b: &str) -> u8 {
    a + b.len() as u8
}

#[::memo_runtime::cache_memoize(key = "fallible:{n}", version = 2)]
fn fallible(n: u32) -> std::result::Result<u32, std::string::String> {
    std::result::Result::Ok(n)
}

#[::memo_runtime::cache_memoize(key = "items:{n}", large_data, compress = false, encrypt)]
fn items(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

#[::memo_runtime::cache_memoize_iter(key = "collected:{n}")]
fn collected(n: u32) -> std::vec::Vec<u32> {
    (0..n).collect()
}

#[::memo_runtime::cache_memoize(key = "boxed:{n}")]
fn boxed(n: u32) -> std::boxed::Box<dyn Iterator<Item = u32>> {
    std::boxed::Box::new(0..n)
}

/// Parameters named like the expansion's own locals and refresh argument.
#[::memo_runtime::cache_memoize(key = "locals:{__memo_key}:{__memo_options}:{__memo_refresh}")]
fn locals(__memo_key: u8, __memo_options: u8, __memo_refresh: u8) -> u8 {
    __memo_key + __memo_options + __memo_refresh
}

#[::memo_runtime::cache_memoize(key = "async:{n}", coalesce = false)]
async fn asynchronous(n: u32) -> u64 {
    u64::from(n)
}

#[::memo_runtime::cache_memoize(key = "async-fallible:{text}")]
async fn async_fallible(text: &str) -> std::result::Result<u32, std::num::ParseIntError> {
    let n: u32 = text.parse()?;
    std::result::Result::Ok(n)
}

/// A source stream for stream mode.
struct Count(u32);

impl futures_core::Stream for Count {
    type Item = u32;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::option::Option<u32>> {
        std::task::Poll::Ready(std::option::Option::None)
    }
}

#[::memo_runtime::cache_memoize(key = "stream:{n}", large_data, compress = false)]
fn counted(n: u32) -> impl futures_core::Stream<Item = u32> {
    Count(n)
}

struct Service;

impl Service {
    #[::memo_runtime::cache_memoize]
    fn method(&self, n: u8) -> u8 {
        n
    }

    #[::memo_runtime::cache_memoize]
    async fn async_method(&self, n: u8) -> u8 {
        n
    }
}

fn main() {
    let _ = plain(1);
    let _ = default_key(1, "x");
    let _ = fallible(1);
    let _ = items(1).count();
    let _ = collected(1);
    let _ = boxed(1).count();
    let _ = locals(1, 2, 3);
    let _ = locals_refresh(1, 2, 3);
    let _ = Service.method(1);
    let _ = plain_invalidate(1);
    let _ = plain_refresh(1);
    let _ = Service.method_invalidate(1);
    let _ = Service.method_refresh(1);
    let _ = asynchronous(1);
    let _ = asynchronous_invalidate(1);
    let _ = asynchronous_refresh(1);
    let _ = async_fallible("1");
    let _ = Service.async_method(1);
    let _ = Service.async_method_invalidate(1);
    let _ = Service.async_method_refresh(1);
    let _ = counted(1);
    let _ = counted_invalidate(1);
    let _ = counted_refresh(1);
}
