//! Arguments written as patterns (`Path(id): Path<u32>`, `(a, b): (u32,
//! String)`, `Query(Params { page, .. }): Query<Params>`): the names they
//! bind key the cache, in plain functions, `async fn` and methods, and the
//! body sees the pattern as written.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure};
use memo_tests::runtime::run;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A fresh embedded cache, so each test starts from nothing.
fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-patterns"));
}

/// Reads `key` through the functional API, panicking on a miss: proves the
/// attribute stored exactly there.
fn stored<T: Serialize + DeserializeOwned>(key: &[&str]) -> T {
    cache_memoize(
        key,
        || panic!("nothing stored under {key:?}"),
        &Options::new(),
    )
}

/// Extractors as a web framework has them: a wrapper around what they
/// extract, destructured in the handler's signature.
struct Path<T>(T);
struct Query<T>(T);

struct Params {
    page: u32,
    per_page: u32,
    tag: String,
}

fn query(page: u32, per_page: u32, tag: &str) -> Query<Params> {
    Query(Params {
        page,
        per_page,
        tag: tag.to_owned(),
    })
}

static REPORTS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "report:{id}")]
fn report(Path(id): Path<u32>) -> String {
    REPORTS.fetch_add(1, SeqCst);
    format!("report #{id}")
}

#[test]
fn a_tuple_struct_pattern_keys_by_its_binding() {
    let _serial = memo_tests::serial();
    fresh();
    let before = REPORTS.load(SeqCst);
    assert_eq!(report(Path(7)), "report #7");
    assert_eq!(report(Path(7)), "report #7");
    assert_eq!(REPORTS.load(SeqCst) - before, 1);
    assert_eq!(report(Path(8)), "report #8");
    assert_eq!(REPORTS.load(SeqCst) - before, 2);
    assert_eq!(stored::<String>(&["report", "7"]), "report #7");

    // The helpers take the argument as the function does.
    report_invalidate(Path(7)).unwrap();
    assert_eq!(report(Path(7)), "report #7");
    assert_eq!(REPORTS.load(SeqCst) - before, 3);
    assert_eq!(report_refresh(Path(7)), "report #7");
    assert_eq!(REPORTS.load(SeqCst) - before, 4);
}

static PAIRS: AtomicUsize = AtomicUsize::new(0);

/// A tuple, one of whose bindings is `mut`: the body sees it as written.
#[cache_memoize(key = "pair:{a}:{b}")]
fn pair((a, mut b): (u32, String)) -> String {
    PAIRS.fetch_add(1, SeqCst);
    b.push('!');
    format!("{a}{b}")
}

#[test]
fn a_tuple_pattern_keys_by_every_binding() {
    let _serial = memo_tests::serial();
    fresh();
    let before = PAIRS.load(SeqCst);
    assert_eq!(pair((1, "x".into())), "1x!");
    assert_eq!(pair((1, "x".into())), "1x!");
    assert_eq!(pair((1, "y".into())), "1y!");
    assert_eq!(pair((2, "x".into())), "2x!");
    assert_eq!(PAIRS.load(SeqCst) - before, 3);
    assert_eq!(stored::<String>(&["pair", "1", "y"]), "1y!");
}

static PAGES: AtomicUsize = AtomicUsize::new(0);

/// A struct pattern inside a tuple struct, with a binding left out of the
/// key on purpose and fields the pattern does not bind.
#[cache_memoize(key = "page:{page}:{tag}", ignore(per_page))]
fn page(
    Query(Params {
        page,
        tag,
        per_page,
    }): Query<Params>,
) -> Vec<u32> {
    PAGES.fetch_add(1, SeqCst);
    let _ = tag;
    (page * per_page..page * per_page + 2).collect()
}

#[test]
fn a_struct_pattern_keys_by_its_bindings_and_ignores_what_it_is_told() {
    let _serial = memo_tests::serial();
    fresh();
    let before = PAGES.load(SeqCst);
    assert_eq!(page(query(2, 10, "a")), [20, 21]);
    assert_eq!(
        page(query(2, 50, "a")),
        [20, 21],
        "`per_page` is ignored: one entry"
    );
    assert_eq!(page(query(2, 10, "b")), [20, 21]);
    assert_eq!(PAGES.load(SeqCst) - before, 2);
    assert_eq!(stored::<Vec<u32>>(&["page", "2", "b"]), [20, 21]);
    // `_invalidate` takes the argument whole; the ignored field is not read.
    page_invalidate(query(2, 99, "a")).unwrap();
    assert_eq!(page(query(2, 10, "a")), [20, 21]);
    assert_eq!(PAGES.load(SeqCst) - before, 3);
}

static DEFAULTED: AtomicUsize = AtomicUsize::new(0);

/// No key: the default one holds every binding, in order.
#[cache_memoize]
fn defaulted(Query(Params { page, .. }): Query<Params>, (a, b): (u8, u8)) -> u32 {
    DEFAULTED.fetch_add(1, SeqCst);
    page + u32::from(a) + u32::from(b)
}

#[test]
fn the_default_key_holds_every_binding() {
    let _serial = memo_tests::serial();
    fresh();
    let before = DEFAULTED.load(SeqCst);
    assert_eq!(defaulted(query(1, 0, ""), (2, 3)), 6);
    assert_eq!(defaulted(query(1, 9, "x"), (2, 3)), 6);
    assert_eq!(DEFAULTED.load(SeqCst) - before, 1);
    assert_eq!(defaulted(query(1, 0, ""), (3, 2)), 6);
    assert_eq!(DEFAULTED.load(SeqCst) - before, 2);
    assert_eq!(
        stored::<u32>(&[module_path!(), "defaulted", "1", "3", "2"]),
        6
    );
}

static OWNED: AtomicUsize = AtomicUsize::new(0);

/// An owned signature with `stale`: the owned runtime call, whose closure
/// takes the bindings by value.
#[cache_memoize(key = "owned:{a}:{b}", stale = 60)]
fn owned((a, b): (u32, String)) -> String {
    OWNED.fetch_add(1, SeqCst);
    format!("{a}-{b}")
}

/// A borrowed argument destructured by reference.
#[cache_memoize(key = "borrowed:{x}:{y}")]
fn borrowed(&(x, y): &(u8, u8)) -> u16 {
    OWNED.fetch_add(1, SeqCst);
    u16::from(x) * u16::from(y)
}

/// A `ref` binding borrows from the argument, so the signature is not
/// owned even though its types are: the borrowed call, with `stale`.
#[cache_memoize(key = "by-ref:{name}:{n}", stale = 60)]
fn by_ref((ref name, n): (String, u32)) -> String {
    OWNED.fetch_add(1, SeqCst);
    name.repeat(n as usize)
}

#[test]
fn owned_and_borrowed_patterns_work() {
    let _serial = memo_tests::serial();
    fresh();
    let before = OWNED.load(SeqCst);
    assert_eq!(owned((1, "a".into())), "1-a");
    assert_eq!(owned((1, "a".into())), "1-a");
    assert_eq!(borrowed(&(3, 4)), 12);
    assert_eq!(borrowed(&(3, 4)), 12);
    assert_eq!(by_ref(("ab".into(), 2)), "abab");
    assert_eq!(by_ref(("ab".into(), 2)), "abab");
    assert_eq!(OWNED.load(SeqCst) - before, 3);
    assert_eq!(stored::<u16>(&["borrowed", "3", "4"]), 12);
}

static USERS: AtomicUsize = AtomicUsize::new(0);

/// An owned `async fn` (the owned async call) returning a `Result`.
#[cache_memoize(key = "user:{id}:{lang}")]
async fn user(Path((id, lang)): Path<(u64, String)>) -> Result<String, String> {
    USERS.fetch_add(1, SeqCst);
    if id == 0 {
        return Err("no user 0".into());
    }
    Ok(format!("{lang}:{id}"))
}

/// A borrowing `async fn`: the borrowed async call.
#[cache_memoize(key = "name:{first}:{last}")]
async fn name((first, last): &(String, String)) -> String {
    USERS.fetch_add(1, SeqCst);
    format!("{first} {last}")
}

#[test]
fn async_fns_take_patterns() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = USERS.load(SeqCst);
        assert_eq!(user(Path((5, "en".into()))).await.unwrap(), "en:5");
        assert_eq!(user(Path((5, "en".into()))).await.unwrap(), "en:5");
        assert_eq!(user(Path((5, "fr".into()))).await.unwrap(), "fr:5");
        assert_eq!(USERS.load(SeqCst) - before, 2);
        assert!(user(Path((0, "en".into()))).await.is_err());
        assert_eq!(stored::<String>(&["user", "5", "fr"]), "fr:5");

        user_invalidate(Path((5, "en".into()))).await.unwrap();
        assert_eq!(user(Path((5, "en".into()))).await.unwrap(), "en:5");
        assert_eq!(USERS.load(SeqCst) - before, 4);

        let ada = ("Ada".to_owned(), "Lovelace".to_owned());
        assert_eq!(name(&ada).await, "Ada Lovelace");
        assert_eq!(name(&ada).await, "Ada Lovelace");
        assert_eq!(USERS.load(SeqCst) - before, 5);
        assert_eq!(
            stored::<String>(&["name", "Ada", "Lovelace"]),
            "Ada Lovelace"
        );
    });
}

struct Shop {
    tenant: String,
    calls: AtomicUsize,
}

impl Shop {
    /// A method: the receiver and a destructured argument in the key.
    #[cache_memoize(key = "price:{self.tenant}:{sku}:{qty}")]
    fn price(&self, (sku, qty): (String, u32)) -> u64 {
        self.calls.fetch_add(1, SeqCst);
        sku.len() as u64 * u64::from(qty)
    }

    /// An async method with the default key.
    #[cache_memoize]
    async fn stock(&self, Path(sku): Path<String>) -> u32 {
        self.calls.fetch_add(1, SeqCst);
        sku.len() as u32
    }
}

trait Catalog {
    fn title(&self, ids: (u32, u32)) -> String;
}

impl Catalog for Shop {
    /// A trait method: no helpers, the body stays in the method.
    #[cache_memoize(key = "title:{a}:{b}", helpers = false)]
    fn title(&self, (a, b): (u32, u32)) -> String {
        self.calls.fetch_add(1, SeqCst);
        format!("{a}/{b}")
    }
}

#[test]
fn methods_take_patterns() {
    let _serial = memo_tests::serial();
    fresh();
    let shop = Shop {
        tenant: "acme".into(),
        calls: AtomicUsize::new(0),
    };
    assert_eq!(shop.price(("abc".into(), 2)), 6);
    assert_eq!(shop.price(("abc".into(), 2)), 6);
    assert_eq!(shop.price(("abc".into(), 3)), 9);
    assert_eq!(shop.calls.load(SeqCst), 2);
    assert_eq!(stored::<u64>(&["price", "acme", "abc", "3"]), 9);
    shop.price_invalidate(("abc".into(), 2)).unwrap();
    assert_eq!(shop.price_refresh(("abc".into(), 2)), 6);
    assert_eq!(shop.calls.load(SeqCst), 3);

    run(async {
        assert_eq!(shop.stock(Path("abcd".into())).await, 4);
        assert_eq!(shop.stock(Path("abcd".into())).await, 4);
        assert_eq!(shop.calls.load(SeqCst), 4);
    });
    assert_eq!(
        stored::<u32>(&[std::any::type_name::<Shop>(), "stock", "abcd"]),
        4
    );
    assert_eq!(shop.title((1, 2)), "1/2");
    assert_eq!(shop.title((1, 2)), "1/2");
    assert_eq!(shop.calls.load(SeqCst), 5);
    assert_eq!(stored::<String>(&["title", "1", "2"]), "1/2");
}
