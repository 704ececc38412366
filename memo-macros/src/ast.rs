//! A model of the function under the attribute: its parts kept as the user
//! wrote them, plus what the expansion needs to know — the receiver, the
//! names each argument binds, and which kind of value it returns.
//!
//! The body is kept as unparsed tokens: the expansion moves it into a
//! closure without looking inside, which keeps the macro fast on big
//! functions.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Pat, PathArguments, Receiver, ReturnType, Signature,
    Token, Type, TypeParamBound, Visibility, braced,
};

/// A function, method or trait method with a default body.
pub(crate) struct Function {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub sig: Signature,
    /// The body, braces included; `None` for a body-less trait method.
    pub body: Option<TokenStream>,
}

/// One non-receiver argument.
pub(crate) struct Arg {
    /// The names the pattern binds, in order: the one name of `x`, `mut x`
    /// or `ref x`, or those inside a destructuring pattern (`Path(id)`,
    /// `(a, b)`, `Query(Params { page, .. })`). Empty for `_`.
    pub bindings: Vec<Ident>,
    /// The name the forwarding items (the function, `_refresh`) take the
    /// argument by and pass it on as: a plain binding's own name; for a
    /// pattern, a hidden one, since only the memoizing body destructures.
    pub forward: Ident,
    /// Whether the pattern is a plain binding, so that `forward` is the
    /// user's own name.
    pub plain: bool,
    /// Where the pattern holds a macro, whose bindings cannot be seen.
    pub opaque: Option<Span>,
    /// Whether a binding is by reference (`ref x`), which borrows from the
    /// argument: a closure that captures it is not `'static`.
    pub by_ref: bool,
    pub pat: Pat,
    pub ty: Type,
}

/// What the function returns, and so which runtime call caches it.
pub(crate) enum Output {
    /// No return value (`fn f()` or `-> ()`), spanned at what to fix.
    Nothing(Span),
    /// A plain value: `cache_memoize`.
    Value(Type),
    /// `Result<T, E>`: `try_cache_memoize`, only `Ok` is stored.
    Result(Type),
    /// Iterator mode: `cache_memoize_iter`.
    Iter(IterShape, Type),
    /// Stream mode, `impl Stream<Item = T>`: `cache_memoize_stream`.
    Stream(Type),
}

/// How the runtime's iterator becomes the declared return type.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum IterShape {
    /// `impl Iterator<Item = T>`: returned as is.
    Impl,
    /// `Box<dyn Iterator<Item = T> + ...>`: boxed.
    Boxed,
    /// Anything else under `#[cache_memoize_iter]` (a `Vec<T>`, say):
    /// collected with `FromIterator`.
    Collect,
}

impl Parse for Function {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let sig: Signature = input.parse()?;
        let body = if input.peek(Token![;]) {
            input.parse::<Token![;]>()?;
            None
        } else {
            let content;
            let brace = braced!(content in input);
            let inner: TokenStream = content.parse()?;
            let mut group = proc_macro2::Group::new(proc_macro2::Delimiter::Brace, inner);
            group.set_span(brace.span.join());
            Some(proc_macro2::TokenTree::Group(group).into())
        };
        Ok(Function {
            attrs,
            vis,
            sig,
            body,
        })
    }
}

impl Function {
    /// The `self` receiver, if this is a method.
    pub(crate) fn receiver(&self) -> Option<&Receiver> {
        match self.sig.inputs.first() {
            Some(FnArg::Receiver(receiver)) => Some(receiver),
            _ => None,
        }
    }

    /// The arguments after the receiver.
    pub(crate) fn args(&self) -> Vec<Arg> {
        self.sig
            .inputs
            .iter()
            .filter_map(|input| match input {
                FnArg::Typed(typed) => Some(typed),
                FnArg::Receiver(_) => None,
            })
            .enumerate()
            .map(|(index, typed)| {
                let mut finder = Bindings::default();
                finder.visit_pat(&typed.pat);
                let plain = binding_name(&typed.pat);
                Arg {
                    forward: plain.clone().unwrap_or_else(|| {
                        Ident::new(&format!("__memo_arg{index}"), Span::mixed_site())
                    }),
                    plain: plain.is_some(),
                    bindings: finder.names,
                    opaque: finder.opaque,
                    by_ref: finder.by_ref,
                    pat: (*typed.pat).clone(),
                    ty: (*typed.ty).clone(),
                }
            })
            .collect()
    }

    /// Whether the signature is owned as written, so that its arguments
    /// and return value may be required to be `'static`: no receiver (a
    /// `self` by value may still carry a lifetime), no generic or lifetime
    /// parameters, no `ref` binding (the body's closure would borrow the
    /// argument), and no argument type or return type with a reference, a
    /// lifetime, `impl`, `dyn`, `Self` or a macro in it. With no input
    /// lifetime, an elided lifetime can then hide only in a path written
    /// without `'_` (`Cow<str>`), which is the documented edge.
    pub(crate) fn is_owned(&self, args: &[Arg]) -> bool {
        let returns_owned = match &self.sig.output {
            ReturnType::Default => true,
            ReturnType::Type(_, ty) => is_owned_type(ty.to_token_stream()),
        };
        self.receiver().is_none()
            && self.sig.generics.params.is_empty()
            && self.sig.generics.where_clause.is_none()
            && returns_owned
            && args
                .iter()
                .all(|arg| !arg.by_ref && is_owned_type(arg.ty.to_token_stream()))
    }

    /// Whether this is an `async fn`, memoized by the async API.
    pub(crate) fn is_async(&self) -> bool {
        self.sig.asyncness.is_some()
    }

    /// What the function returns; `iter` is true under
    /// `#[cache_memoize_iter]`, which makes any return type iterator mode.
    pub(crate) fn output(&self, iter: bool) -> Output {
        let ty = match &self.sig.output {
            ReturnType::Default => return Output::Nothing(self.sig.ident.span()),
            ReturnType::Type(_, ty) => (**ty).clone(),
        };
        if matches!(&ty, Type::Tuple(tuple) if tuple.elems.is_empty()) {
            return Output::Nothing(ty.span());
        }
        if is_stream(&ty) {
            Output::Stream(ty)
        } else if let Some(shape) = iter_shape(&ty) {
            Output::Iter(shape, ty)
        } else if iter {
            Output::Iter(IterShape::Collect, ty)
        } else if is_result(&ty) {
            Output::Result(ty)
        } else {
            Output::Value(ty)
        }
    }
}

/// Whether a type, as written, is free of anything that may borrow: `&`, a
/// lifetime, `impl`, `dyn`, `Self`, or a macro that could expand to any of
/// them. Read token by token, so nothing nested escapes.
fn is_owned_type(tokens: TokenStream) -> bool {
    tokens.into_iter().all(|tree| match tree {
        TokenTree::Punct(punct) => !matches!(punct.as_char(), '&' | '\'' | '!'),
        TokenTree::Ident(ident) => !(ident == "impl" || ident == "dyn" || ident == "Self"),
        TokenTree::Group(group) => is_owned_type(group.stream()),
        TokenTree::Literal(_) => true,
    })
}

/// The name a simple binding (`x`, `mut x`, `ref x`) introduces.
fn binding_name(pat: &Pat) -> Option<Ident> {
    match pat {
        Pat::Ident(ident) if ident.subpat.is_none() => Some(ident.ident.clone()),
        _ => None,
    }
}

/// The names a pattern binds, in the order written, whether one binds by
/// reference, and the first macro in it (which may bind names unseen).
#[derive(Default)]
struct Bindings {
    names: Vec<Ident>,
    by_ref: bool,
    opaque: Option<Span>,
}

impl<'ast> Visit<'ast> for Bindings {
    fn visit_pat_ident(&mut self, pat: &'ast syn::PatIdent) {
        self.names.push(pat.ident.clone());
        self.by_ref |= pat.by_ref.is_some();
        syn::visit::visit_pat_ident(self, pat);
    }

    fn visit_pat(&mut self, pat: &'ast Pat) {
        match pat {
            Pat::Macro(_) | Pat::Verbatim(_) => {
                self.opaque.get_or_insert(pat.span());
            }
            _ => syn::visit::visit_pat(self, pat),
        }
    }

    // A constant or a range bound in a pattern (refutable, which rustc
    // rejects in an argument anyway) binds nothing.
    fn visit_expr(&mut self, _: &'ast syn::Expr) {}
}

/// `Result<..>` by its last path segment, so `io::Result<T>` and
/// `anyhow::Result<T>` count too.
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Result" && !last.arguments.is_empty()),
        Type::Paren(inner) => is_result(&inner.elem),
        Type::Group(inner) => is_result(&inner.elem),
        _ => false,
    }
}

/// `T` in `Result<T, E>` or `io::Result<T>`.
pub(crate) fn type_argument(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// `T` in `impl Iterator<Item = T>`, `Box<dyn Iterator<Item = T>>`; `None`
/// for a collection, whose item type the compiler infers.
pub(crate) fn iterator_item(ty: &Type) -> Option<&Type> {
    let bounds = match ty {
        Type::ImplTrait(imp) => &imp.bounds,
        Type::Paren(inner) => return iterator_item(&inner.elem),
        Type::Group(inner) => return iterator_item(&inner.elem),
        _ => match type_argument(ty)? {
            Type::TraitObject(object) => &object.bounds,
            _ => return None,
        },
    };
    bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let last = bound.path.segments.last()?;
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Item" => Some(&assoc.ty),
            _ => None,
        })
    })
}

fn iter_shape(ty: &Type) -> Option<IterShape> {
    match ty {
        Type::ImplTrait(imp) if has_iterator_bound(&imp.bounds) => Some(IterShape::Impl),
        Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            let inner = match args.args.first()? {
                GenericArgument::Type(Type::TraitObject(object)) if last.ident == "Box" => object,
                _ => return None,
            };
            has_iterator_bound(&inner.bounds).then_some(IterShape::Boxed)
        }
        Type::Paren(inner) => iter_shape(&inner.elem),
        Type::Group(inner) => iter_shape(&inner.elem),
        _ => None,
    }
}

/// `impl Stream<Item = T>`, whatever the path to `Stream`
/// (`futures_core::Stream`, `futures::Stream`, `tokio_stream::Stream`): a
/// trait bound whose last segment is `Stream` and binds `Item`. Without
/// the `Item` binding the cached type is unknown, and the function is
/// treated as returning a value (which fails at the `impl`).
fn is_stream(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(imp) => imp.bounds.iter().any(|bound| match bound {
            TypeParamBound::Trait(bound) => bound.path.segments.last().is_some_and(|last| {
                last.ident == "Stream"
                    && matches!(&last.arguments, PathArguments::AngleBracketed(args)
                        if args.args.iter().any(|arg| matches!(arg,
                            GenericArgument::AssocType(assoc) if assoc.ident == "Item")))
            }),
            _ => false,
        }),
        Type::Paren(inner) => is_stream(&inner.elem),
        Type::Group(inner) => is_stream(&inner.elem),
        _ => false,
    }
}

fn has_iterator_bound<'a>(bounds: impl IntoIterator<Item = &'a TypeParamBound>) -> bool {
    bounds.into_iter().any(|bound| match bound {
        TypeParamBound::Trait(trait_bound) => trait_bound
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Iterator"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    fn output(f: Function, iter: bool) -> &'static str {
        match f.output(iter) {
            Output::Nothing(_) => "nothing",
            Output::Value(_) => "value",
            Output::Result(_) => "result",
            Output::Iter(IterShape::Impl, _) => "iter",
            Output::Iter(IterShape::Boxed, _) => "boxed",
            Output::Iter(IterShape::Collect, _) => "collect",
            Output::Stream(_) => "stream",
        }
    }

    #[test]
    fn classifies_return_types() {
        assert_eq!(
            output(
                parse_quote!(
                    fn f() {}
                ),
                false
            ),
            "nothing"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> () {}
                ),
                false
            ),
            "nothing"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> u32 {
                        1
                    }
                ),
                false
            ),
            "value"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> Result<u32, E> {
                        x
                    }
                ),
                false
            ),
            "result"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> io::Result<u32> {
                        x
                    }
                ),
                false
            ),
            "result"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f(a: &str) -> impl Iterator<Item = u8> + '_ {
                        x
                    }
                ),
                false
            ),
            "iter"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> Box<dyn Iterator<Item = u8> + Send> {
                        x
                    }
                ),
                false
            ),
            "boxed"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> Vec<u8> {
                        x
                    }
                ),
                false
            ),
            "value"
        );
        assert_eq!(
            output(
                parse_quote!(
                    fn f() -> Vec<u8> {
                        x
                    }
                ),
                true
            ),
            "collect"
        );
    }

    #[test]
    fn recognises_streams_by_their_item_binding() {
        let stream = |f: Function| output(f, false);
        assert_eq!(
            stream(parse_quote!(
                fn f() -> impl Stream<Item = u8> {}
            )),
            "stream"
        );
        assert_eq!(
            stream(parse_quote!(
                fn f() -> impl futures_core::Stream<Item = u8> + Send + 'static {}
            )),
            "stream"
        );
        assert_eq!(
            stream(parse_quote!(
                fn f() -> impl ::tokio_stream::Stream<Item = (u8, String)> {}
            )),
            "stream"
        );
        assert_eq!(
            stream(parse_quote!(
                async fn f() -> impl futures::Stream<Item = u8> {}
            )),
            "stream"
        );
        assert_eq!(
            stream(parse_quote!(
                fn f() -> impl Stream {}
            )),
            "value",
            "no `Item`: the cached type is unknown"
        );
        assert_eq!(
            stream(parse_quote!(
                fn f() -> MyStream<Item> {}
            )),
            "value"
        );
        let ty: Type = parse_quote!(impl futures::Stream<Item = Vec<u8>> + Send);
        assert_eq!(iterator_item(&ty), Some(&parse_quote!(Vec<u8>)));
    }

    #[test]
    fn finds_the_cached_type() {
        let ty: Type = parse_quote!(io::Result<Vec<u8>>);
        assert_eq!(type_argument(&ty), Some(&parse_quote!(Vec<u8>)));
        let ty: Type = parse_quote!(impl Iterator<Item = (u8, String)> + '_);
        assert_eq!(iterator_item(&ty), Some(&parse_quote!((u8, String))));
        let ty: Type = parse_quote!(Box<dyn Iterator<Item = u8> + Send>);
        assert_eq!(iterator_item(&ty), Some(&parse_quote!(u8)));
        let ty: Type = parse_quote!(Vec<u8>);
        assert_eq!(iterator_item(&ty), None);
    }

    #[test]
    fn models_methods_and_arguments() {
        let f: Function = parse_quote! {
            /// Docs.
            #[must_use]
            pub(crate) fn get<'a, T: Clone>(&self, id: u64, mut name: &'a str, (a, b): (u8, u8), _: T) -> u64 where T: Copy { 1 }
        };
        assert!(f.receiver().is_some());
        assert_eq!(f.attrs.len(), 2);
        let args = f.args();
        let names: Vec<Vec<String>> = args
            .iter()
            .map(|a| a.bindings.iter().map(Ident::to_string).collect())
            .collect();
        assert_eq!(names, [vec!["id"], vec!["name"], vec!["a", "b"], vec![]]);
        let forward: Vec<String> = args.iter().map(|a| a.forward.to_string()).collect();
        assert_eq!(forward, ["id", "name", "__memo_arg2", "__memo_arg3"]);
        assert!(args[0].plain && args[1].plain && !args[2].plain && !args[3].plain);
    }

    #[test]
    fn finds_the_names_patterns_bind() {
        let f: Function = parse_quote! {
            fn get(
                Path(id): Path<u32>,
                Query(Params { page, per_page: mut size, .. }): Query<Params>,
                &(ref x, _): &(u8, u8),
                [first, rest @ ..]: [u8; 3],
                whole @ Wrapper(inner): Wrapper,
                m!(): u8,
            ) -> u64 { 1 }
        };
        let args = f.args();
        let names: Vec<Vec<String>> = args
            .iter()
            .map(|a| a.bindings.iter().map(Ident::to_string).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec!["id"],
                vec!["page", "size"],
                vec!["x"],
                vec!["first", "rest"],
                vec!["whole", "inner"],
                vec![],
            ]
        );
        assert!(args[2].by_ref && !args[0].by_ref);
        assert!(args[5].opaque.is_some() && args[0].opaque.is_none());
    }

    #[test]
    fn tells_owned_signatures() {
        let owned = |f: Function| f.is_owned(&f.args());
        for f in [
            quote!(
                fn f(id: u64, name: String) -> Vec<String> {}
            ),
            quote!(
                async fn f(ids: Vec<(u8, Option<String>)>) -> Result<u8, String> {}
            ),
            quote!(
                fn f(cb: fn(u8) -> u8) -> std::collections::HashMap<u8, u8> {}
            ),
        ] {
            assert!(owned(syn::parse2(f.clone()).unwrap()), "{f}");
        }
        for f in [
            quote!(
                fn f(&self) -> u8 {}
            ),
            quote!(
                fn f(self) -> u8 {}
            ),
            quote!(
                fn f(name: &str) -> u8 {}
            ),
            quote!(
                fn f(name: Cow<'_, str>) -> u8 {}
            ),
            quote!(
                fn f<T>(x: T) -> u8 {}
            ),
            quote!(
                fn f<'a>(x: u8) -> u8 {}
            ),
            quote!(
                fn f(x: u8) -> u8
                where
                    u8: Copy,
                {
                }
            ),
            quote!(
                fn f(x: Box<dyn Fn()>) -> u8 {}
            ),
            quote!(
                fn f(x: impl Into<u8>) -> u8 {}
            ),
            quote!(
                fn f(x: Vec<Self>) -> u8 {}
            ),
            quote!(
                fn f(x: ty!()) -> u8 {}
            ),
            quote!(
                fn f(x: u8) -> Self {}
            ),
            quote!(
                async fn f(x: u8) -> &'static str {}
            ),
            quote!(
                fn f(x: u8) -> Box<dyn Send> {}
            ),
        ] {
            assert!(!owned(syn::parse2(f.clone()).unwrap()), "{f}");
        }
    }

    #[test]
    fn trait_methods_may_lack_a_body() {
        let f: Function = parse_quote!(
            fn get(&self) -> u64;
        );
        assert!(f.body.is_none());
    }
}
