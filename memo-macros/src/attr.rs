//! Parsing the attribute's arguments: `#[cache_memoize(key = "...", ...)]`.
//!
//! Every argument is first read as a [`syn::Meta`] (`name`, `name = value`
//! or `name(...)`), then interpreted; a mistake in one argument is recorded
//! and parsing goes on, so that one build reports every wrong argument.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitBool, LitInt, LitStr, Meta, Token};

use crate::errors::{Errors, did_you_mean};
use crate::template::Template;

/// The options a user wrote, as far as they could be understood.
#[derive(Default)]
pub(crate) struct Attr {
    /// `key = "..."`.
    pub key: Option<Template>,
    /// `expiration = <seconds>`.
    pub expiration: Option<Expr>,
    /// `jitter = <fraction>`: each store's expiration shortened by a
    /// random part of it, up to that fraction.
    pub jitter: Option<Named<Expr>>,
    /// `large_data` / `large_data = <bool>`.
    pub large_data: Option<Flag>,
    /// `compress` / `compress = <bool>`.
    pub compress: Option<Flag>,
    /// `encrypt` / `encrypt = <bool>`.
    pub encrypt: Option<Flag>,
    /// `force_overwrite` / `force_overwrite = <bool>`.
    pub force_overwrite: Option<Flag>,
    /// `lock` / `lock(...)`.
    pub lock: Option<Lock>,
    /// `version = <int>`.
    pub version: Option<LitInt>,
    /// `ignore(a, b)`: arguments left out of the key on purpose.
    pub ignore: Vec<Ident>,
    /// `helpers = false`: no `<fn>_invalidate` / `<fn>_refresh`.
    pub helpers: Option<Flag>,
    /// `coalesce` / `coalesce = <bool>`: concurrent calls in one process
    /// share one computation (the runtime's default).
    pub coalesce: Option<Flag>,
    /// `local = <seconds>`: a per-process copy of the decoded value.
    pub local: Option<Named<Expr>>,
    /// `refresh_ahead` / `refresh_ahead = <beta>`.
    pub refresh_ahead: Option<Named<Option<Expr>>>,
    /// `stale = <seconds>`: stale-while-revalidate.
    pub stale: Option<Named<Expr>>,
    /// `cache_if = <path>`: a predicate `fn(&T) -> bool` on each computed
    /// value, which is stored only when it holds.
    pub cache_if: Option<Named<Expr>>,
    /// `fail_safe = <seconds>`: an expired value kept that long to fall
    /// back on when the recomputation returns `Err`.
    pub fail_safe: Option<Named<Expr>>,
    /// `tags("user:{id}", "catalog")`: key templates naming the tags the
    /// entry is stored with.
    pub tags: Vec<Template>,
}

/// A value and the span of the option's name.
pub(crate) struct Named<T> {
    pub span: Span,
    pub value: T,
}

/// A boolean option and where it was written.
pub(crate) struct Flag {
    pub span: Span,
    pub value: bool,
}

/// `lock(timeout = <secs>, retry = <ms>, expiration = <secs>, blocking = <bool>)`.
#[derive(Default)]
pub(crate) struct Lock {
    pub timeout: Option<Expr>,
    pub retry: Option<Expr>,
    pub expiration: Option<Expr>,
    pub blocking: Option<Flag>,
}

/// The options of the attribute, in the order the docs list them.
pub(crate) const OPTIONS: &[&str] = &[
    "key",
    "expiration",
    "jitter",
    "large_data",
    "compress",
    "encrypt",
    "force_overwrite",
    "lock",
    "coalesce",
    "local",
    "refresh_ahead",
    "stale",
    "fail_safe",
    "cache_if",
    "tags",
    "version",
    "ignore",
    "helpers",
];

const LOCK_OPTIONS: &[&str] = &["timeout", "retry", "expiration", "blocking"];

/// Names people reach for that mean one of ours.
const ALIASES: &[(&str, &str)] = &[
    ("ttl", "expiration"),
    ("expire", "expiration"),
    ("expires", "expiration"),
    ("timeout", "expiration"),
    ("expiration_jitter", "jitter"),
    ("ttl_jitter", "jitter"),
    ("spread", "jitter"),
    ("large", "large_data"),
    ("compression", "compress"),
    ("encrypted", "encrypt"),
    ("encryption", "encrypt"),
    ("force", "force_overwrite"),
    ("overwrite", "force_overwrite"),
    ("skip", "ignore"),
    ("exclude", "ignore"),
    ("single_flight", "coalesce"),
    ("dedupe", "coalesce"),
    ("dedup", "coalesce"),
    ("local_copy", "local"),
    ("in_process", "local"),
    ("xfetch", "refresh_ahead"),
    ("early_refresh", "refresh_ahead"),
    ("refresh_early", "refresh_ahead"),
    ("stale_while_revalidate", "stale"),
    ("swr", "stale"),
    ("failsafe", "fail_safe"),
    ("fallback", "fail_safe"),
    ("tag", "tags"),
    ("store_if", "cache_if"),
    ("cache_when", "cache_if"),
    ("only_if", "cache_if"),
    ("predicate", "cache_if"),
];

impl Attr {
    /// Reads the attribute's arguments, recording every mistake in `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Attr {
        let mut attr = Attr::default();
        let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens) {
            Ok(metas) => metas,
            Err(error) => {
                errors.add(error);
                return attr;
            }
        };
        for meta in metas {
            attr.option(meta, errors);
        }
        attr
    }

    fn option(&mut self, meta: Meta, errors: &mut Errors) {
        let Some(name) = meta.path().get_ident().map(Ident::to_string) else {
            errors.push(meta.path().span(), "expected an option name, not a path");
            return;
        };
        let duplicate = match name.as_str() {
            "key" => set(&mut self.key, key(&meta, errors)),
            "expiration" => set(&mut self.expiration, seconds(&meta, errors)),
            "jitter" => set(&mut self.jitter, fraction(&meta, errors)),
            "large_data" => set(&mut self.large_data, flag(&meta, errors)),
            "compress" => set(&mut self.compress, flag(&meta, errors)),
            "encrypt" => set(&mut self.encrypt, flag(&meta, errors)),
            "force_overwrite" => set(&mut self.force_overwrite, flag(&meta, errors)),
            "helpers" => set(&mut self.helpers, flag(&meta, errors)),
            "coalesce" => set(&mut self.coalesce, flag(&meta, errors)),
            "lock" => set(&mut self.lock, lock(&meta, errors)),
            "local" => set(&mut self.local, spanned(&meta, seconds(&meta, errors))),
            "stale" => set(&mut self.stale, spanned(&meta, seconds(&meta, errors))),
            "refresh_ahead" => set(&mut self.refresh_ahead, beta(&meta, errors)),
            "cache_if" => set(&mut self.cache_if, predicate(&meta, errors)),
            "fail_safe" => set(&mut self.fail_safe, spanned(&meta, seconds(&meta, errors))),
            "tags" => {
                let repeated = !self.tags.is_empty();
                self.tags.extend(tags(&meta, errors));
                repeated
            }
            "version" => set(&mut self.version, version(&meta, errors)),
            "ignore" => {
                let repeated = !self.ignore.is_empty();
                self.ignore.extend(ignore(&meta, errors));
                repeated
            }
            _ => {
                let alias = ALIASES.iter().find(|(alias, _)| *alias == name);
                let hint = match alias {
                    Some((_, option)) => format!("; did you mean `{option}`?"),
                    None => did_you_mean(&name, OPTIONS.iter().copied()),
                };
                errors.push(
                    meta.path().span(),
                    format!(
                        "unknown option `{name}`{hint}\nknown options: {}",
                        OPTIONS.join(", ")
                    ),
                );
                false
            }
        };
        if duplicate {
            errors.push(meta.path().span(), format!("option `{name}` given twice"));
        }
    }
}

/// Stores `value`; true if the option was already set.
fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    let duplicate = slot.is_some() && value.is_some();
    if value.is_some() {
        *slot = value;
    }
    duplicate
}

fn name_value<'a>(meta: &'a Meta, form: &str, errors: &mut Errors) -> Option<&'a Expr> {
    match meta {
        Meta::NameValue(nv) => Some(&nv.value),
        _ => {
            let name = meta
                .path()
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_default();
            errors.push(meta.span(), format!("expected `{name} = {form}`"));
            None
        }
    }
}

fn key(meta: &Meta, errors: &mut Errors) -> Option<Template> {
    match name_value(meta, "\"...\"", errors)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => match Template::parse(lit.clone()) {
            Ok(template) => Some(template),
            Err(message) => {
                errors.push(lit.span(), message);
                None
            }
        },
        other => {
            errors.push(
                other.span(),
                "expected the key as a string literal, like `key = \"user:{id}\"`",
            );
            None
        }
    }
}

/// A number of seconds (or milliseconds): an integer literal, or any
/// non-literal expression of type `u64` (a constant, `60 * 60`).
fn duration(expr: &Expr, unit: &str, errors: &mut Errors) -> Option<Expr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u64>() {
            Ok(_) if matches!(int.suffix(), "" | "u64") => Some(expr.clone()),
            Ok(_) => {
                errors.push(
                    int.span(),
                    format!("expected a number of {unit} as a `u64`"),
                );
                None
            }
            Err(error) => {
                errors.add(error);
                None
            }
        },
        Expr::Lit(lit) => {
            errors.push(
                lit.span(),
                format!("expected a whole number of {unit}, like `3600`, or a `u64` constant"),
            );
            None
        }
        _ => Some(expr.clone()),
    }
}

fn seconds(meta: &Meta, errors: &mut Errors) -> Option<Expr> {
    let value = name_value(meta, "<seconds>", errors)?;
    duration(value, "seconds", errors)
}

fn spanned<T>(meta: &Meta, value: Option<T>) -> Option<Named<T>> {
    value.map(|value| Named {
        span: meta.path().span(),
        value,
    })
}

/// `refresh_ahead` (β = 1) or `refresh_ahead = <beta>`: a number literal
/// (`2`, `0.5`) or an expression of type `f64`.
fn beta(meta: &Meta, errors: &mut Errors) -> Option<Named<Option<Expr>>> {
    let value = match meta {
        Meta::Path(_) => None,
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Float(float),
                ..
            }) if float.base10_parse::<f64>().is_ok_and(|beta| beta > 0.0) => {
                Some(nv.value.clone())
            }
            Expr::Lit(ExprLit {
                lit: Lit::Int(int), ..
            }) if int.base10_parse::<u32>().is_ok_and(|beta| beta > 0) => {
                let beta = int.base10_parse::<u32>().ok()?;
                let lit = syn::LitFloat::new(&format!("{beta}.0"), int.span());
                Some(syn::parse_quote!(#lit))
            }
            bad @ (Expr::Lit(_)
            | Expr::Unary(syn::ExprUnary {
                op: syn::UnOp::Neg(_),
                ..
            })) => {
                errors.push(
                    bad.span(),
                    "expected β as a positive number, like `refresh_ahead = 2.0`",
                );
                return None;
            }
            other => Some(other.clone()),
        },
        Meta::List(list) => {
            errors.push(
                list.delimiter.span().join(),
                "`refresh_ahead` takes no arguments: write `refresh_ahead` or `refresh_ahead = 2.0`",
            );
            return None;
        }
    };
    spanned(meta, Some(value))
}

/// `jitter = <fraction>`: a number literal from 0 to 1 (`0.1`, `0`, `1`),
/// or an expression of type `f64`, which the runtime clamps.
fn fraction(meta: &Meta, errors: &mut Errors) -> Option<Named<Expr>> {
    let value = name_value(meta, "<fraction>", errors)?;
    let literal = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Float(float),
            ..
        }) => Some(float.base10_parse::<f64>().map_err(|_| ())),
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => Some(int.base10_parse::<u8>().map(f64::from).map_err(|_| ())),
        Expr::Lit(_)
        | Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            ..
        }) => Some(Err(())),
        _ => None,
    };
    let value = match literal {
        None => value.clone(),
        Some(Ok(fraction)) if (0.0..=1.0).contains(&fraction) => {
            // `0` and `1` written as integers are floats to the setter.
            let lit = syn::LitFloat::new(&format!("{fraction:?}"), value.span());
            syn::parse_quote!(#lit)
        }
        Some(_) => {
            errors.push(
                value.span(),
                "expected the jitter as a fraction of the expiration from 0 to 1, like `jitter = 0.1`",
            );
            return None;
        }
    };
    spanned(meta, Some(value))
}

/// `cache_if = <path>`: any expression but a literal, whose type rustc
/// checks (a path to a function is what the docs show).
fn predicate(meta: &Meta, errors: &mut Errors) -> Option<Named<Expr>> {
    match name_value(meta, "<path to a fn(&T) -> bool>", errors)? {
        Expr::Lit(lit) => {
            errors.push(
                lit.span(),
                "expected a path to a predicate `fn(&T) -> bool`, like `cache_if = is_complete`",
            );
            None
        }
        other => spanned(meta, Some(other.clone())),
    }
}

fn flag(meta: &Meta, errors: &mut Errors) -> Option<Flag> {
    let span = meta.path().span();
    match meta {
        Meta::Path(_) => Some(Flag { span, value: true }),
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(LitBool { value, .. }),
                ..
            }) => Some(Flag {
                span,
                value: *value,
            }),
            other => {
                errors.push(other.span(), "expected `true` or `false`");
                None
            }
        },
        Meta::List(list) => {
            let name = meta
                .path()
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_default();
            errors.push(
                list.delimiter.span().join(),
                format!("`{name}` takes no arguments: write `{name}` or `{name} = false`"),
            );
            None
        }
    }
}

fn version(meta: &Meta, errors: &mut Errors) -> Option<LitInt> {
    match name_value(meta, "<integer>", errors)? {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if int.base10_parse::<u64>().is_ok() => Some(int.clone()),
        other => {
            errors.push(
                other.span(),
                "expected the version as an integer literal, like `version = 2`",
            );
            None
        }
    }
}

/// `tags("...", ...)`: key templates, each checked as a key is.
fn tags(meta: &Meta, errors: &mut Errors) -> Vec<Template> {
    let Meta::List(list) = meta else {
        errors.push(
            meta.span(),
            "expected `tags(\"tag\", ...)`, like `tags(\"user:{id}\")`",
        );
        return Vec::new();
    };
    let lits = match list.parse_args_with(Punctuated::<LitStr, Token![,]>::parse_terminated) {
        Ok(lits) => lits,
        Err(error) => {
            errors.add(error);
            return Vec::new();
        }
    };
    if lits.is_empty() {
        errors.push(list.span(), "`tags()` names no tag");
    }
    lits.into_iter()
        .filter_map(|lit| match Template::parse(lit.clone()) {
            Ok(template) => Some(template),
            Err(message) => {
                errors.push(lit.span(), message);
                None
            }
        })
        .collect()
}

fn ignore(meta: &Meta, errors: &mut Errors) -> Vec<Ident> {
    let Meta::List(list) = meta else {
        errors.push(meta.span(), "expected `ignore(argument, ...)`");
        return Vec::new();
    };
    match list.parse_args_with(Punctuated::<Ident, Token![,]>::parse_terminated) {
        Ok(names) if names.is_empty() => {
            errors.push(list.span(), "`ignore()` names no argument");
            Vec::new()
        }
        Ok(names) => names.into_iter().collect(),
        Err(error) => {
            errors.add(error);
            Vec::new()
        }
    }
}

fn lock(meta: &Meta, errors: &mut Errors) -> Option<Lock> {
    let mut lock = Lock::default();
    let list = match meta {
        Meta::Path(_) => return Some(lock),
        Meta::List(list) => list,
        Meta::NameValue(nv) => {
            errors.push(
                nv.eq_token.span,
                "expected `lock` or `lock(timeout = <secs>, ...)`",
            );
            return None;
        }
    };
    let metas = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
        Ok(metas) => metas,
        Err(error) => {
            errors.add(error);
            return None;
        }
    };
    for meta in metas {
        let name = meta
            .path()
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_default();
        let duplicate = match name.as_str() {
            "timeout" => set(&mut lock.timeout, seconds(&meta, errors)),
            "expiration" => set(&mut lock.expiration, seconds(&meta, errors)),
            "retry" => {
                let value = name_value(&meta, "<milliseconds>", errors);
                set(
                    &mut lock.retry,
                    value.and_then(|v| duration(v, "milliseconds", errors)),
                )
            }
            "blocking" => set(&mut lock.blocking, flag(&meta, errors)),
            _ => {
                errors.push(
                    meta.path().span(),
                    format!(
                        "unknown lock option `{name}`{}\nknown lock options: {}",
                        did_you_mean(&name, LOCK_OPTIONS.iter().copied()),
                        LOCK_OPTIONS.join(", ")
                    ),
                );
                false
            }
        };
        if duplicate {
            errors.push(
                meta.path().span(),
                format!("lock option `{name}` given twice"),
            );
        }
    }
    Some(lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> (Attr, Vec<String>) {
        let mut errors = Errors::default();
        let attr = Attr::parse(tokens, &mut errors);
        let messages = match errors.finish() {
            Ok(()) => Vec::new(),
            Err(all) => all.into_iter().map(|e| e.to_string()).collect(),
        };
        (attr, messages)
    }

    #[test]
    fn reads_every_option() {
        let (attr, errors) = parse(quote! {
            key = "p:{id}", expiration = 3600, large_data, compress = false, encrypt,
            force_overwrite, lock(timeout = 5, retry = 100, expiration = 30, blocking = false),
            version = 2, ignore(db, log), helpers = false, coalesce = false
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(attr.key.unwrap().components.len(), 2);
        assert!(attr.expiration.is_some());
        assert!(attr.large_data.unwrap().value);
        assert!(!attr.compress.unwrap().value);
        assert!(attr.encrypt.unwrap().value);
        assert!(attr.force_overwrite.unwrap().value);
        let lock = attr.lock.unwrap();
        assert!(lock.timeout.is_some() && lock.retry.is_some() && lock.expiration.is_some());
        assert!(!lock.blocking.unwrap().value);
        assert_eq!(attr.version.unwrap().base10_digits(), "2");
        assert_eq!(attr.ignore.len(), 2);
        assert!(!attr.helpers.unwrap().value);
        assert!(!attr.coalesce.unwrap().value);
    }

    #[test]
    fn hot_key_options_parse() {
        let (attr, errors) = parse(quote!(local = 5, refresh_ahead, stale = 30));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(attr.local.is_some() && attr.stale.is_some());
        assert!(attr.refresh_ahead.unwrap().value.is_none());
        let (attr, errors) = parse(quote!(refresh_ahead = 2));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(attr.refresh_ahead.unwrap().value.is_some());
        let (_, errors) = parse(quote!(
            refresh_ahead = -1.0,
            refresh_ahead = "x",
            refresh_ahead(2),
            local = 1.5,
            swr = 3
        ));
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("expected β as a positive number"));
        assert!(errors[4].starts_with("unknown option `swr`; did you mean `stale`?"));
    }

    #[test]
    fn jitter_is_a_fraction() {
        for (tokens, shown) in [
            (quote!(jitter = 0.1), "0.1"),
            (quote!(jitter = 1), "1.0"),
            (quote!(jitter = 0), "0.0"),
            (quote!(jitter = SPREAD), "SPREAD"),
        ] {
            let (attr, errors) = parse(tokens);
            assert!(errors.is_empty(), "{errors:?}");
            let value = attr.jitter.unwrap().value;
            assert_eq!(quote!(#value).to_string(), shown);
        }
        let (_, errors) = parse(quote!(
            jitter = 1.5,
            jitter = -0.1,
            jitter = "a",
            jitter = 2,
            jitter,
            ttl_jitter = 0.1
        ));
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(
            errors[..4]
                .iter()
                .all(|e| e.starts_with("expected the jitter"))
        );
        assert_eq!(errors[4], "expected `jitter = <fraction>`");
        assert!(errors[5].starts_with("unknown option `ttl_jitter`; did you mean `jitter`?"));
    }

    #[test]
    fn cache_if_takes_a_path() {
        let (attr, errors) = parse(quote!(cache_if = reports::is_complete));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(attr.cache_if.is_some());
        let (_, errors) = parse(quote!(cache_if = true, cache_if, store_if = f));
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with("expected a path to a predicate"));
        assert_eq!(
            errors[1],
            "expected `cache_if = <path to a fn(&T) -> bool>`"
        );
        assert!(errors[2].starts_with("unknown option `store_if`; did you mean `cache_if`?"));
    }

    #[test]
    fn coalesce_is_a_flag() {
        let (attr, errors) = parse(quote!(coalesce));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(attr.coalesce.unwrap().value);
        let (_, errors) = parse(quote!(coalesce = "no", coalesse = false, single_flight));
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert_eq!(errors[0], "expected `true` or `false`");
        assert!(errors[1].starts_with("unknown option `coalesse`; did you mean `coalesce`?"));
        assert!(errors[2].starts_with("unknown option `single_flight`; did you mean `coalesce`?"));
    }

    #[test]
    fn empty_attribute_is_fine() {
        let (attr, errors) = parse(quote!());
        assert!(errors.is_empty());
        assert!(attr.key.is_none() && attr.lock.is_none());
    }

    #[test]
    fn reports_every_mistake_at_once() {
        let (_, errors) = parse(quote! {
            expiraton = 5, expiration = "soon", ttl = 3, encrypt = 1, version = "x", key = 5, lock(wait = 1)
        });
        assert_eq!(errors.len(), 7, "{errors:#?}");
        assert!(errors[0].starts_with("unknown option `expiraton`; did you mean `expiration`?"));
        assert!(errors[1].starts_with("expected a whole number of seconds"));
        assert!(errors[2].contains("did you mean `expiration`?"));
        assert_eq!(errors[3], "expected `true` or `false`");
        assert!(errors[6].starts_with("unknown lock option `wait`"));
    }

    #[test]
    fn constants_are_accepted_as_durations() {
        let (attr, errors) = parse(quote!(expiration = HOUR * 2));
        assert!(errors.is_empty());
        assert!(attr.expiration.is_some());
    }

    #[test]
    fn duplicates_are_reported() {
        let (_, errors) = parse(quote!(encrypt, encrypt = false));
        assert_eq!(errors, ["option `encrypt` given twice"]);
    }
}
