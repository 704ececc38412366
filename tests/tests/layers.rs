//! Pins memo-runtime's architecture: its modules are layers, each using
//! only those below it (see the crate docs), so no two top-level modules
//! use each other; and within a layer, no two modules use each other
//! either.
//!
//! A text scan of the `crate::` and `super::` paths in each file (comments
//! and unit tests aside) stands in for a module-graph tool: the runtime
//! names every dependency by such a path, so a new upward or circular use
//! shows up here as a failing test rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, top layer first. `lib.rs`, `__private` (what
/// macro expansions call) and `__fuzz` (the test harness) sit above them all.
const LAYERS: &[&str] = &[
    "api", "policy", "lock", "config", "backend", "format", "common",
];

fn runtime_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../memo-runtime/src")
}

/// Every source file as its module path (`policy::stream::read`) and its
/// code without comments and without its unit-test module.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("readable source directory") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).expect("under src");
            let mut name = relative
                .with_extension("")
                .to_string_lossy()
                .replace(['/', '\\'], "::");
            if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_owned();
            }
            let text = std::fs::read_to_string(&path).expect("readable file");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, code);
        }
    }
    let root = runtime_src();
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The modules `module` names, resolved against the known modules:
/// `crate::a::b::Item` is `a::b`, `super::x` is the sibling `x`. A path to
/// one of the module's own ancestors (a re-export from a parent) is left
/// out: a parent declares its children and is not a peer.
fn uses(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    for (at, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let path: String = code[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        let mut base: Vec<&str> = Vec::new();
        if parts.first() == Some(&"crate") {
            parts.remove(0);
        } else {
            base = module.split("::").collect();
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        // Braced imports name more modules: `use super::{a, b::C}`.
        let mut candidates = vec![parts.clone()];
        if code[at + path.len()..].starts_with('{') {
            let inner = &code[at + path.len() + 1..];
            let inner = &inner[..inner.find('}').unwrap_or(0)];
            for item in inner.split(',') {
                let mut more = parts.clone();
                more.extend(item.trim().split("::").next());
                candidates.push(more);
            }
        }
        for parts in candidates {
            for len in (1..=parts.len()).rev() {
                let mut full = base.clone();
                full.extend(&parts[..len]);
                let name = full.join("::");
                if known.contains(&name) {
                    let ancestor = module.starts_with(&format!("{name}::"));
                    if name != module && !ancestor {
                        found.insert(name);
                    }
                    break;
                }
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, code)| (name.clone(), uses(name, code, &known)))
        .collect()
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|layer| *layer == top)
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let mut upward = Vec::new();
    for (module, used) in graph() {
        let Some(own) = layer(&module) else { continue };
        for target in used {
            if layer(&target).is_some_and(|theirs| theirs < own) {
                upward.push(format!("{module} uses {target}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules reaching into a layer above them (order: {LAYERS:?}):\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn no_two_modules_use_each_other() {
    let graph = graph();
    let reaches = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(next) = todo.pop() {
            for target in graph.get(&next).into_iter().flatten() {
                if seen.insert(target.clone()) {
                    todo.push(target.clone());
                }
            }
        }
        seen
    };
    let cycles: Vec<&String> = graph
        .keys()
        .filter(|module| reaches(module).contains(*module))
        .collect();
    assert!(cycles.is_empty(), "modules on an import cycle: {cycles:?}");
}

#[test]
fn the_scan_sees_real_uses() {
    let graph = graph();
    let uses = |from: &str, to: &str| graph.get(from).is_some_and(|used| used.contains(to));
    assert!(uses("policy", "lock"), "{:?}", graph.get("policy"));
    assert!(uses("format::manifest", "format::envelope"));
    assert!(uses("backend::memcached::protocol", "backend::net::pool"));
    assert!(uses("config::resolve", "format::key"));
    assert!(LAYERS.iter().all(|layer| graph.contains_key(*layer)));
}
