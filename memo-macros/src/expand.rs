//! The rewrite: the function keeps its signature, and its body becomes a
//! closure handed to one runtime call, after building the key and the
//! options. Next to it, `<fn>_invalidate` and `<fn>_refresh`; with those
//! helpers, the memoizing body sits in a hidden sibling, `__memo_<fn>`,
//! which takes whether to refresh as its last argument, and the function
//! and `<fn>_refresh` call it.
//!
//! Generated code names the runtime only as
//! `::memo_runtime::__private::v<major>_<minor>::*`, so a user's own
//! `Result`, `String` or `serde` cannot capture a name, and a macro paired
//! with a runtime of another version fails to compile instead of misbehaving.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{Attribute, FnArg, GenericParam, Ident, Token, Type, parse_quote};

use crate::ast::{self, Arg, Function, IterShape, Output};
use crate::attr::{Attr, Flag};
use crate::errors::Errors;
use crate::template::{Field, Piece, Placeholder, Target};
use crate::valid;

/// Which attribute was written.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// `#[cache_memoize]`: the return type picks the runtime call.
    Auto,
    /// `#[cache_memoize_iter]`: iterator mode whatever the return type.
    Iter,
}

/// Expands the attribute; on any mistake, the errors and the function
/// unchanged.
pub(crate) fn memoize(args: TokenStream, input: TokenStream, mode: Mode) -> TokenStream {
    let func: Function = match syn::parse2(input.clone()) {
        Ok(func) => func,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                format!("#[cache_memoize] applies to a function: {error}"),
            );
            return fallback(error, input);
        }
    };
    let mut errors = Errors::default();
    let attr = Attr::parse(args, &mut errors);
    let args = func.args();
    let output = func.output(matches!(mode, Mode::Iter));
    valid::check(&attr, &func, &args, &output, &mut errors);
    if let Err(error) = errors.finish() {
        // Stand-in helpers keep their callers compiling; an opaque
        // type (`impl Iterator`, `impl Stream`, `impl Future`) cannot be
        // stood in for by a diverging body.
        let opaque = matches!(&func.sig.output, syn::ReturnType::Type(_, ty) if matches!(**ty, Type::ImplTrait(_)));
        let helpers = if valid::signature_is_usable(&func, &args, &output) && !opaque {
            helpers(&attr, &func, &args, &output, &quote!({ loop {} }))
        } else {
            TokenStream::new()
        };
        let mut tokens = fallback(error, input);
        tokens.extend(helpers);
        return tokens;
    }

    let Function {
        attrs,
        vis,
        sig,
        body,
    } = &func;
    let body = body.as_ref().expect("validated: has a body");
    let key = key(&attr, &func, &args);
    let call = call(
        &output,
        body,
        func.is_async(),
        attr.local.is_some(),
        owned(&attr, &func, &args),
        attr.cache_if.as_ref().map(|predicate| &predicate.value),
    );
    let (options_var, key_var) = locals();
    if !has_helpers(&attr) {
        // No `_refresh` to share the body with, and no room for a sibling
        // item in a trait impl: the body stays in the function.
        let mut options = options(&attr, &func, None);
        options.extend(tags(&attr, &func, &args));
        return quote! {
            #(#attrs)*
            #vis #sig {
                let #options_var = #options;
                let #key_var = #key;
                #call
            }
        };
    }

    // The memoizing body moves into a hidden sibling that takes whether
    // to refresh as an argument; the function and `_refresh` both call it.
    // Passed this way, the request reaches that one call and no other
    // memoized call made on the way (in an option's expression, in a key
    // argument's `Display`, in the body).
    let refresh = refresh_var();
    let mut options = options(&attr, &func, Some(&refresh));
    options.extend(tags(&attr, &func, &args));
    let rt = runtime();
    let mut memoized = sig.clone();
    memoized.ident = memoized_name(&sig.ident);
    memoized.inputs.push(parse_quote!(#refresh: #rt::bool));
    let mut outer = sig.clone();
    outer.inputs = forwarding_inputs(&func, &args);
    let forward = forward(&func, &args, quote!(false));
    let carried = carried(attrs);
    let helpers = helpers(&attr, &func, &args, &output, &TokenStream::new());
    // `too_many_arguments` would count the refresh argument, which the
    // user never wrote.
    quote! {
        #(#attrs)*
        #vis #outer {
            #forward
        }

        #(#carried)*
        #[doc(hidden)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        #memoized {
            let #options_var = #options;
            let #key_var = #key;
            #call
        }

        #helpers
    }
}

/// Whether `<fn>_invalidate` and `<fn>_refresh` are generated.
fn has_helpers(attr: &Attr) -> bool {
    attr.helpers.as_ref().is_none_or(|flag| flag.value)
}

/// The hidden sibling that holds the memoizing body: `__memo_<fn>`.
fn memoized_name(name: &Ident) -> Ident {
    format_ident!("__memo_{}", name)
}

/// The sibling's refresh argument, invisible to the user's body.
fn refresh_var() -> Ident {
    Ident::new("__memo_refresh", Span::mixed_site())
}

/// The attributes that the generated items repeat from the function:
/// `cfg`, so that they exist exactly when it does, and `allow`, so that
/// what the user allowed in the body stays allowed where the body goes.
fn carried(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("allow"))
        .collect()
}

/// The function's parameters as the items that forward them declare
/// them: each argument bound by one name (a `mut` or `ref` there would
/// only draw a warning; a pattern is destructured by the memoizing body
/// alone), the receiver without `mut` unless it is `&mut self`, and no
/// parameter attributes.
fn forwarding_inputs(func: &Function, args: &[Arg]) -> Punctuated<FnArg, Token![,]> {
    let mut inputs = func.sig.inputs.clone();
    let mut names = args.iter().map(|arg| &arg.forward);
    for input in &mut inputs {
        match input {
            FnArg::Receiver(receiver) => {
                if receiver.reference.is_none() {
                    receiver.mutability = None;
                }
                receiver.attrs.clear();
            }
            FnArg::Typed(typed) => {
                let name = names.next().expect("one name per argument");
                typed.attrs.clear();
                *typed.pat = parse_quote!(#name);
            }
        }
    }
    inputs
}

/// The call of the memoizing sibling with every argument forwarded and
/// `refresh` last, awaited for an `async fn`. Type and const parameters
/// are named, in case one appears in no argument; lifetimes are left to
/// inference (naming a late-bound one is an error).
fn forward(func: &Function, args: &[Arg], refresh: TokenStream) -> TokenStream {
    let memoized = memoized_name(&func.sig.ident);
    let generics: Vec<TokenStream> = func
        .sig
        .generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(param) => {
                let ident = &param.ident;
                Some(quote!(#ident))
            }
            GenericParam::Const(param) => {
                let ident = &param.ident;
                Some(quote!(#ident))
            }
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    let turbofish = (!generics.is_empty()).then(|| quote!(::<#(#generics),*>));
    let forwarded = args.iter().map(|arg| &arg.forward);
    let call = match func.receiver() {
        Some(receiver) => {
            let self_token = &receiver.self_token;
            quote!(Self::#memoized #turbofish(#self_token, #(#forwarded,)* #refresh))
        }
        None => quote!(#memoized #turbofish(#(#forwarded,)* #refresh)),
    };
    if func.is_async() {
        quote!(#call.await)
    } else {
        call
    }
}

/// The errors, then the function as written: its callers still type-check.
fn fallback(error: syn::Error, input: TokenStream) -> TokenStream {
    let mut tokens = error.to_compile_error();
    tokens.extend(input);
    tokens
}

/// `::memo_runtime::__private::v0_1`: the hidden module of this version.
fn runtime() -> TokenStream {
    let module = format_ident!(
        "v{}_{}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    quote!(::memo_runtime::__private::#module)
}

/// The runtime's path spanned at `span`: a bound that an `async fn`
/// wrapper's future carries is reported where its path is written, which
/// must be the user's type rather than the attribute.
fn runtime_at(span: Span) -> TokenStream {
    runtime()
        .into_iter()
        .map(|mut tree| {
            tree.set_span(span);
            tree
        })
        .collect()
}

/// The expansion's own locals, invisible to the user's body (mixed-site
/// hygiene), so a parameter named like them is not shadowed.
fn locals() -> (Ident, Ident) {
    (
        Ident::new("__memo_options", Span::mixed_site()),
        Ident::new("__memo_key", Span::mixed_site()),
    )
}

/// `Options::new().function(..).expiration(..)...`: the function (its path,
/// for spans and metrics), only the options the user wrote, and
/// `force_overwrite(<refresh>)` when `refresh` names the memoizing
/// sibling's refresh argument (a `force_overwrite` the user turned on
/// needs no refresh on top).
fn options(attr: &Attr, func: &Function, refresh: Option<&Ident>) -> TokenStream {
    let rt = runtime();
    let name = format!("::{}", syn::ext::IdentExt::unraw(&func.sig.ident));
    // A static per function: it holds the function's metric keys, made
    // once (see `memo_runtime::Function`).
    let mut tokens = quote!(#rt::Options::new().function({
        static __MEMO_FUNCTION: #rt::Function =
            #rt::Function::new(#rt::concat!(#rt::module_path!(), #name));
        &__MEMO_FUNCTION
    }));
    let secs = |expr: &syn::Expr| quote_spanned!(expr.span()=> #rt::Duration::from_secs(#expr));
    if let Some(expiration) = &attr.expiration {
        let expiration = secs(expiration);
        tokens.extend(quote!(.expiration(#expiration)));
    }
    if let Some(jitter) = &attr.jitter {
        let setter = Ident::new("expiration_jitter", jitter.span);
        let fraction = &jitter.value;
        let fraction = quote_spanned!(fraction.span()=> #fraction);
        tokens.extend(quote!(.#setter(#fraction)));
    }
    let force_overwrite = match (&attr.force_overwrite, refresh) {
        (Some(Flag { value: false, span }), Some(refresh)) => Some((*span, quote!(#refresh))),
        (Some(Flag { value, span }), _) => Some((*span, quote!(#value))),
        (None, Some(refresh)) => Some((Span::call_site(), quote!(#refresh))),
        (None, None) => None,
    };
    if let Some((span, value)) = force_overwrite {
        let setter = Ident::new("force_overwrite", span);
        tokens.extend(quote!(.#setter(#value)));
    }
    let flags: [(&str, &Option<Flag>); 4] = [
        ("large_data", &attr.large_data),
        ("compress", &attr.compress),
        ("encrypt", &attr.encrypt),
        ("coalesce", &attr.coalesce),
    ];
    for (setter, flag) in flags {
        if let Some(Flag { value, span }) = flag {
            let setter = Ident::new(setter, *span);
            tokens.extend(quote!(.#setter(#value)));
        }
    }
    if let Some(local) = &attr.local {
        let duration = secs(&local.value);
        let setter = Ident::new("local", local.span);
        tokens.extend(quote!(.#setter(#duration)));
    }
    if let Some(refresh) = &attr.refresh_ahead {
        let setter = Ident::new("refresh_ahead", refresh.span);
        let beta = match &refresh.value {
            Some(beta) => quote_spanned!(beta.span()=> #beta),
            None => quote!(1.0),
        };
        tokens.extend(quote!(.#setter(#beta)));
    }
    if let Some(stale) = &attr.stale {
        let window = secs(&stale.value);
        let setter = Ident::new("stale_while_revalidate", stale.span);
        tokens.extend(quote!(.#setter(#window)));
    }
    if let Some(fail_safe) = &attr.fail_safe {
        let window = secs(&fail_safe.value);
        let setter = Ident::new("fail_safe", fail_safe.span);
        tokens.extend(quote!(.#setter(#window)));
    }
    if let Some(lock) = &attr.lock {
        let mut lock_options = quote!(#rt::LockOptions::new());
        if let Some(Flag { value, .. }) = &lock.blocking {
            lock_options.extend(quote!(.blocking(#value)));
        }
        if let Some(timeout) = &lock.timeout {
            let timeout = secs(timeout);
            lock_options.extend(quote!(.timeout(#timeout)));
        }
        if let Some(retry) = &lock.retry {
            let retry = quote_spanned!(retry.span()=> #rt::Duration::from_millis(#retry));
            lock_options.extend(quote!(.retry(#retry)));
        }
        if let Some(expiration) = &lock.expiration {
            let expiration = secs(expiration);
            lock_options.extend(quote!(.lock_expiration(#expiration)));
        }
        tokens.extend(quote!(.lock(#lock_options)));
    }
    tokens
}

/// `.tags([...])`, each tag built from its template as the key is, or
/// nothing without tags.
fn tags(attr: &Attr, func: &Function, args: &[Arg]) -> TokenStream {
    if attr.tags.is_empty() {
        return TokenStream::new();
    }
    let rt = runtime();
    let tags = attr.tags.iter().map(|template| {
        let components: Vec<Component> = template
            .components
            .iter()
            .map(|pieces| component(pieces, func, args, template.lit.span()))
            .collect();
        match components.as_slice() {
            [only] => only.to_string_tokens(),
            many => {
                let parts = part_tokens(many);
                quote!(#rt::tag(#rt::KeyParts::new()#(#parts)*.finish()))
            }
        }
    });
    quote!(.tags([#(#tags),*]))
}

/// The key: the template's components, or the function's path and every
/// argument not ignored; then `v<N>` when a version is set. One component
/// is passed as its `String` (used as is); two or more are escaped and
/// joined into one string as they are built (`KeyParts`), the same key a
/// `[String; N]` would normalize to, with one allocation instead of one per
/// component and a vector.
fn key(attr: &Attr, func: &Function, args: &[Arg]) -> TokenStream {
    let rt = runtime();
    let mut components: Vec<Component> = match &attr.key {
        Some(template) => template
            .components
            .iter()
            .map(|pieces| component(pieces, func, args, template.lit.span()))
            .collect(),
        None => {
            let name = func.sig.ident.to_string();
            let scope = if func.receiver().is_some() {
                quote!(#rt::type_name::<Self>())
            } else {
                quote!(#rt::module_path!())
            };
            let mut components = vec![Component::Text(scope), Component::Literal(name)];
            components.extend(keyed(attr, args).map(|ident| Component::Display(quote!(#ident))));
            components
        }
    };
    if let Some(version) = &attr.version {
        let version = format!("v{}", version.base10_digits());
        components.push(Component::Literal(version));
    }
    match components.as_slice() {
        [] => quote!([] as [#rt::String; 0]),
        [only] => only.to_string_tokens(),
        many => {
            let parts = part_tokens(many);
            quote!(#rt::KeyParts::new()#(#parts)*.finish())
        }
    }
}

/// The calls that append `components` to a `KeyParts`: each run of
/// literal components escaped and joined here, at compile time, and
/// appended as one piece.
fn part_tokens(components: &[Component]) -> Vec<TokenStream> {
    let mut parts = Vec::new();
    let mut run: Vec<String> = Vec::new();
    fn flush(run: &mut Vec<String>, parts: &mut Vec<TokenStream>) {
        if !run.is_empty() {
            let joined = run.join(":");
            parts.push(quote!(.escaped(#joined)));
            run.clear();
        }
    }
    for component in components {
        if let Component::Literal(text) = component {
            run.push(escape_component(text));
        } else {
            flush(&mut run, &mut parts);
            parts.push(component.to_part_tokens());
        }
    }
    flush(&mut run, &mut parts);
    parts
}

/// A component escaped as the runtime's `KeyParts` escapes it: `%` as
/// `%25` and `:` as `%3A`, so that no component forges a separator.
fn escape_component(text: &str) -> String {
    text.replace('%', "%25").replace(':', "%3A")
}

/// One key component, as the expansion builds it.
enum Component {
    /// Text known when the function is compiled.
    Literal(String),
    /// An expression of type `&str`.
    Text(TokenStream),
    /// A value written with its `Display`, spanned at the user's argument.
    Display(TokenStream),
    /// A `format!` string and its values.
    Format(String, Vec<TokenStream>),
}

impl Component {
    /// The component as a `String` of its own.
    fn to_string_tokens(&self) -> TokenStream {
        let rt = runtime();
        match self {
            Component::Literal(text) => quote!(#rt::String::from(#text)),
            Component::Text(text) => quote!(#rt::String::from(#text)),
            Component::Display(value) => {
                quote_spanned!(value.span()=> #rt::ToString::to_string(&#value))
            }
            Component::Format(format, values) => quote!(#rt::format!(#format, #(#values),*)),
        }
    }

    /// The component appended to a `KeyParts`.
    fn to_part_tokens(&self) -> TokenStream {
        let rt = runtime();
        match self {
            Component::Literal(text) => quote!(.text(#text)),
            Component::Text(text) => quote!(.text(#text)),
            // `KeyArg` picks the integer fast path by method resolution
            // (an integer's impl is found before the one behind a further
            // reference), so it is the argument's own type that decides.
            Component::Display(value) => {
                let append = quote_spanned! {value.span()=>
                    (&#rt::KeyArg(&#value)).append_to(parts);
                };
                quote! {
                    .append(|parts| {
                        // One of the two is used, whichever the type picks.
                        #[allow(unused_imports)]
                        use #rt::{AppendDisplay as _, AppendInteger as _};
                        #append
                    })
                }
            }
            Component::Format(format, values) => {
                quote!(.display(&#rt::format_args!(#format, #(#values),*)))
            }
        }
    }
}

/// The names that enter the default key: every one the arguments bind
/// (an argument's own, or those of its pattern) not in `ignore(...)`.
fn keyed<'a>(attr: &'a Attr, args: &'a [Arg]) -> impl Iterator<Item = &'a Ident> {
    args.iter()
        .flat_map(|arg| &arg.bindings)
        .filter(|name| !attr.ignore.contains(name))
}

/// One key component: a literal, one value's `Display`, or a format.
fn component(pieces: &[Piece], func: &Function, args: &[Arg], at: Span) -> Component {
    match pieces {
        [Piece::Text(text)] => Component::Literal(text.clone()),
        [
            Piece::Value(Placeholder {
                target,
                debug: false,
            }),
        ] => Component::Display(target_expr(target, func, args, at)),
        _ => {
            let mut format = String::new();
            let mut values = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Text(text) => {
                        format.push_str(&text.replace('{', "{{").replace('}', "}}"));
                    }
                    Piece::Value(placeholder) => {
                        format.push_str(if placeholder.debug { "{:?}" } else { "{}" });
                        values.push(target_expr(&placeholder.target, func, args, at));
                    }
                }
            }
            Component::Format(format, values)
        }
    }
}

/// The expression a placeholder stands for, starting at the user's own
/// argument so that a missing `Display` points there. Its fields are
/// located at the template (`at`), where the user wrote them, so that a
/// field the value lacks is reported there. They resolve as the macro's
/// own tokens do: rustc then offers no fix for them, which would replace
/// the whole template with the field it guessed.
fn target_expr(target: &Target, func: &Function, args: &[Arg], at: Span) -> TokenStream {
    let at = Span::mixed_site().located_at(at);
    let (root, fields) = match target {
        Target::Arg(name, fields) => {
            let ident = args
                .iter()
                .flat_map(|arg| &arg.bindings)
                .find(|ident| *ident == name)
                .expect("validated: the placeholder names an argument");
            (quote!(#ident), fields)
        }
        Target::SelfValue(fields) => {
            let receiver = func.receiver().expect("validated: the function takes self");
            let self_token = &receiver.self_token;
            (quote!(#self_token), fields)
        }
    };
    let fields = fields.iter().map(|field| match field {
        Field::Named(name) => {
            let ident = Ident::new(name, at);
            quote!(#ident)
        }
        Field::Index(index) => {
            let index = syn::Index {
                index: *index,
                span: at,
            };
            quote!(#index)
        }
    });
    quote!(#root #(.#fields)*)
}

/// Whether the expansion uses the runtime's detached calls, which require
/// the compute closure and the value to be `'static` and `Send`: when the
/// function sets `stale` or `refresh_ahead` (a won refresh then runs on the
/// background pool, or as a spawned task for async) and its signature is
/// owned as written (`Function::is_owned`). Otherwise a won refresh runs in
/// the foreground, as the general calls do.
fn owned(attr: &Attr, func: &Function, args: &[Arg]) -> bool {
    let hot = attr.stale.is_some() || attr.refresh_ahead.is_some();
    hot && func.is_owned(args)
}

/// The one runtime call, with the body as its closure. The cached type is
/// named with the span of the user's own type, so that a type the cache
/// cannot store is reported there, naming the serde traits it lacks.
///
/// For an `async fn` the closure returns the body as an `async move`
/// block, and the call is awaited: the expansion runs inside the
/// function's own future, which holds the arguments, so the block may
/// borrow what the arguments borrow. Only the key (owned strings), the
/// options and the closure live across the `.await`, so the future is
/// `Send` whenever the body's is.
///
/// With `local`, the `*_local` twins keep the decoded value per process;
/// they require `Clone`, reported at the return type. With `owned` (see
/// [`owned`]), the `*_detached` calls take the local copy's kind as a value.
/// With `cache_if`, the `*_if` calls ([`cache_if_call`]).
fn call(
    output: &Output,
    body: &TokenStream,
    is_async: bool,
    local: bool,
    owned: bool,
    cache_if: Option<&syn::Expr>,
) -> TokenStream {
    let rt = runtime();
    let (options, key) = locals();
    if let Some(predicate) = cache_if {
        if let Some(call) = cache_if_call(output, body, is_async, local, owned, predicate) {
            return call;
        }
    }
    if owned {
        if let Some(call) = owned_call(output, body, is_async, local) {
            return call;
        }
    }
    // `memoize` → `memoize_local`, `memoize_async` → `memoize_local_async`.
    let at = |name: &str, ty: &syn::Type| {
        let name = match (local, name.strip_suffix("_async")) {
            (false, _) => name.to_owned(),
            (true, Some(stem)) => format!("{stem}_local_async"),
            (true, None) => format!("{name}_local"),
        };
        Ident::new(&name, ty.span())
    };
    match output {
        Output::Value(ty) if is_async => {
            let rt = runtime_at(ty.span());
            let memoize = at("memoize_async", ty);
            quote_spanned! {ty.span()=>
                #rt::#memoize::<#ty, _, _, _>(#key, move || async move #body, &#options).await
            }
        }
        Output::Result(ty) if is_async => {
            let rt = runtime_at(ty.span());
            let ok = ast::type_argument(ty).map_or_else(|| quote!(_), |ok| quote!(#ok));
            let memoize = at("try_memoize_async", ty);
            quote_spanned! {ty.span()=>
                #rt::#memoize::<#ok, _, _, _, _>(#key, move || async move #body, &#options).await
            }
        }
        Output::Stream(ty) => {
            let item = ast::iterator_item(ty).map_or_else(|| quote!(_), |item| quote!(#item));
            quote_spanned! {ty.span()=>
                #rt::memoize_stream::<#item, _, _, _>(#key, move || #body, &#options)
            }
        }
        Output::Value(ty) => {
            let memoize = at("memoize", ty);
            quote_spanned! {ty.span()=>
                #rt::#memoize::<#ty, _, _>(#key, move || -> #ty #body, &#options)
            }
        }
        Output::Result(ty) => {
            let ok = ast::type_argument(ty).map_or_else(|| quote!(_), |ok| quote!(#ok));
            let memoize = at("try_memoize", ty);
            quote_spanned! {ty.span()=>
                #rt::#memoize::<#ok, _, _, _>(#key, move || -> #ty #body, &#options)
            }
        }
        Output::Iter(shape, ty) => {
            let item = ast::iterator_item(ty).map_or_else(|| quote!(_), |item| quote!(#item));
            // An opaque type cannot be written on a closure; a concrete one
            // is, which lets the body `collect()` into it.
            let compute = match shape {
                IterShape::Impl => quote!(move || #body),
                IterShape::Boxed | IterShape::Collect => quote!(move || -> #ty #body),
            };
            let iter = quote_spanned! {ty.span()=>
                #rt::memoize_iter::<#item, _, _, _>(#key, #compute, &#options)
            };
            match shape {
                IterShape::Impl => iter,
                IterShape::Boxed => quote!(#rt::Box::new(#iter)),
                IterShape::Collect => quote!(#rt::FromIterator::from_iter(#iter)),
            }
        }
        Output::Nothing(_) => unreachable!("validated: the function returns a value"),
    }
}

/// The runtime call for a value or a `Result` with `cache_if`, if that is
/// what the function returns: one of four calls, borrowed or owned, sync
/// or async, each told the result's shape (`Plain` or `Fallible`), the
/// checked predicate and the local copy's kind.
fn cache_if_call(
    output: &Output,
    body: &TokenStream,
    is_async: bool,
    local: bool,
    owned: bool,
    predicate: &syn::Expr,
) -> Option<TokenStream> {
    let (options, key) = locals();
    let (ty, cached, shape) = match output {
        Output::Value(ty) => (ty, quote!(#ty), "Plain"),
        Output::Result(ty) => {
            let ok = ast::type_argument(ty).map_or_else(|| quote!(_), |ok| quote!(#ok));
            (ty, ok, "Fallible")
        }
        _ => return None,
    };
    let rt = if is_async {
        runtime_at(ty.span())
    } else {
        runtime()
    };
    let name = match (owned, is_async) {
        (false, false) => "memoize_if",
        (true, false) => "memoize_detached_if",
        (false, true) => "memoize_if_async",
        (true, true) => "memoize_detached_if_async",
    };
    let memoize = Ident::new(name, ty.span());
    let shape = Ident::new(shape, ty.span());
    let keep = keep_kind(&cached, ty, local);
    let check = checked_predicate(&cached, predicate);
    Some(if is_async {
        quote_spanned! {ty.span()=>
            #rt::#memoize::<#cached, _, _, _, _, _, _, _>(#key, move || async move #body, &#options, #rt::#shape, #check, #rt::#keep).await
        }
    } else {
        quote_spanned! {ty.span()=>
            #rt::#memoize::<#cached, _, _, _, _, _, _>(#key, move || -> #ty #body, &#options, #rt::#shape, #check, #rt::#keep)
        }
    })
}

/// The `cache_if` predicate, checked to be a `Fn(&T) -> bool` for the
/// cached `T`: one of the wrong type fails at the predicate, with a
/// message that names the option (see the runtime's `CacheIfCheck`).
fn checked_predicate(cached: &TokenStream, predicate: &syn::Expr) -> TokenStream {
    let rt = runtime();
    let method = Ident::new("predicate", predicate.span());
    quote! {{
        // One of the two is used, whichever the predicate's type picks.
        #[allow(unused_imports)]
        use #rt::{IsCacheIf as _, NotCacheIf as _};
        #rt::CacheIfCheck::<#cached, _>::new(#predicate).#method()
    }}
}

/// How a local copy keeps the value, for the calls that take it as a
/// value: decoded with `local` (which requires `Clone` of `cached`,
/// reported at `ty`), else serialized.
fn keep_kind(cached: &TokenStream, ty: &syn::Type, local: bool) -> TokenStream {
    if local {
        let decoded = Ident::new("decoded", ty.span());
        quote_spanned!(ty.span()=> #decoded::<#cached>())
    } else {
        let serialized = Ident::new("Serialized", ty.span());
        quote!(#serialized)
    }
}

/// The owned runtime call for a value or a `Result`, if that is what the
/// function returns.
fn owned_call(
    output: &Output,
    body: &TokenStream,
    is_async: bool,
    local: bool,
) -> Option<TokenStream> {
    let (options, key) = locals();
    let ok = |ty: &syn::Type| ast::type_argument(ty).map_or_else(|| quote!(_), |ok| quote!(#ok));
    let kind = |ty: &syn::Type| {
        let cached = match output {
            Output::Result(_) => ok(ty),
            _ => quote!(#ty),
        };
        keep_kind(&cached, ty, local)
    };
    Some(match output {
        Output::Value(ty) if is_async => {
            let (rt, kind) = (runtime_at(ty.span()), kind(ty));
            quote_spanned! {ty.span()=>
                #rt::memoize_detached_async::<#ty, _, _, _, _>(#key, move || async move #body, &#options, #rt::#kind).await
            }
        }
        Output::Result(ty) if is_async => {
            let (rt, kind, ok) = (runtime_at(ty.span()), kind(ty), ok(ty));
            quote_spanned! {ty.span()=>
                #rt::try_memoize_detached_async::<#ok, _, _, _, _, _>(#key, move || async move #body, &#options, #rt::#kind).await
            }
        }
        Output::Value(ty) => {
            let (rt, kind) = (runtime(), kind(ty));
            quote_spanned! {ty.span()=>
                #rt::memoize_detached::<#ty, _, _, _>(#key, move || -> #ty #body, &#options, #rt::#kind)
            }
        }
        Output::Result(ty) => {
            let (rt, kind, ok) = (runtime(), kind(ty), ok(ty));
            quote_spanned! {ty.span()=>
                #rt::try_memoize_detached::<#ok, _, _, _, _>(#key, move || -> #ty #body, &#options, #rt::#kind)
            }
        }
        _ => return None,
    })
}

/// An argument as `_invalidate` takes it: a plain binding by its name; a
/// pattern as written, so that its bindings reach the key, but with every
/// ignored binding made `_` (it would be unused) and no `mut` (it would
/// draw a warning).
fn keyed_pattern(arg: &Arg, ignore: &[Ident]) -> syn::Pat {
    struct Keyed<'a>(&'a [Ident]);
    impl VisitMut for Keyed<'_> {
        fn visit_field_pat_mut(&mut self, field: &mut syn::FieldPat) {
            visit_mut::visit_field_pat_mut(self, field);
            // `Params { page, .. }` written shorthand, once `page` is `_`,
            // must name its field: `Params { page: _, .. }`.
            if field.colon_token.is_none() && !matches!(*field.pat, syn::Pat::Ident(_)) {
                field.colon_token = Some(Default::default());
            }
        }

        fn visit_pat_mut(&mut self, pat: &mut syn::Pat) {
            visit_mut::visit_pat_mut(self, pat);
            let syn::Pat::Ident(binding) = pat else {
                return;
            };
            binding.mutability = None;
            if self.0.contains(&binding.ident) {
                *pat = match binding.subpat.take() {
                    Some((_, subpat)) => *subpat,
                    None => parse_quote!(_),
                };
            }
        }
    }
    if arg.plain {
        let name = &arg.forward;
        return parse_quote!(#name);
    }
    let mut pat = arg.pat.clone();
    Keyed(ignore).visit_pat_mut(&mut pat);
    pat
}

/// `<fn>_invalidate` and `<fn>_refresh`, with `body` standing in for both
/// bodies when the function itself is in error.
///
/// Helpers of an `async fn` are `async`; so is `_invalidate` in stream
/// mode, whose callers are async code that a blocking call would stall.
fn helpers(
    attr: &Attr,
    func: &Function,
    args: &[Arg],
    output: &Output,
    stand_in: &TokenStream,
) -> TokenStream {
    if !has_helpers(attr) {
        return TokenStream::new();
    }
    let rt = runtime();
    let Function {
        attrs, vis, sig, ..
    } = func;
    let name = &sig.ident;
    let generics = &sig.generics;
    let where_clause = &generics.where_clause;
    let carried = carried(attrs);
    let ret = match &sig.output {
        syn::ReturnType::Type(_, ty) => ty,
        syn::ReturnType::Default => return TokenStream::new(),
    };
    let typed = |arg: &Arg| -> TokenStream {
        let pat = keyed_pattern(arg, &attr.ignore);
        let ty: &Type = &arg.ty;
        quote!(#pat: #ty)
    };

    let invalidate = format_ident!("{}_invalidate", name);
    let invalidate_doc = format!(
        " Drops the cache entry that `{name}` stored for these arguments, so that its next call computes the value afresh."
    );
    let receiver_ref = func.receiver().map(|receiver| {
        let self_token = &receiver.self_token;
        quote!(&#self_token,)
    });
    let keyed_args = args
        .iter()
        .filter(|arg| arg.bindings.iter().any(|n| !attr.ignore.contains(n)))
        .map(typed);
    let async_invalidate = func.is_async() || matches!(output, Output::Stream(_));
    let invalidate_async = async_invalidate.then(|| quote!(async));
    let invalidate_body = if stand_in.is_empty() {
        let (options_var, key_var) = locals();
        let options = options(attr, func, None);
        let key = key(attr, func, args);
        let invalidate = if async_invalidate {
            quote!(#rt::invalidate_async(#key_var, &#options_var).await)
        } else {
            quote!(#rt::invalidate(#key_var, &#options_var))
        };
        quote!({
            let #options_var = #options;
            let #key_var = #key;
            #invalidate
        })
    } else {
        stand_in.clone()
    };

    let refresh = format_ident!("{}_refresh", name);
    let refresh_doc = format!(
        " Computes `{name}` afresh for these arguments and overwrites its cache entry, whatever the cache holds."
    );
    let inputs = forwarding_inputs(func, args);
    let refresh_body = if stand_in.is_empty() {
        let forward = forward(func, args, quote!(true));
        quote!({ #forward })
    } else {
        stand_in.clone()
    };

    let refresh_async = &sig.asyncness;
    let stand_in_lint = (!stand_in.is_empty()).then(|| quote!(#[allow(unused_variables)]));
    quote! {
        #(#carried)*
        #stand_in_lint
        #[doc = #invalidate_doc]
        #[allow(dead_code)]
        #vis #invalidate_async fn #invalidate #generics (#receiver_ref #(#keyed_args),*)
            -> #rt::Result<(), ::memo_runtime::Error> #where_clause
        #invalidate_body

        #(#carried)*
        #stand_in_lint
        #[doc = #refresh_doc]
        #[allow(dead_code)]
        #vis #refresh_async fn #refresh #generics (#inputs) -> #ret #where_clause
        #refresh_body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(args: TokenStream, input: TokenStream) -> String {
        memoize(args, input, Mode::Auto).to_string()
    }

    /// How the expansion appends the argument `name` to a key.
    fn appended(name: &str) -> String {
        let rt = runtime().to_string();
        format!(
            ". append (| parts | {{ # [allow (unused_imports)] use {rt} :: {{ AppendDisplay as _ , AppendInteger as _ }} ; (& {rt} :: KeyArg (& {name})) . append_to (parts) ; }})"
        )
    }

    #[test]
    fn literal_components_are_escaped_and_joined_at_compile_time() {
        let out = expand(
            quote!(key = "a:100%:{id}:b:c", version = 2),
            quote!(
                fn f(id: u64) -> u64 {
                    id
                }
            ),
        );
        let rt = runtime().to_string();
        assert!(
            out.contains(&format!(
                "{rt} :: KeyParts :: new () . escaped (\"a:100%25\") {} . escaped (\"b:c:v2\") . finish ()",
                appended("id")
            )),
            "{out}"
        );
        // Without a template: the module path stays a run-time component
        // (escaped then), the name is a literal.
        let out = expand(
            quote!(),
            quote!(
                fn g(id: u64) -> u64 {
                    id
                }
            ),
        );
        assert!(
            out.contains(&format!(
                "{rt} :: KeyParts :: new () . text ({rt} :: module_path ! ()) . escaped (\"g\") {} . finish ()",
                appended("id")
            )),
            "{out}"
        );
        assert_eq!(escape_component("%a:b%3A"), "%25a%3Ab%253A");
    }

    #[test]
    fn hands_the_body_to_one_runtime_call() {
        let out = expand(
            quote!(key = "profile:{id}", expiration = 60, version = 3),
            quote!(
                pub fn profile(id: u64) -> String {
                    format!("#{id}")
                }
            ),
        );
        let rt = runtime().to_string();
        assert!(
            out.contains(&format!(
                "{rt} :: memoize :: < String , _ , _ > (__memo_key , move || -> String"
            )),
            "{out}"
        );
        assert!(out.contains("from_secs (60)"), "{out}");
        assert!(
            out.contains(&format!(
                "{rt} :: KeyParts :: new () . escaped (\"profile\") {} . escaped (\"v3\") . finish ()",
                appended("id")
            )),
            "{out}"
        );
        assert!(
            out.contains("pub fn profile_invalidate (id : u64)"),
            "{out}"
        );
        assert!(
            out.contains("pub fn profile_refresh (id : u64) -> String"),
            "{out}"
        );
    }

    #[test]
    fn picks_the_runtime_call_by_return_type() {
        let out = expand(
            quote!(),
            quote!(
                fn f(x: u8) -> Result<u8, E> {
                    Ok(x)
                }
            ),
        );
        assert!(out.contains("try_memoize :: < u8 , _ , _ , _ >"), "{out}");
        let out = expand(
            quote!(),
            quote!(
                fn f(x: u8) -> impl Iterator<Item = u8> {
                    0..x
                }
            ),
        );
        assert!(
            out.contains("memoize_iter :: < u8 , _ , _ , _ > (__memo_key , move || { 0 .. x }"),
            "{out}"
        );
    }

    #[test]
    fn default_key_is_scope_name_and_arguments() {
        let out = expand(
            quote!(ignore(db)),
            quote!(
                fn f(&self, a: u8, db: &Db) -> u8 {
                    a
                }
            ),
        );
        assert!(out.contains("type_name :: < Self > ()"), "{out}");
        assert!(
            out.contains(&format!(". escaped (\"f\") {}", appended("a"))),
            "{out}"
        );
        assert!(!out.contains("(& db)"), "{out}");
        assert!(out.contains("fn f_invalidate (& self , a : u8)"), "{out}");
        assert!(
            out.contains("fn f_refresh (& self , a : u8 , db : & Db) -> u8 { Self :: __memo_f (self , a , db , true) }"),
            "{out}"
        );
    }

    #[test]
    fn errors_come_with_the_function_unchanged() {
        let input = quote!(
            fn f(a: u8, b: u8) -> u8 {
                a + b
            }
        );
        let out = expand(quote!(key = "x:{a}", bogus), input.clone());
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains(&input.to_string()), "{out}");
        assert_eq!(out.matches("compile_error").count(), 2, "{out}");
        assert!(out.contains("fn f_invalidate"), "stand-in helpers: {out}");
    }

    #[test]
    fn async_fn_awaits_the_async_runtime_call() {
        let out = expand(
            quote!(key = "u:{id}", coalesce = false),
            quote!(
                pub async fn user(&self, id: u64) -> Result<User, E> {
                    self.load(id).await
                }
            ),
        );
        assert!(
            out.contains("pub async fn user (& self , id : u64)"),
            "{out}"
        );
        assert!(
            out.contains(
                "try_memoize_async :: < User , _ , _ , _ , _ > (__memo_key , move || async move { self . load (id) . await } , & __memo_options) . await"
            ),
            "{out}"
        );
        assert!(out.contains(". coalesce (false)"), "{out}");
        assert!(
            out.contains("pub async fn user_invalidate (& self , id : u64)"),
            "{out}"
        );
        assert!(
            out.contains("invalidate_async (__memo_key , & __memo_options) . await"),
            "{out}"
        );
        assert!(
            out.contains("pub async fn user_refresh (& self , id : u64) -> Result < User , E >"),
            "{out}"
        );
        assert!(
            out.contains(
                "-> Result < User , E > { Self :: __memo_user (self , id , true) . await }"
            ),
            "{out}"
        );
        assert!(
            out.contains("async fn __memo_user (& self , id : u64 , __memo_refresh"),
            "{out}"
        );
    }

    #[test]
    fn stream_mode_hands_the_body_to_the_stream_call() {
        let out = expand(
            quote!(key = "s:{n}"),
            quote!(
                fn s(n: u8) -> impl Stream<Item = u8> {
                    iter(0..n)
                }
            ),
        );
        assert!(
            out.contains(
                "memoize_stream :: < u8 , _ , _ , _ > (__memo_key , move || { iter (0 .. n) }"
            ),
            "{out}"
        );
        assert!(out.contains("async fn s_invalidate (n : u8)"), "{out}");
        assert!(out.contains("fn s_refresh (n : u8)"), "{out}");
        assert!(!out.contains("async fn s_refresh"), "{out}");
    }

    #[test]
    fn async_misuse_keeps_the_function_and_emits_no_stand_in() {
        let input = quote!(
            async fn s(n: u8) -> impl Stream<Item = u8> {
                iter(0..n)
            }
        );
        let out = expand(quote!(), input.clone());
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains(&input.to_string()), "{out}");
        assert!(!out.contains("s_refresh"), "{out}");
    }

    #[test]
    fn owned_signatures_with_a_refresh_use_the_detached_calls() {
        let rt = runtime().to_string();
        let out = expand(
            quote!(stale = 60),
            quote!(
                fn f(id: u64) -> Vec<u8> {
                    vec![1]
                }
            ),
        );
        assert!(
            out.contains(&format!(
                "{rt} :: memoize_detached :: < Vec < u8 > , _ , _ , _ > (__memo_key , move || -> Vec < u8 > {{ vec ! [1] }} , & __memo_options , {rt} :: Serialized)"
            )),
            "{out}"
        );
        let out = expand(
            quote!(refresh_ahead, local = 5),
            quote!(
                fn f(id: u64) -> Result<u8, String> {
                    Ok(1)
                }
            ),
        );
        assert!(
            out.contains("try_memoize_detached :: < u8 , _ , _ , _ , _ >"),
            "{out}"
        );
        assert!(out.contains(":: decoded :: < u8 > ())"), "{out}");
        let out = expand(
            quote!(stale = 60),
            quote!(
                async fn f(id: u64) -> u8 {
                    1
                }
            ),
        );
        assert!(
            out.contains("memoize_detached_async :: < u8 , _ , _ , _ , _ > (__memo_key , move || async move { 1 }"),
            "{out}"
        );
        // Borrowed, or without a refresh option (async too: every async
        // call moves a large value's passes off the executor): the general
        // calls.
        for (args, f) in [
            (
                quote!(stale = 60),
                quote!(
                    fn f(name: &str) -> u8 {
                        1
                    }
                ),
            ),
            (
                quote!(),
                quote!(
                    fn f(id: u64) -> u8 {
                        1
                    }
                ),
            ),
            (
                quote!(),
                quote!(
                    async fn f(id: u64) -> u8 {
                        1
                    }
                ),
            ),
            (
                quote!(stale = 60),
                quote!(
                    async fn f(id: u64) -> Cow<'static, str> {
                        1
                    }
                ),
            ),
        ] {
            let out = expand(args, f);
            assert!(!out.contains("_detached"), "{out}");
        }
    }

    #[test]
    fn cache_if_picks_the_if_calls() {
        let rt = runtime().to_string();
        let check = |ty: &str, predicate: &str| {
            format!(
                "{{ # [allow (unused_imports)] use {rt} :: {{ IsCacheIf as _ , NotCacheIf as _ }} ; {rt} :: CacheIfCheck :: < {ty} , _ > :: new ({predicate}) . predicate () }}"
            )
        };
        let out = expand(
            quote!(key = "r:{id}", cache_if = reports::is_complete),
            quote!(
                fn r(id: u64) -> Report {
                    load(id)
                }
            ),
        );
        assert!(
            out.contains(&format!(
                "{rt} :: memoize_if :: < Report , _ , _ , _ , _ , _ , _ > (__memo_key , move || -> Report {{ load (id) }} , & __memo_options , {rt} :: Plain , {} , {rt} :: Serialized)",
                check("Report", "reports :: is_complete")
            )),
            "{out}"
        );
        let out = expand(
            quote!(cache_if = settled, local = 5),
            quote!(
                async fn s(id: u64) -> Result<String, E> {
                    Ok(id.to_string())
                }
            ),
        );
        assert!(
            out.contains(&format!(
                "{rt} :: memoize_if_async :: < String , _ , _ , _ , _ , _ , _ , _ > (__memo_key , move || async move {{ Ok (id . to_string ()) }} , & __memo_options , {rt} :: Fallible , {} , {rt} :: decoded :: < String > ()) . await",
                check("String", "settled")
            )),
            "{out}"
        );
    }

    #[test]
    fn helpers_can_be_turned_off() {
        let out = expand(
            quote!(helpers = false),
            quote!(
                fn f() -> u8 {
                    1
                }
            ),
        );
        assert!(!out.contains("f_invalidate"), "{out}");
    }

    #[test]
    fn the_body_moves_into_a_sibling_that_takes_the_refresh() {
        let rt = runtime().to_string();
        let out = expand(
            quote!(key = "p:{id}"),
            quote!(
                /// Docs.
                pub fn p(id: u64) -> u64 {
                    id
                }
            ),
        );
        assert!(
            out.contains("pub fn p (id : u64) -> u64 { __memo_p (id , false) }"),
            "{out}"
        );
        assert!(
            out.contains("pub fn p_refresh (id : u64) -> u64 { __memo_p (id , true) }"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "# [doc (hidden)] # [inline] # [allow (clippy :: too_many_arguments)] fn __memo_p (id : u64 , __memo_refresh : {rt} :: bool) -> u64 {{ let __memo_options = {rt} :: Options :: new () . function ({{ static __MEMO_FUNCTION : {rt} :: Function = {rt} :: Function :: new ({rt} :: concat ! ({rt} :: module_path ! () , \"::p\")) ; & __MEMO_FUNCTION }}) . force_overwrite (__memo_refresh) ;"
            )),
            "{out}"
        );
        assert_eq!(out.matches("# [doc = r\" Docs.\"]").count(), 1, "{out}");
        // `_invalidate` has no refresh to pass.
        assert!(
            out.contains(&format!(
                "pub fn p_invalidate (id : u64) -> {rt} :: Result < () , :: memo_runtime :: Error > {{ let __memo_options = {rt} :: Options :: new () . function ({{ static __MEMO_FUNCTION : {rt} :: Function = {rt} :: Function :: new ({rt} :: concat ! ({rt} :: module_path ! () , \"::p\")) ; & __MEMO_FUNCTION }}) ;"
            )),
            "{out}"
        );
    }

    #[test]
    fn forwarding_keeps_patterns_receivers_and_generics_in_their_place() {
        let out = expand(
            quote!(key = "g:{x}:{y}:{z}"),
            quote!(
                fn g<'a, T: Display, const N: usize>(
                    mut self: Arc<Self>,
                    #[allow(unused)] ref x: &'a T,
                    mut y: u8,
                    z: impl Display,
                ) -> u8
                where
                    T: Copy,
                {
                    y += 1;
                    y
                }
            ),
        );
        // The forwarding items bind names only; the sibling keeps what
        // the body relies on.
        assert!(
            out.contains("fn g < 'a , T : Display , const N : usize > (self : Arc < Self > , x : & 'a T , y : u8 , z : impl Display ,) -> u8 where T : Copy , { Self :: __memo_g :: < T , N > (self , x , y , z , false) }"),
            "{out}"
        );
        assert!(
            out.contains("fn g_refresh < 'a , T : Display , const N : usize > (self : Arc < Self > , x : & 'a T , y : u8 , z : impl Display ,) -> u8 where T : Copy , { Self :: __memo_g :: < T , N > (self , x , y , z , true) }"),
            "{out}"
        );
        assert!(
            out.contains("fn __memo_g < 'a , T : Display , const N : usize > (mut self : Arc < Self > , # [allow (unused)] ref x : & 'a T , mut y : u8 , z : impl Display , __memo_refresh :"),
            "{out}"
        );
    }

    #[test]
    fn patterns_bind_the_names_the_key_uses() {
        let out = expand(
            quote!(key = "report:{id}:{page}", ignore(size)),
            quote!(
                pub fn report(
                    Path(id): Path<u32>,
                    Query(Params {
                        page,
                        per_page: mut size,
                        ..
                    }): Query<Params>,
                ) -> String {
                    size += 1;
                    format!("{id}:{page}:{size}")
                }
            ),
        );
        // The function and `_refresh` take each pattern by a hidden name
        // and pass it on; the sibling destructures it as written.
        assert!(
            out.contains("pub fn report (__memo_arg0 : Path < u32 > , __memo_arg1 : Query < Params > ,) -> String { __memo_report (__memo_arg0 , __memo_arg1 , false) }"),
            "{out}"
        );
        assert!(
            out.contains("fn __memo_report (Path (id) : Path < u32 > , Query (Params { page , per_page : mut size , .. }) : Query < Params > , __memo_refresh"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                ". escaped (\"report\") {} {}",
                appended("id"),
                appended("page")
            )),
            "{out}"
        );
        // `_invalidate` destructures to reach the key, the ignored binding
        // as `_`.
        assert!(
            out.contains("pub fn report_invalidate (Path (id) : Path < u32 > , Query (Params { page , per_page : _ , .. }) : Query < Params >)"),
            "{out}"
        );
        assert!(
            out.contains("pub fn report_refresh (__memo_arg0 : Path < u32 > , __memo_arg1 : Query < Params > ,) -> String { __memo_report (__memo_arg0 , __memo_arg1 , true) }"),
            "{out}"
        );
        // Without a key, every binding is in the default one.
        let out = expand(
            quote!(),
            quote!(
                fn pair((a, b): (u32, String)) -> String {
                    format!("{a}{b}")
                }
            ),
        );
        assert!(
            out.contains(&format!(
                ". escaped (\"pair\") {} {}",
                appended("a"),
                appended("b")
            )),
            "{out}"
        );
    }

    #[test]
    fn field_paths_are_read_from_the_value() {
        let out = expand(
            quote!(key = "u:{user.id}:{pair.0:?}:{self.cfg.region}"),
            quote!(
                fn f(&self, user: &User, pair: (u8, u8)) -> u8 {
                    pair.1
                }
            ),
        );
        assert!(out.contains(&appended("user . id")), "{out}");
        assert!(out.contains("format_args ! (\"{:?}\" , pair . 0)"), "{out}");
        assert!(out.contains(&appended("self . cfg . region")), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn a_binding_the_key_forgets_is_an_error() {
        let out = expand(
            quote!(key = "p:{a}"),
            quote!(
                fn pair((a, b): (u32, u32), _: u8) -> u32 {
                    a + b
                }
            ),
        );
        assert!(out.contains("binding `b` is not in the cache key"), "{out}");
        assert!(out.contains("this argument binds no name"), "{out}");
    }

    #[test]
    fn a_force_overwrite_the_user_wrote_stays_on() {
        let f = quote!(
            fn f(id: u64) -> u64 {
                id
            }
        );
        let out = expand(quote!(force_overwrite), f.clone());
        assert!(out.contains(". force_overwrite (true)"), "{out}");
        assert!(!out.contains("force_overwrite (__memo_refresh)"), "{out}");
        let out = expand(quote!(force_overwrite = false), f);
        assert!(out.contains(". force_overwrite (__memo_refresh)"), "{out}");
        assert_eq!(
            out.matches("force_overwrite (false)").count(),
            1,
            "in `_invalidate` only: {out}"
        );
    }

    #[test]
    fn without_helpers_the_body_stays_in_the_function() {
        let rt = runtime().to_string();
        let out = expand(
            quote!(helpers = false),
            quote!(
                fn f(&self, id: u64) -> u64 {
                    id
                }
            ),
        );
        assert!(
            out.starts_with(&format!(
                "fn f (& self , id : u64) -> u64 {{ let __memo_options = {rt} :: Options :: new () . function ({{ static __MEMO_FUNCTION : {rt} :: Function = {rt} :: Function :: new ({rt} :: concat ! ({rt} :: module_path ! () , \"::f\")) ; & __MEMO_FUNCTION }}) ;"
            )),
            "{out}"
        );
        assert!(!out.contains("__memo_f"), "{out}");
        assert!(!out.contains("__memo_refresh"), "{out}");
    }

    /// Items without their doc attributes, as one string, and the words
    /// of those docs (so that the crate docs may wrap them).
    fn split_docs(tokens: TokenStream) -> (String, Vec<String>) {
        let mut file: syn::File = syn::parse2(tokens).expect("items");
        let mut words = Vec::new();
        for item in &mut file.items {
            let syn::Item::Fn(item) = item else {
                panic!("only functions expected");
            };
            item.attrs.retain(|attr| {
                let syn::Meta::NameValue(doc) = &attr.meta else {
                    return true;
                };
                let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(text),
                    ..
                }) = &doc.value
                else {
                    return true;
                };
                if !doc.path.is_ident("doc") {
                    return true;
                }
                words.extend(text.value().split_whitespace().map(str::to_owned));
                false
            });
        }
        (quote!(#file).to_string(), words)
    }

    /// The crate docs' "What it expands to" shows the expansion of their
    /// example as it is, with the runtime's path written `rt`.
    #[test]
    fn the_crate_docs_show_the_expansion_as_it_is() {
        let docs = include_str!("lib.rs");
        let section = docs
            .split("/// # What it expands to\n")
            .nth(1)
            .expect("the section");
        let block = section
            .split("/// ```ignore\n")
            .nth(1)
            .and_then(|rest| rest.split("/// ```\n").next())
            .expect("its code block");
        let shown: String = block
            .lines()
            .map(|line| line.strip_prefix("///").expect("a doc line"))
            .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
            .collect();
        let shown = split_docs(shown.parse().expect("tokens"));

        let expanded = memoize(
            quote!(key = "profile:{user_id}", expiration = 3600),
            quote!(
                /// The user's profile, cached for an hour.
                pub fn profile(user_id: u64) -> Profile {
                    load_profile(user_id)
                }
            ),
            Mode::Auto,
        );
        let (items, words) = split_docs(expanded);
        let items = items.replace(&runtime().to_string(), "rt");
        assert_eq!(shown.0, items);
        assert_eq!(shown.1, words);
    }
}
