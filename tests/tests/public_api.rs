//! Pins memo-runtime's public surface, so that an accidental export fails
//! CI instead of becoming API that a later fix would break.
//!
//! Two checks, each covering what the other cannot:
//!
//! - **Every `pub` item, as a checked-in list.** The workspace lint table
//!   sets `unreachable_pub`, and CI runs clippy with `-D warnings`, so in
//!   memo-runtime an item says `pub` only if users can reach it; anything
//!   internal says `pub(crate)`. The set of `pub` declarations in
//!   `memo-runtime/src` (items, fields, methods, `pub use` and `pub mod`
//!   lines, outside `#[cfg(test)]` modules) is therefore the public surface,
//!   and this test compares it with `tests/public-api.txt`. A new `pub`
//!   anywhere, or a changed public signature, shows up as a diff. This is a
//!   text scan rather than rustdoc JSON (`cargo public-api`), which needs a
//!   nightly toolchain the CI does not have; it is blind to trait impls and
//!   derives, which cannot leak internals by themselves.
//! - **Every name of the contract, at compile time.** `contract_names`
//!   below names each item of the public contract the README documents
//!   (and the constants users need) by its public path, so removing or
//!   moving one fails to build.
//!
//! After an intended change, regenerate the list with
//! `MEMO_BLESS_PUBLIC_API=1 cargo test -p memo-tests --test public_api`
//! and review its diff like code.

use std::path::{Path, PathBuf};

fn runtime_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../memo-runtime/src")
}

fn snapshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("public-api.txt")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable source directory")
        .map(|entry| entry.expect("readable entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The `pub` declarations of one file, each joined onto one line and cut
/// before its body, skipping the unit-test module at the end of the file.
fn pub_declarations(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        at += 1;
        if line == "#[cfg(test)]" {
            let next = lines[at..].iter().find(|line| !line.starts_with("#["));
            if next.is_some_and(|next| next.starts_with("mod ")) {
                break;
            }
        }
        if !line.starts_with("pub ") {
            continue;
        }
        let mut declaration = line.to_owned();
        while !complete(&declaration) && at < lines.len() {
            declaration.push(' ');
            declaration.push_str(lines[at]);
            at += 1;
        }
        found.push(normalize(&declaration));
    }
    found
}

/// Whether a declaration has all of its signature: brackets balanced and
/// a body, an end, or a field's comma reached (a `pub use` list: its `;`).
fn complete(declaration: &str) -> bool {
    if declaration.starts_with("pub use ") {
        return declaration.ends_with(';');
    }
    // Operators and arrows hold a `<` or `>` that opens or closes nothing.
    // Shifts are told from the end of nested generics (`Pin<Box<..>>`) by
    // the spaces rustfmt puts around a binary operator.
    let mut brackets = declaration.to_owned();
    for operator in ["->", "=>", " << ", " >> ", "<=", ">="] {
        brackets = brackets.replace(operator, "");
    }
    let depth = brackets.chars().fold(0i32, |depth, c| match c {
        '(' | '[' | '<' => depth + 1,
        ')' | ']' | '>' => depth - 1,
        _ => depth,
    });
    depth <= 0
        && (declaration.contains('{') || declaration.ends_with(';') || declaration.ends_with(','))
}

fn normalize(declaration: &str) -> String {
    let mut cut = declaration;
    if !cut.starts_with("pub use ") {
        for end in [" where ", " {"] {
            if let Some(at) = cut.find(end) {
                cut = &cut[..at];
            }
        }
    }
    let cut = cut.trim_end_matches([',', ';', '{', ' ']);
    cut.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn current_surface() -> String {
    let root = runtime_src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut out = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source file");
        let name = file
            .strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        for declaration in pub_declarations(&text) {
            out.push_str(&format!("{name}: {declaration}\n"));
        }
    }
    out
}

#[test]
fn the_public_surface_matches_the_checked_in_list() {
    let current = current_surface();
    if std::env::var_os("MEMO_BLESS_PUBLIC_API").is_some() {
        std::fs::write(snapshot_path(), &current).expect("writable snapshot");
        return;
    }
    let expected = std::fs::read_to_string(snapshot_path()).unwrap_or_default();
    // Compared as sets of lines: rustfmt may reorder `use` lines, which
    // changes nothing a user can reach.
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    if sorted(&current) != sorted(&expected) {
        let added: Vec<&str> = current
            .lines()
            .filter(|line| !expected.lines().any(|e| e == *line))
            .collect();
        let removed: Vec<&str> = expected
            .lines()
            .filter(|line| !current.lines().any(|c| c == *line))
            .collect();
        panic!(
            "memo-runtime's public surface changed.\n\nnew or changed:\n  {}\n\ngone or changed:\n  {}\n\n\
             If this is intended, run MEMO_BLESS_PUBLIC_API=1 cargo test -p memo-tests --test public_api \
             and commit tests/public-api.txt; otherwise make the item pub(crate).",
            added.join("\n  "),
            removed.join("\n  ")
        );
    }
}

#[test]
fn the_scan_reads_declarations_whole() {
    let text = "pub fn a<T>(\n    x: T,\n) -> Result<(), E>\nwhere\n    T: Clone,\n{\n}\n\
                pub struct S {\n    pub field: u8,\n    private: u8,\n}\n\
                pub(crate) fn hidden() {}\n\
                pub use crate::{\n    A,\n    B,\n};\n\
                #[cfg(test)]\nmod tests {\n    pub fn not_api() {}\n}\n";
    assert_eq!(
        pub_declarations(text),
        [
            "pub fn a<T>( x: T, ) -> Result<(), E>",
            "pub struct S",
            "pub field: u8",
            "pub use crate::{ A, B, }",
        ]
    );
}

/// Every name of the documented public contract, and the constants users need,
/// at its public path: this fails to compile if one goes missing.
#[test]
fn contract_names() {
    #[allow(unused_imports)]
    use memo_runtime::invalidate_tag_async;
    #[allow(unused_imports)]
    use memo_runtime::{
        BATCH_CHUNKS, Backend, BackendError, BackendErrorKind, CacheKey, CacheLock, CacheLockGuard,
        CacheUrl, Config, ConfigError, DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL,
        DEFAULT_EXPIRATION, DEFAULT_LOCK_EXPIRATION, DEFAULT_LOCK_RETRY, DEFAULT_LOCK_TIMEOUT,
        EncryptionKey, Error, KeyError, LockError, LockOptions, MAX_MANIFEST_OVERHEAD,
        MIN_CHUNK_SIZE, MemoIter, MemoryBackend, Options, SUPERSEDED_GRACE, Stats, cache_memoize,
        cache_memoize_if, cache_memoize_iter, config, configure, invalidate, invalidate_tag,
        make_cache_key, stats, try_cache_memoize, try_cache_memoize_if,
    };
    #[cfg(feature = "memcached")]
    #[allow(unused_imports)]
    use memo_runtime::{MemcachedBackend, backend::memcached};
    #[cfg(feature = "redis")]
    #[allow(unused_imports)]
    use memo_runtime::{RedisBackend, backend::redis};

    assert_eq!(DEFAULT_CHUNK_SIZE, (1 << 20) - 1024);
    #[cfg(feature = "redis")]
    {
        assert_eq!(redis::DEFAULT_MAX_CONNECTIONS, 64);
        assert_eq!(redis::DEFAULT_SENTINEL_PORT, 26379);
        let _ = RedisBackend::sentinel(["h:26379"], "cache")
            .map(|backend| backend.sentinel_password(None, "p").max_connections(8));
    }
    let _ = BackendError::new("a custom backend's failure");
    let _: fn() -> Stats = stats;
}
