//! Two deploys of one program whose model types changed shape in between
//! (`deploy_v1` and `deploy_v2`, see `src/bin/deploy/program.rs`) share a
//! real memcached or Redis: each reads the other's entries as misses and
//! computes its own value, never a misread of the other's bytes, and each
//! still hits its own entries from a later process.
//!
//! The two deploys' types have the same `std::any::type_name`
//! (`deploy_model::Order`), as a type edited between two builds does, so a
//! fingerprint of the name alone cannot tell them apart: postcard would
//! decode deploy 1's `Order { cents: 5, qty: 3 }` as deploy 2's
//! `Order { qty: -3, cents: 3 }`, and `Status::Paid` as `Status::Open`.

use std::cell::Cell;
use std::process::Command;

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, cache_memoize_iter, configure};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// What each deploy computes, per type, as the program prints it.
const EXPECTED: [(&str, &str, &str); 2] = [
    (
        "order",
        "Order { cents: 5, qty: 3 }",
        "Order { qty: 7, cents: 9 }",
    ),
    ("status", "Paid", "Shipped"),
];

const MODES: [&str; 4] = ["clear", "encrypted", "large", "iter"];

/// Runs one deploy once; its `(type name, computed, value)`.
fn run(binary: &str, url: &str, what: &str, mode: &str) -> (String, bool, String) {
    let output = Command::new(binary)
        .args([what, mode])
        .env_clear()
        .env("MEMO_CACHE_URL", url)
        .env("MEMO_ENCRYPTION_KEY", KEY_HEX)
        // One namespace per case, so that cases do not see each other.
        .env("MEMO_NAMESPACE", format!("{what}-{mode}"))
        .output()
        .unwrap_or_else(|err| panic!("cannot run {binary}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{binary} {what} {mode} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.trim();
    let parse = || {
        let rest = line.strip_prefix("type=")?;
        let (name, rest) = rest.split_once(" computed=")?;
        let (computed, value) = rest.split_once(" value=")?;
        Some((name.to_owned(), computed == "true", value.to_owned()))
    };
    parse().unwrap_or_else(|| panic!("unexpected output of {binary}: {line:?}"))
}

fn two_deploys(kind: Kind) {
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    let url = server.url();
    let v1 = env!("CARGO_BIN_EXE_deploy_v1");
    let v2 = env!("CARGO_BIN_EXE_deploy_v2");
    // Every case runs before the verdict, so a failure shows all the cases
    // that misread, not only the first.
    let mut wrong = Vec::new();
    for (what, value_v1, value_v2) in EXPECTED {
        for mode in MODES {
            let (value_v1, value_v2) = if mode == "iter" {
                (format!("[{value_v1}]"), format!("[{value_v2}]"))
            } else {
                (value_v1.to_owned(), value_v2.to_owned())
            };
            let steps = [
                (v1, "deploy 1, empty cache", true, &value_v1),
                (
                    v2,
                    "deploy 2 must not read deploy 1's entry",
                    true,
                    &value_v2,
                ),
                (
                    v2,
                    "deploy 2 hits its own entry from another process",
                    false,
                    &value_v2,
                ),
                (
                    v1,
                    "deploy 1 must not read deploy 2's entry",
                    true,
                    &value_v1,
                ),
                (
                    v1,
                    "deploy 1 hits its own entry from another process",
                    false,
                    &value_v1,
                ),
            ];
            let mut names = Vec::new();
            for (binary, step, computed, value) in steps {
                let (name, got_computed, got) = run(binary, &url, what, mode);
                if (got_computed, &got) != (computed, value) {
                    wrong.push(format!(
                        "{kind:?} {what} {mode}: {step}: computed={got_computed} value={got}"
                    ));
                }
                names.push(name);
            }
            // The premise: the names collide, only the shapes differ.
            assert!(names.iter().all(|name| *name == names[0]), "{names:?}");
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
#[cfg(feature = "memcached")]
fn deploys_with_changed_types_miss_each_other_on_memcached() {
    two_deploys(Kind::Memcached);
}

#[test]
#[cfg(feature = "redis")]
fn deploys_with_changed_types_miss_each_other_on_redis() {
    two_deploys(Kind::Redis);
}

/// Both deploys' types in one process, through the public API: their names
/// are equal (two builds of one crate), their shapes are not, and each
/// reads the other's entry under the same key as a miss.
#[test]
fn same_name_other_shape_is_a_miss_in_one_process() {
    let _serial = serial();
    assert_eq!(
        std::any::type_name::<deploy_v1::Order>(),
        std::any::type_name::<deploy_v2::Order>()
    );
    for options in [
        Options::new(),
        Options::new().encrypt(true),
        Options::new().large_data(true),
    ] {
        configure(
            Config::new(MemoryBackend::new())
                .encryption_key(memo_runtime::EncryptionKey::new([7; 32]).unwrap()),
        );
        let computed = Cell::new(0);
        let count = || computed.set(computed.get() + 1);
        let v1 = || {
            cache_memoize(
                "k",
                || {
                    count();
                    deploy_v1::order()
                },
                &options,
            )
        };
        let v2 = || {
            cache_memoize(
                "k",
                || {
                    count();
                    deploy_v2::order()
                },
                &options,
            )
        };
        assert_eq!(v1(), deploy_v1::order());
        assert_eq!(v1(), deploy_v1::order());
        assert_eq!(computed.get(), 1, "deploy 1 hits its own entry");
        assert_eq!(v2(), deploy_v2::order(), "not a misread of deploy 1's");
        assert_eq!(computed.get(), 2);
        assert_eq!(v2(), deploy_v2::order());
        assert_eq!(computed.get(), 2, "deploy 2 hits its own entry");

        let s1 = || {
            cache_memoize_iter(
                "s",
                || {
                    [{
                        count();
                        deploy_v1::status()
                    }]
                },
                &options,
            )
        };
        let s2 = || {
            cache_memoize_iter(
                "s",
                || {
                    [{
                        count();
                        deploy_v2::status()
                    }]
                },
                &options,
            )
        };
        assert_eq!(s1().collect::<Vec<_>>(), [deploy_v1::status()]);
        assert_eq!(s2().collect::<Vec<_>>(), [deploy_v2::status()]);
        assert_eq!(computed.get(), 4, "deploy 2 computes its own items");
        assert_eq!(s2().collect::<Vec<_>>(), [deploy_v2::status()]);
        assert_eq!(computed.get(), 4, "deploy 2 hits its own items");
    }
}
