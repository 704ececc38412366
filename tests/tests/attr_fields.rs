//! Field paths in key placeholders (`{user.id}`, `{pair.0}`,
//! `{self.cfg.region}`, `{user.id:?}`), in plain functions, `async fn` and
//! methods: the key holds the field, and an argument keyed by a field
//! counts as in the key.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure};
use memo_tests::runtime::run;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A fresh embedded cache, so each test starts from nothing.
fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-fields"));
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

struct Customer {
    id: u64,
}

struct User {
    id: u64,
    name: String,
    team: Option<u32>,
    customer: Customer,
}

fn user(id: u64, name: &str) -> User {
    User {
        id,
        name: name.to_owned(),
        team: Some(3),
        customer: Customer { id: id * 10 },
    }
}

static GREETINGS: AtomicUsize = AtomicUsize::new(0);

/// Keyed by one field: users of one id share the entry, whatever their
/// names, which is what the key says.
#[cache_memoize(key = "greet:{user.id}")]
fn greet(user: &User) -> String {
    GREETINGS.fetch_add(1, SeqCst);
    format!("hello {}", user.name)
}

#[test]
fn a_field_keys_the_entry() {
    let _serial = memo_tests::serial();
    fresh();
    let before = GREETINGS.load(SeqCst);
    assert_eq!(greet(&user(7, "ada")), "hello ada");
    assert_eq!(greet(&user(7, "bob")), "hello ada");
    assert_eq!(GREETINGS.load(SeqCst) - before, 1);
    assert_eq!(greet(&user(8, "bob")), "hello bob");
    assert_eq!(GREETINGS.load(SeqCst) - before, 2);
    assert_eq!(stored::<String>(&["greet", "7"]), "hello ada");
    // The helper takes the argument whole and keys it the same way.
    greet_invalidate(&user(7, "anyone")).unwrap();
    assert_eq!(greet(&user(7, "cy")), "hello cy");
}

static FIELDS: AtomicUsize = AtomicUsize::new(0);

/// Tuple indices, a nested path, `Debug`, and several fields in one
/// component.
#[cache_memoize(key = "f:{pair.0}:{user.customer.id}:{user.team:?}:{user.name}-{user.id}")]
fn fields(pair: (u32, String), user: User) -> String {
    FIELDS.fetch_add(1, SeqCst);
    format!("{}{}", pair.1, user.name)
}

#[test]
fn tuple_nested_and_debug_fields() {
    let _serial = memo_tests::serial();
    fresh();
    let before = FIELDS.load(SeqCst);
    assert_eq!(fields((1, "x".into()), user(2, "ada")), "xada");
    assert_eq!(fields((1, "y".into()), user(2, "ada")), "xada");
    assert_eq!(FIELDS.load(SeqCst) - before, 1);
    assert_eq!(
        stored::<String>(&["f", "1", "20", "Some(3)", "ada-2"]),
        "xada"
    );
}

struct Path<T>(T);

/// A field of a name bound in a pattern.
#[cache_memoize(key = "path:{found.id}")]
fn by_path(Path(found): Path<User>) -> String {
    FIELDS.fetch_add(1, SeqCst);
    found.name
}

#[test]
fn a_field_of_a_pattern_binding() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(by_path(Path(user(4, "ada"))), "ada");
    assert_eq!(by_path(Path(user(4, "bob"))), "ada");
    assert_eq!(stored::<String>(&["path", "4"]), "ada");
}

static PROFILES: AtomicUsize = AtomicUsize::new(0);

/// An owned `async fn`: the value moves into the body after the key is
/// built from its fields.
#[cache_memoize(key = "profile:{user.id}:{user.name:?}")]
async fn profile(user: User) -> String {
    PROFILES.fetch_add(1, SeqCst);
    format!("{}#{}", user.name, user.id)
}

/// A borrowing `async fn`.
#[cache_memoize(key = "team:{user.team:?}")]
async fn team(user: &User) -> Option<u32> {
    PROFILES.fetch_add(1, SeqCst);
    user.team
}

#[test]
fn async_fns_key_by_fields() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = PROFILES.load(SeqCst);
        assert_eq!(profile(user(1, "ada")).await, "ada#1");
        assert_eq!(profile(user(1, "ada")).await, "ada#1");
        assert_eq!(profile(user(1, "bob")).await, "bob#1");
        assert_eq!(team(&user(1, "ada")).await, Some(3));
        assert_eq!(team(&user(2, "bob")).await, Some(3));
        assert_eq!(PROFILES.load(SeqCst) - before, 3);
    });
    assert_eq!(stored::<String>(&["profile", "1", "\"bob\""]), "bob#1");
    assert_eq!(stored::<Option<u32>>(&["team", "Some(3)"]), Some(3));
}

struct Region {
    name: String,
}

struct Settings {
    region: Region,
}

struct Service {
    cfg: Settings,
    calls: AtomicUsize,
}

struct Request(u32, String);

impl Service {
    /// A nested field of the receiver and a tuple field of an argument.
    #[cache_memoize(key = "price:{self.cfg.region.name}:{req.0}")]
    fn price(&self, req: Request) -> u64 {
        self.calls.fetch_add(1, SeqCst);
        u64::from(req.0) * 2
    }

    /// An async method keyed by a field of an argument.
    #[cache_memoize(key = "label:{self.cfg.region.name}:{req.1}")]
    async fn label(&self, req: &Request) -> String {
        self.calls.fetch_add(1, SeqCst);
        req.1.to_uppercase()
    }
}

/// A tuple struct as the receiver.
struct Tenant(String);

impl Tenant {
    #[cache_memoize(key = "tenant:{self.0}:{n}")]
    fn quota(&self, n: u32) -> String {
        format!("{}:{n}", self.0)
    }
}

#[test]
fn methods_key_by_fields_of_self_and_arguments() {
    let _serial = memo_tests::serial();
    fresh();
    let service = Service {
        cfg: Settings {
            region: Region { name: "eu".into() },
        },
        calls: AtomicUsize::new(0),
    };
    assert_eq!(service.price(Request(3, "a".into())), 6);
    assert_eq!(service.price(Request(3, "b".into())), 6);
    assert_eq!(service.calls.load(SeqCst), 1);
    assert_eq!(stored::<u64>(&["price", "eu", "3"]), 6);
    run(async {
        assert_eq!(service.label(&Request(1, "x".into())).await, "X");
        assert_eq!(service.label(&Request(2, "x".into())).await, "X");
    });
    assert_eq!(service.calls.load(SeqCst), 2);
    assert_eq!(stored::<String>(&["label", "eu", "x"]), "X");

    assert_eq!(Tenant("acme".into()).quota(5), "acme:5");
    assert_eq!(stored::<String>(&["tenant", "acme", "5"]), "acme:5");
}
