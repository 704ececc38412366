//! Methods, generics, where clauses, lifetimes and trait impls keep working
//! under the attribute.

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-methods"));
}

fn stored<T: Serialize + DeserializeOwned>(key: &[&str]) -> T {
    cache_memoize(
        key,
        || panic!("nothing stored under {key:?}"),
        &Options::new(),
    )
}

struct Service {
    tenant: String,
    calls: AtomicUsize,
    log: Vec<String>,
}

impl Service {
    fn new(tenant: &str) -> Self {
        Service {
            tenant: tenant.to_owned(),
            calls: AtomicUsize::new(0),
            log: Vec::new(),
        }
    }

    /// Keyed by a field of `self` and an argument.
    #[cache_memoize(key = "price:{self.tenant}:{sku}")]
    pub fn price(&self, sku: &str) -> u64 {
        self.calls.fetch_add(1, SeqCst);
        sku.len() as u64 * 100
    }

    /// A `&mut self` method, default key.
    #[cache_memoize(key = "record:{self.tenant}:{event}")]
    fn record(&mut self, event: String) -> usize {
        self.log.push(event);
        self.log.len()
    }

    /// No key: the `Self` type, the method name and the arguments.
    #[cache_memoize]
    fn describe(&self, n: u8) -> String {
        self.calls.fetch_add(1, SeqCst);
        format!("{} #{n}", self.tenant)
    }
}

#[test]
fn ref_self_methods_are_memoized_per_field_value() {
    let _serial = memo_tests::serial();
    fresh();
    let acme = Service::new("acme");
    let globex = Service::new("globex");
    assert_eq!(acme.price("abc"), 300);
    assert_eq!(acme.price("abc"), 300);
    assert_eq!(acme.calls.load(SeqCst), 1);
    assert_eq!(globex.price("abc"), 300);
    assert_eq!(
        globex.calls.load(SeqCst),
        1,
        "another tenant, another entry"
    );
    assert_eq!(stored::<u64>(&["price", "acme", "abc"]), 300);
}

#[test]
fn mut_self_methods_work() {
    let _serial = memo_tests::serial();
    fresh();
    let mut service = Service::new("t");
    assert_eq!(service.record("a".into()), 1);
    assert_eq!(
        service.record("a".into()),
        1,
        "cached: the body did not run"
    );
    assert_eq!(service.log, ["a"]);
    assert_eq!(service.record("b".into()), 2);
}

#[test]
fn default_key_of_a_method_names_its_type() {
    let _serial = memo_tests::serial();
    fresh();
    let service = Service::new("t");
    assert_eq!(service.describe(1), "t #1");
    assert_eq!(service.describe(1), "t #1");
    assert_eq!(service.calls.load(SeqCst), 1);
    let type_name = std::any::type_name::<Service>();
    assert_eq!(stored::<String>(&[type_name, "describe", "1"]), "t #1");
}

static GENERIC: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "labelled:{label}:{value}")]
fn labelled<'a, T>(label: &'a str, value: T) -> String
where
    T: Display + Copy,
{
    GENERIC.fetch_add(1, SeqCst);
    format!("{label}={value}")
}

#[test]
fn generics_lifetimes_and_where_clauses() {
    let _serial = memo_tests::serial();
    fresh();
    let before = GENERIC.load(SeqCst);
    assert_eq!(labelled("x", 1u8), "x=1");
    assert_eq!(labelled("x", 1u8), "x=1");
    assert_eq!(labelled("y", 2.5f64), "y=2.5");
    assert_eq!(GENERIC.load(SeqCst) - before, 2);
}

#[cache_memoize(key = "parsed:{text}")]
fn parse_as<T: std::str::FromStr + Serialize + DeserializeOwned>(text: &str) -> Option<T> {
    text.parse().ok()
}

#[test]
fn generic_return_types() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(parse_as::<u32>("12"), Some(12));
    assert_eq!(parse_as::<u32>("12"), Some(12));
}

#[cache_memoize(key = "shown:{value}")]
fn shown(value: impl Display) -> String {
    value.to_string()
}

#[test]
fn impl_trait_arguments() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(shown(5), "5");
    assert_eq!(shown("five"), "five");
}

trait Catalog {
    fn title(&self, id: u32) -> String;

    /// A default method may be memoized too (its helpers join the trait).
    #[cache_memoize(key = "summary:{id}")]
    fn summary(&self, id: u32) -> String {
        format!("[{}]", self.title(id))
    }
}

struct Books(AtomicUsize);

impl Catalog for Books {
    /// In a trait impl no extra method may be added: `helpers = false`.
    #[cache_memoize(key = "book:{id}", helpers = false)]
    fn title(&self, id: u32) -> String {
        self.0.fetch_add(1, SeqCst);
        format!("book {id}")
    }
}

#[test]
fn trait_methods() {
    let _serial = memo_tests::serial();
    fresh();
    let books = Books(AtomicUsize::new(0));
    assert_eq!(books.title(1), "book 1");
    assert_eq!(books.title(1), "book 1");
    assert_eq!(books.0.load(SeqCst), 1);
    assert_eq!(books.summary(1), "[book 1]");
    assert_eq!(stored::<String>(&["summary", "1"]), "[book 1]");
}

struct Repo;

impl Repo {
    /// An associated function without `self`: gives a key, and no helpers.
    #[cache_memoize(key = "repo-count:{tenant}", helpers = false)]
    pub fn count(tenant: &str) -> usize {
        tenant.len()
    }
}

#[test]
fn associated_functions() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(Repo::count("abcd"), 4);
    assert_eq!(stored::<usize>(&["repo-count", "abcd"]), 4);
}

mod nested {
    use memo_runtime::cache_memoize;

    #[cache_memoize(key = "visible:{x}")]
    pub(crate) fn visible(x: u8) -> u8 {
        x + 1
    }
}

#[test]
fn visibility_reaches_the_helpers() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(nested::visible(1), 2);
    nested::visible_invalidate(1).unwrap();
    assert_eq!(nested::visible_refresh(1), 2);
}
