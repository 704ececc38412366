//! Checks that the attribute and the function fit together. Each mistake is
//! recorded at the token to fix — the unknown placeholder's key, the
//! forgotten argument, the `async` keyword — and checking goes on, so one
//! build shows every mistake.

use std::collections::BTreeSet;

use syn::spanned::Spanned;
use syn::visit::Visit;

use crate::ast::{Arg, Function, Output};
use crate::attr::Attr;
use crate::errors::{Errors, did_you_mean};
use crate::template::Target;

/// Records in `errors` everything that keeps `attr` from applying to `func`.
pub(crate) fn check(
    attr: &Attr,
    func: &Function,
    args: &[Arg],
    output: &Output,
    errors: &mut Errors,
) {
    signature(func, errors);
    arguments(args, errors);
    return_type(func, output, errors);
    key(attr, func, args, errors);
    options(attr, output, errors);
}

/// Whether the function itself can be memoized, whatever the options; when
/// it can, helpers are emitted even next to an error, so that call sites of
/// the helpers do not fail in cascade.
pub(crate) fn signature_is_usable(func: &Function, args: &[Arg], output: &Output) -> bool {
    func.sig.asyncness.is_none()
        && func.sig.constness.is_none()
        && func.body.is_some()
        && args.iter().all(|arg| arg.name.is_some())
        && !matches!(output, Output::Nothing(_))
}

fn signature(func: &Function, errors: &mut Errors) {
    let name = &func.sig.ident;
    if let Some(asyncness) = &func.sig.asyncness {
        errors.push(
            asyncness.span,
            "`#[cache_memoize]` does not support `async fn` yet; memoize a synchronous function, or call `memo_runtime::cache_memoize` inside a blocking task",
        );
    }
    if let Some(constness) = &func.sig.constness {
        errors.push(
            constness.span,
            "a `const fn` cannot be memoized: the cache is only reachable at run time",
        );
    }
    if let Some(variadic) = &func.sig.variadic {
        errors.push(variadic.span(), "a variadic function cannot be memoized");
    }
    if func.body.is_none() {
        errors.push(name.span(), format!("`{name}` has no body to memoize"));
    }
}

fn arguments(args: &[Arg], errors: &mut Errors) {
    for arg in args.iter().filter(|arg| arg.name.is_none()) {
        errors.push(
            arg.pat.span(),
            "this argument has no name to put in the cache key; bind it to a name (`point: Point`) and destructure it in the body",
        );
    }
}

fn return_type(func: &Function, output: &Output, errors: &mut Errors) {
    match output {
        Output::Nothing(span) => errors.push(
            *span,
            format!(
                "`{}` returns nothing to cache; a memoized function must return a value",
                func.sig.ident
            ),
        ),
        Output::Value(ty) | Output::Result(ty) => {
            let mut finder = ImplTraitFinder(None);
            finder.visit_type(ty);
            if let Some(span) = finder.0 {
                errors.push(
                    span,
                    "the cache stores a concrete type: return a `Serialize + DeserializeOwned` type, or `impl Iterator<Item = T>` for iterator mode",
                );
            }
        }
        Output::Iter(..) => {}
    }
}

struct ImplTraitFinder(Option<proc_macro2::Span>);

impl<'ast> Visit<'ast> for ImplTraitFinder {
    fn visit_type_impl_trait(&mut self, ty: &'ast syn::TypeImplTrait) {
        self.0.get_or_insert(ty.impl_token.span);
    }
}

fn key(attr: &Attr, func: &Function, args: &[Arg], errors: &mut Errors) {
    let names: Vec<String> = args
        .iter()
        .filter_map(|arg| arg.name.as_ref().map(ToString::to_string))
        .collect();
    let mut in_key = BTreeSet::new();
    if let Some(template) = &attr.key {
        for placeholder in template.placeholders() {
            match &placeholder.target {
                Target::Arg(name) if names.contains(name) => {
                    in_key.insert(name.clone());
                }
                Target::Arg(name) => errors.push(
                    template.lit.span(),
                    format!(
                        "`{{{name}}}` in the key names no argument of `{}`{}",
                        func.sig.ident,
                        did_you_mean(name, names.iter().map(String::as_str))
                    ),
                ),
                Target::SelfValue(_) if func.receiver().is_none() => errors.push(
                    template.lit.span(),
                    format!(
                        "the key uses `self`, but `{}` takes no `self`",
                        func.sig.ident
                    ),
                ),
                Target::SelfValue(_) => {}
            }
        }
    }

    let mut ignored = BTreeSet::new();
    for ident in &attr.ignore {
        let name = ident.to_string();
        if !names.contains(&name) {
            errors.push(
                ident.span(),
                format!(
                    "`ignore({name})` names no argument of `{}`{}",
                    func.sig.ident,
                    did_you_mean(&name, names.iter().map(String::as_str))
                ),
            );
        } else if in_key.contains(&name) {
            errors.push(
                ident.span(),
                format!("`{name}` is in the key and in `ignore(...)`; keep one"),
            );
        } else if !ignored.insert(name.clone()) {
            errors.push(ident.span(), format!("`{name}` is ignored twice"));
        }
    }

    if attr.key.is_some() {
        for arg in args {
            let Some(ident) = &arg.name else { continue };
            let name = ident.to_string();
            if !in_key.contains(&name) && !ignored.contains(&name) {
                errors.push(
                    ident.span(),
                    format!(
                        "argument `{name}` is not in the cache key, so calls that differ only in `{name}` would share one entry; add `{{{name}}}` to the key, or list it in `ignore({name})`"
                    ),
                );
            }
        }
    }
}

fn options(attr: &Attr, output: &Output, errors: &mut Errors) {
    let large = attr.large_data.as_ref().is_some_and(|flag| flag.value);
    if let Some(compress) = &attr.compress {
        if !large && !matches!(output, Output::Iter(..)) {
            errors.push(
                compress.span,
                "`compress` applies to large data and iterators only; add `large_data`, or remove `compress`",
            );
        }
    }
}
