//! Checks that the attribute and the function fit together. Each mistake is
//! recorded at the token to fix — the unknown placeholder's key, the
//! forgotten argument, the `const` keyword — and checking goes on, so one
//! build shows every mistake.

use std::collections::BTreeSet;

use syn::spanned::Spanned;
use syn::visit::Visit;

use crate::ast::{Arg, Function, IterShape, Output};
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
    asynchrony(func, output, errors);
    arguments(args, errors);
    stream_borrows(func, args, output, errors);
    return_type(func, output, errors);
    key(attr, func, args, errors);
    options(attr, output, errors);
}

/// Whether the function itself can be memoized, whatever the options; when
/// it can, helpers are emitted even next to an error, so that call sites of
/// the helpers do not fail in cascade.
pub(crate) fn signature_is_usable(func: &Function, args: &[Arg], output: &Output) -> bool {
    !async_mismatch(func, output)
        && func.sig.constness.is_none()
        && func.body.is_some()
        && args.iter().all(is_keyable)
        && !matches!(output, Output::Nothing(_))
}

fn signature(func: &Function, errors: &mut Errors) {
    let name = &func.sig.ident;
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

/// An `async fn` whose return type asks for iterator or stream mode: the
/// two do not combine, whichever the user meant.
fn async_mismatch(func: &Function, output: &Output) -> bool {
    func.is_async() && matches!(output, Output::Iter(..) | Output::Stream(_))
}

fn asynchrony(func: &Function, output: &Output, errors: &mut Errors) {
    let Some(asyncness) = &func.sig.asyncness else {
        return;
    };
    match output {
        Output::Stream(_) => errors.push(
            asyncness.span,
            "stream mode memoizes a plain `fn` returning `impl Stream<Item = T>`: remove `async` (the stream is polled asynchronously already)",
        ),
        Output::Iter(IterShape::Collect, _) => errors.push(
            asyncness.span,
            "`#[cache_memoize_iter]` does not apply to an `async fn`: use `#[cache_memoize]` to cache its value whole, or a plain `fn` returning `impl Stream<Item = T>` for stream mode",
        ),
        Output::Iter(_, ty) => errors.push(
            ty.span(),
            "an `async fn` cannot be memoized in iterator mode: return a `Vec<T>` to cache the value whole, or make it a plain `fn` returning `impl Stream<Item = T>` for stream mode",
        ),
        Output::Nothing(_) | Output::Value(_) | Output::Result(_) => {}
    }
}

/// Whether the names an argument binds can be seen, and there is one:
/// the key is made of names.
fn is_keyable(arg: &Arg) -> bool {
    arg.opaque.is_none() && !arg.bindings.is_empty()
}

fn arguments(args: &[Arg], errors: &mut Errors) {
    for arg in args {
        if let Some(span) = arg.opaque {
            errors.push(
                span,
                "a macro in an argument's pattern hides the names it binds from the cache key; write the pattern out, or bind the argument to a name and destructure it in the body",
            );
        } else if arg.bindings.is_empty() {
            errors.push(
                arg.pat.span(),
                "this argument binds no name to put in the cache key; bind it to a name (`point: Point`, `Path(id): Path<u32>`), and list that name in `ignore(...)` if the key should leave it out",
            );
        }
    }
}

/// In stream mode the body runs when the stream is first polled, after the
/// function has returned, so it may not borrow an argument. Reported at
/// the borrow, and only when the body names the argument: rustc's own
/// error would point at the attribute.
fn stream_borrows(func: &Function, args: &[Arg], output: &Output, errors: &mut Errors) {
    if !matches!(output, Output::Stream(_)) {
        return;
    }
    let Some(body) = &func.body else { return };
    let message = |name: &dyn std::fmt::Display, owned: &str| {
        format!(
            "the body of `{}` runs when its stream is first polled, after the call has returned, so it cannot borrow `{name}`: take {owned}",
            func.sig.ident
        )
    };
    if let Some(receiver) = func.receiver() {
        if receiver.reference.is_some() && mentions(body, "self") {
            errors.push(
                receiver.span(),
                message(&"self", "`self` by value, or `self: Arc<Self>`"),
            );
        }
    }
    for arg in args {
        let mut finder = BorrowFinder(None);
        finder.visit_type(&arg.ty);
        if let Some(span) = finder.0 {
            let used = arg
                .bindings
                .iter()
                .find(|name| mentions(body, &name.to_string()));
            if let Some(name) = used {
                errors.push(
                    span,
                    message(name, "it as an owned value (`String`, `Vec<T>`, `Arc<T>`)"),
                );
            }
        }
    }
}

/// Whether `tokens` contain the identifier `name`, at any depth.
fn mentions(tokens: &proc_macro2::TokenStream, name: &str) -> bool {
    tokens.clone().into_iter().any(|tree| match tree {
        proc_macro2::TokenTree::Ident(ident) => ident == name,
        proc_macro2::TokenTree::Group(group) => mentions(&group.stream(), name),
        _ => false,
    })
}

/// The first borrow in a type that is not `'static`: a reference, or a
/// lifetime argument.
struct BorrowFinder(Option<proc_macro2::Span>);

impl<'ast> Visit<'ast> for BorrowFinder {
    fn visit_type_reference(&mut self, ty: &'ast syn::TypeReference) {
        match &ty.lifetime {
            Some(lifetime) if lifetime.ident == "static" => {}
            _ => {
                self.0.get_or_insert(ty.and_token.span);
            }
        }
        syn::visit::visit_type(self, &ty.elem);
    }

    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        if lifetime.ident != "static" {
            self.0.get_or_insert(lifetime.span());
        }
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
            match finder.0 {
                Some((span, true)) => errors.push(
                    span,
                    "write the function as an `async fn` returning the value: `#[cache_memoize]` memoizes `async fn`, not `impl Future`",
                ),
                Some((span, false)) => errors.push(
                    span,
                    "the cache stores a concrete type: return a `Serialize + DeserializeOwned` type, `impl Iterator<Item = T>` for iterator mode, or `impl Stream<Item = T>` for stream mode",
                ),
                None => {}
            }
        }
        Output::Iter(..) | Output::Stream(_) => {}
    }
}

/// The first `impl Trait` in a type, and whether it is an `impl Future`.
struct ImplTraitFinder(Option<(proc_macro2::Span, bool)>);

impl<'ast> Visit<'ast> for ImplTraitFinder {
    fn visit_type_impl_trait(&mut self, ty: &'ast syn::TypeImplTrait) {
        let future = ty.bounds.iter().any(|bound| {
            matches!(bound, syn::TypeParamBound::Trait(bound)
                if bound.path.segments.last().is_some_and(|last| last.ident == "Future"))
        });
        self.0.get_or_insert((ty.impl_token.span, future));
    }
}

fn key(attr: &Attr, func: &Function, args: &[Arg], errors: &mut Errors) {
    let names: Vec<String> = args
        .iter()
        .flat_map(|arg| &arg.bindings)
        .map(ToString::to_string)
        .collect();
    let mut in_key = BTreeSet::new();
    // The arguments a template names; a placeholder that names none is an
    // error at the template.
    let named = |template: &crate::template::Template, what: &str, errors: &mut Errors| {
        let mut found = Vec::new();
        for placeholder in template.placeholders() {
            match &placeholder.target {
                Target::Arg(name, _) if names.contains(name) => found.push(name.clone()),
                Target::Arg(name, _) => errors.push(
                    template.lit.span(),
                    format!(
                        "`{{{name}}}` in {what} names no argument of `{}`{}",
                        func.sig.ident,
                        did_you_mean(name, names.iter().map(String::as_str))
                    ),
                ),
                Target::SelfValue(_) if func.receiver().is_none() => errors.push(
                    template.lit.span(),
                    format!(
                        "{what} uses `self`, but `{}` takes no `self`",
                        func.sig.ident
                    ),
                ),
                Target::SelfValue(_) => {}
            }
        }
        found
    };
    if let Some(template) = &attr.key {
        // A field path counts its argument as in the key: the user chose
        // what of it tells calls apart.
        in_key.extend(named(template, "the key", errors));
    }
    // A tag's placeholders must name arguments too, but a tag does not tell
    // calls apart: an argument only in a tag is not in the key.
    for template in &attr.tags {
        named(template, "a tag", errors);
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
            // A binding inside a pattern is keyed as an argument is.
            let what = if arg.plain { "argument" } else { "binding" };
            for ident in &arg.bindings {
                let name = ident.to_string();
                if !in_key.contains(&name) && !ignored.contains(&name) {
                    errors.push(
                        ident.span(),
                        format!(
                            "{what} `{name}` is not in the cache key, so calls that differ only in `{name}` would share one entry; add `{{{name}}}` to the key, or list it in `ignore({name})`"
                        ),
                    );
                }
            }
        }
    }
}

fn options(attr: &Attr, output: &Output, errors: &mut Errors) {
    let large = attr.large_data.as_ref().is_some_and(|flag| flag.value);
    if let Some(compress) = &attr.compress {
        if !large && !matches!(output, Output::Iter(..) | Output::Stream(_)) {
            errors.push(
                compress.span,
                "`compress` applies to large data, iterators and streams only; add `large_data`, or remove `compress`",
            );
        }
    }
    if let Some(fail_safe) = &attr.fail_safe {
        if !matches!(output, Output::Result(_)) {
            errors.push(
                fail_safe.span,
                "`fail_safe` applies to functions returning `Result`: only a recomputation that returns `Err` falls back on the last good value; return a `Result`, or remove `fail_safe`",
            );
        }
    }
    if let Some(cache_if) = &attr.cache_if {
        if matches!(output, Output::Iter(..) | Output::Stream(_)) {
            errors.push(
                cache_if.span,
                "`cache_if` applies to values, not to iterators or streams, whose items are stored as they come; remove `cache_if`",
            );
        }
    }
    let hot = [
        ("local", attr.local.as_ref().map(|o| o.span)),
        ("refresh_ahead", attr.refresh_ahead.as_ref().map(|o| o.span)),
        ("stale", attr.stale.as_ref().map(|o| o.span)),
        ("fail_safe", attr.fail_safe.as_ref().map(|o| o.span)),
    ];
    for (name, span) in hot {
        let Some(span) = span else { continue };
        if matches!(output, Output::Iter(..) | Output::Stream(_)) {
            errors.push(
                span,
                format!("`{name}` applies to values, not to iterators or streams; remove `{name}`"),
            );
        } else if large {
            errors.push(
                span,
                format!("`{name}` applies to values stored whole, not to `large_data`; remove one of them"),
            );
        }
    }
    if let Some(coalesce) = &attr.coalesce {
        if matches!(output, Output::Iter(..) | Output::Stream(_)) {
            errors.push(
                coalesce.span,
                "`coalesce` applies to values: concurrent calls of an iterator or a stream each compute; remove `coalesce`",
            );
        }
    }
}
