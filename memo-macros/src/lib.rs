//! The `#[cache_memoize]` and `#[cache_memoize_iter]` attributes of
//! [memo-runtime](https://docs.rs/memo-runtime). Depend on `memo-runtime`,
//! which re-exports them: `use memo_runtime::cache_memoize;` brings both the
//! attribute and the function of the same name.
//!
//! The crate is split by phase: `attr` parses the attribute's arguments
//! (with `template` for key templates), `ast` models the function, `valid`
//! checks that the two fit, and `expand` writes the result.

#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod ast;
mod attr;
mod errors;
mod expand;
mod template;
mod valid;

/// Memoizes a function in the configured cache: the first call with given
/// arguments computes and stores the value, later calls read it back.
///
/// ```
/// use memo_runtime::cache_memoize;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Profile { name: String }
/// # fn load_profile(_: u64) -> Profile { Profile { name: "ada".into() } }
///
/// /// The user's profile, cached for an hour.
/// #[cache_memoize(key = "profile:{user_id}", expiration = 3600)]
/// pub fn profile(user_id: u64) -> Profile {
///     load_profile(user_id)
/// }
/// # assert_eq!(profile(7).name, "ada");
/// ```
///
/// # What it expands to
///
/// The signature stays as written; the body becomes a closure handed to
/// one runtime call (`cache_memoize`, `try_cache_memoize` or
/// `cache_memoize_iter`, by return type, see below), after the key and
/// the options are built. That memoizing body moves into a hidden sibling,
/// which the function calls, and two helpers are added next to it. The
/// function above becomes (as `cargo expand` shows it, with
/// `::memo_runtime::__private::v0_1` abbreviated `rt`):
///
/// ```ignore
/// /// The user's profile, cached for an hour.
/// pub fn profile(user_id: u64) -> Profile {
///     __memo_profile(user_id, false)
/// }
///
/// #[doc(hidden)]
/// #[inline]
/// #[allow(clippy::too_many_arguments)]
/// fn __memo_profile(user_id: u64, __memo_refresh: rt::bool) -> Profile {
///     let __memo_options = rt::Options::new()
///         .function({
///             static __MEMO_FUNCTION: rt::Function =
///                 rt::Function::new(rt::concat!(rt::module_path!(), "::profile"));
///             &__MEMO_FUNCTION
///         })
///         .expiration(rt::Duration::from_secs(3600))
///         .force_overwrite(__memo_refresh);
///     let __memo_key = rt::KeyParts::new()
///         .escaped("profile")
///         .append(|parts| {
///             #[allow(unused_imports)]
///             use rt::{AppendDisplay as _, AppendInteger as _};
///             (&rt::KeyArg(&user_id)).append_to(parts);
///         })
///         .finish();
///     rt::memoize::<Profile, _, _>(
///         __memo_key,
///         move || -> Profile { load_profile(user_id) },
///         &__memo_options
///     )
/// }
///
/// /// Drops the cache entry that `profile` stored for these arguments, so
/// /// that its next call computes the value afresh.
/// #[allow(dead_code)]
/// pub fn profile_invalidate(user_id: u64) -> rt::Result<(), ::memo_runtime::Error> {
///     let __memo_options = rt::Options::new()
///         .function({
///             static __MEMO_FUNCTION: rt::Function =
///                 rt::Function::new(rt::concat!(rt::module_path!(), "::profile"));
///             &__MEMO_FUNCTION
///         })
///         .expiration(rt::Duration::from_secs(3600));
///     let __memo_key = rt::KeyParts::new()
///         .escaped("profile")
///         .append(|parts| {
///             #[allow(unused_imports)]
///             use rt::{AppendDisplay as _, AppendInteger as _};
///             (&rt::KeyArg(&user_id)).append_to(parts);
///         })
///         .finish();
///     rt::invalidate(__memo_key, &__memo_options)
/// }
///
/// /// Computes `profile` afresh for these arguments and overwrites its cache
/// /// entry, whatever the cache holds.
/// #[allow(dead_code)]
/// pub fn profile_refresh(user_id: u64) -> Profile {
///     __memo_profile(user_id, true)
/// }
/// ```
///
/// `rt::memoize` is `memo_runtime::cache_memoize` with the cached type as
/// its first generic parameter, so that a return type the cache cannot
/// store is reported at the return type. The key is built in one string,
/// as `make_cache_key(["profile", &user_id.to_string()], ..)` would
/// normalize it: `KeyParts` escapes and joins the components (text known
/// at compile time is escaped and joined by the macro), and `KeyArg`
/// writes an integer argument's digits directly, anything else through its
/// `Display`. The refresh is an argument of `__memo_profile`, so it turns
/// on `force_overwrite` for the one call that `profile_refresh` makes and
/// for no memoized call made on the way (in an option's value, a key
/// argument's `Display` or the body). The locals and the refresh argument
/// are hygienic: a parameter named `__memo_key` or `__memo_refresh` is not
/// shadowed. With `helpers = false` nothing is added: the body stays in
/// the function, and its options have no refresh.
///
/// # Options
///
/// | option | meaning |
/// |---|---|
/// | `key = "a:{x}:{y.id}:{self.f}"` | the key template (below); default: the function's path and every argument |
/// | `expiration = 3600` | seconds to keep the value (a literal or a `u64` constant); default: the config's |
/// | `jitter = 0.1` | shorten each store's expiration by a random fraction of it, up to this one (a literal from 0 to 1, or an `f64`, clamped), so that entries stored together do not expire together |
/// | `large_data` | store in chunks, compressed: for values that may pass the backend's item limit |
/// | `compress = false` | with `large_data` or in iterator mode: store chunks uncompressed |
/// | `encrypt` / `encrypt = false` | encrypt key and value; default: the config's `force_encryption` |
/// | `force_overwrite` | always compute and store, never read |
/// | `lock`, `lock(timeout = 5, retry = 100, expiration = 30, blocking = true)` | compute under a cache lock so that concurrent misses compute once (`retry` in milliseconds, the others in seconds) |
/// | `coalesce = false` | let concurrent calls in this process compute each; by default they share one computation (values only) |
/// | `version = 2` | appended to the key as a last component `v2`: bump it when a value's meaning changes, or when its type cannot be traced (see "What is stored") |
/// | `local = 10` | keep a decoded copy in each process for up to that many seconds (the return type must be `Clone`) |
/// | `refresh_ahead`, `refresh_ahead = 2.0` | refresh a value early, before it expires (XFetch, with β) |
/// | `stale = 60` | serve a value up to that many seconds past its expiry while one caller refreshes it |
/// | `fail_safe = 300` | for a function returning `Result`: keep the value that many seconds past its expiry, and serve it when a recomputation returns `Err` |
/// | `tags("user:{user}", "catalog")` | store the entry with these tags, each a key template; `invalidate_tag` of one makes every entry stored with it a miss |
/// | `cache_if = path::to::predicate` | store a computed value only when the predicate, a `fn(&T) -> bool` (for `Result<T, E>`, on the `Ok` value), accepts it; a refused value is returned and not stored (values only) |
/// | `ignore(a, b)` | arguments deliberately left out of the key |
/// | `helpers = false` | do not generate `<fn>_invalidate` / `<fn>_refresh` (needed in trait impls) |
///
/// `cache_if` sees each value the body computes; one read from the cache is
/// served as is. A value it refuses is returned to the caller and nothing
/// is stored, nor kept by `local`; callers coalesced on that computation
/// are not handed it as a cached value, and one of them computes in turn;
/// a refused `_refresh` leaves the stored entry as it was, and a refused
/// background refresh (`stale`, `refresh_ahead`) counts as a failed one.
/// The predicate takes a reference to the cached type itself
/// (`fn(&Vec<Row>) -> bool`, not `fn(&[Row]) -> bool`).
///
/// # Keys
///
/// A key template is a list of `:`-separated components; in each, `{arg}`
/// is the argument's `Display` form, `{arg:?}` its `Debug` form, `{self}`
/// the receiver, and `{{`/`}}` literal braces. A field path may follow an
/// argument or `self`, to any depth and with `:?` too: `{user.id}`,
/// `{pair.0}`, `{self.cfg.region}`, `{user.id:?}`; a field the value lacks
/// is a compile error at the key, and an argument keyed by one of its
/// fields counts as in the key. The components reach the runtime as a key sequence and are
/// escaped one by one (`%` → `%25`, `:` → `%3A`), so `key = "user:{name}"`
/// stores under `make_cache_key(["user", &name.to_string()], ..)` and a name
/// containing `:` cannot collide with another key.
///
/// Every argument must be in the key or in `ignore(...)`: an argument that
/// the key forgets would make two calls share one entry, so it is a compile
/// error. Without `key`, the key is the module path (for a method, the
/// `Self` type's name), the function's name and every argument not ignored,
/// each by its `Display` form; an associated function without `self` should
/// give a `key` so that two types' functions of the same name do not share
/// entries.
///
/// An argument written as a pattern (`Path(id): Path<u32>`, `(a, b): (u32,
/// String)`, `Query(Params { page, .. }): Query<Params>`) is keyed by the
/// names it binds: each is a placeholder as an argument is (`key =
/// "report:{id}"`), each must be in the key or in `ignore(...)`, and the
/// default key holds every one. The body sees the pattern as written; the
/// function, `_refresh` and `_invalidate` take the argument whole. An
/// argument that binds no name (`_`) cannot be keyed, nor can one whose
/// pattern is a macro: bind it to a name.
///
/// # Return types
///
/// - A plain `T: Serialize + DeserializeOwned` is cached as a whole.
/// - `Result<T, E>` (also `io::Result<T>` and other aliases named `Result`)
///   caches only `Ok`; an `Err` is returned as is and nothing is stored.
///   `E` needs no serde.
/// - `impl Iterator<Item = T>` or `Box<dyn Iterator<Item = T>>` is iterator
///   mode, as with [`macro@cache_memoize_iter`].
/// - `impl Stream<Item = T>` (any path ending in `Stream`, with an `Item`
///   binding: `futures::Stream`, `futures_core::Stream`,
///   `tokio_stream::Stream`) on a plain `fn` is stream mode
///   (`cache_memoize_stream`, memo-runtime feature `async`): lazy, items
///   stored as the body's stream yields them. The stream outlives the call,
///   so the body may not borrow the arguments: take owned ones.
///
/// # Owned signatures: background refresh
///
/// A signature is *owned as written* when it has no receiver, no generic or
/// lifetime parameters, and no argument or return type containing `&`, a
/// lifetime, `impl`, `dyn`, `Self` or a macro. For such a function with
/// `stale` or `refresh_ahead`, the expansion calls memo-runtime's detached
/// twins (`cache_memoize_detached` and friends), which require the
/// arguments and the value to be `'static` and `Send`: the caller that wins
/// a refresh is served the value it found at once, and the refresh runs on
/// a background thread (sync) or a spawned task (async).
///
/// Any other signature keeps the foreground refresh: the winner computes,
/// every other caller is served the stale value. An argument whose type
/// hides an elided lifetime (`Cow<str>` written without `'_`) or names the
/// type parameters of a surrounding generic `impl` looks owned but is not,
/// and fails to compile ("borrowed data escapes", "may not live long
/// enough"); write the lifetime (`Cow<'_, str>`) or take the argument by
/// reference to keep the foreground refresh.
///
/// # Async
///
/// With memo-runtime's feature `async`, an `async fn` is memoized by
/// `cache_memoize_async` (or `try_cache_memoize_async` for a `Result`,
/// which caches only `Ok`; `?` works in the body), or by their detached
/// twins for an owned signature with a background refresh (above). The
/// value (and a `Result`'s error) must be `'static`: every pass over a
/// large value moves to tokio's blocking pool. The body becomes an
/// `async move` block awaited inside the function's own future, so `&self`
/// and borrowed arguments work as in a plain `async fn`, and the future is
/// `Send` whenever the original is: it can be `tokio::spawn`ed or serve as
/// an axum handler.
///
/// ```ignore
/// #[cache_memoize(key = "user:{id}", ignore(db), expiration = 60)]
/// async fn user(db: &Db, id: u64) -> Result<User, sqlx::Error> { .. }
/// // becomes
/// async fn user(db: &Db, id: u64) -> Result<User, sqlx::Error> {
///     __memo_user(db, id, false).await
/// }
/// async fn __memo_user(db: &Db, id: u64, __memo_refresh: rt::bool) -> Result<User, sqlx::Error> {
///     let __memo_options = rt::Options::new()...force_overwrite(__memo_refresh);
///     let __memo_key = ..;
///     rt::try_memoize_async::<User, _, _, _, _>(
///         __memo_key, move || async move { .. }, &__memo_options,
///     ).await
/// }
/// ```
///
/// The helpers of an `async fn` are `async` (`_invalidate` awaits
/// `invalidate_async`); in stream mode `_invalidate` is `async` too.
///
/// # Helpers
///
/// `<fn>_invalidate(args...)` (the arguments in the key, after `&self` for
/// a method) drops one call's entry and returns
/// `Result<(), memo_runtime::Error>`. `<fn>_refresh(args...)` (the same
/// arguments as the function) computes the value afresh, stores it and
/// returns it. Both have the function's visibility. In a trait `impl`,
/// where no extra method may be added, write `helpers = false`. For an
/// associated function without `self` the attribute cannot tell that it is
/// in an `impl`, and the function and `_refresh` would call their hidden
/// sibling by its bare name: write `helpers = false` there too, and drop
/// entries with `memo_runtime::invalidate` and the key.
///
/// # Errors
///
/// A misuse is a compile error at the offending token, every mistake of a
/// function in one build: an unknown option (with the closest known one),
/// a value of the wrong type, a placeholder naming no argument, an argument
/// the key forgets, `compress` without `large_data` outside iterator mode, a
/// function returning nothing, an argument that binds no name (`_`), an
/// `async fn` returning an iterator or a stream, `impl Future` instead of
/// `async fn`, `coalesce` or `cache_if` on an iterator or a stream. A
/// return type that is not `Serialize + DeserializeOwned` fails at the
/// return type, a field the value lacks at the key, and a `cache_if` that
/// is not a `fn(&T) -> bool` at the predicate, naming the option.
#[proc_macro_attribute]
pub fn cache_memoize(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::memoize(args.into(), input.into(), expand::Mode::Auto).into()
}

/// Memoizes a function's items as a stream: the function returns an
/// iterator (or anything built from one), and the cache stores its items in
/// chunks as they are produced.
///
/// Takes the options of [`macro@cache_memoize`]; a function returning
/// `impl Iterator<Item = T>` is in this mode under either attribute.
/// Nothing runs until the first `next()`: on a miss each item reaches the
/// caller as soon as the body's iterator yields it, and is stored on the
/// way; on a hit the items are decoded as the caller pulls them.
///
/// ```
/// use memo_runtime::{cache_memoize, cache_memoize_iter};
///
/// #[cache_memoize(key = "words:{text}")]
/// fn words(text: &str) -> impl Iterator<Item = String> {
///     text.split_whitespace().map(str::to_owned).collect::<Vec<_>>().into_iter()
/// }
///
/// /// Collected into the declared type: here a `Vec`, stored item by item.
/// #[cache_memoize_iter(key = "squares:{n}")]
/// fn squares(n: u64) -> Vec<u64> {
///     (1..=n).map(|i| i * i).collect()
/// }
///
/// assert_eq!(words("a b c").collect::<Vec<_>>(), ["a", "b", "c"]);
/// assert_eq!(squares(3), [1, 4, 9]);
/// ```
///
/// In iterator mode the arguments move into the body's closure, and the
/// returned iterator may borrow them: in edition 2024 an
/// `-> impl Iterator<Item = T>` captures the lifetimes of `&str` or `&[T]`
/// arguments, as it does without the attribute. Under `#[cache_memoize_iter]`
/// a return type other than `impl Iterator` or `Box<dyn Iterator>` is built
/// with `FromIterator`.
#[proc_macro_attribute]
pub fn cache_memoize_iter(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::memoize(args.into(), input.into(), expand::Mode::Iter).into()
}
