//! Key templates: `key = "profile:{id}:{self.tenant}:{filter:?}"`.
//!
//! A template is a list of `:`-separated components. Each component is text
//! with `{...}` placeholders: `{arg}` (the argument's `Display` form),
//! `{arg:?}` (its `Debug` form), `{self}` in methods, and a field path
//! after any of them (`{user.id}`, `{pair.0}`, `{self.cfg.region:?}`).
//! `{{` and `}}` are literal braces. A `:` inside braces does not separate
//! components. The components reach the runtime as a key sequence, so each
//! is escaped on its own and no value can forge a separator.

use syn::LitStr;

/// A parsed key template.
pub(crate) struct Template {
    /// The literal, for error spans.
    pub lit: LitStr,
    /// The `:`-separated components, in order.
    pub components: Vec<Vec<Piece>>,
}

/// Part of a component.
#[derive(Debug, PartialEq)]
pub(crate) enum Piece {
    /// Literal text (braces already unescaped).
    Text(String),
    /// A `{...}` placeholder.
    Value(Placeholder),
}

/// What a placeholder names and how it is formatted.
#[derive(Debug, PartialEq)]
pub(crate) struct Placeholder {
    /// An argument name, or `self`, followed by field names.
    pub target: Target,
    /// `{x:?}`: the `Debug` form rather than `Display`.
    pub debug: bool,
}

/// The value a placeholder stands for.
#[derive(Debug, PartialEq)]
pub(crate) enum Target {
    /// A name an argument binds, and a field path in its value (`{user}`,
    /// `{user.id}`, `{pair.0}`).
    Arg(String, Vec<Field>),
    /// `self`, or `self.a.b`: the receiver or a field path in it.
    SelfValue(Vec<Field>),
}

/// One step of a field path: a named field, or a tuple field's index.
#[derive(Debug, PartialEq)]
pub(crate) enum Field {
    Named(String),
    Index(u32),
}

impl Template {
    /// Parses a template; the message says what is wrong with it otherwise.
    pub(crate) fn parse(lit: LitStr) -> Result<Self, String> {
        let components = parse_components(&lit.value())?;
        Ok(Template { lit, components })
    }

    /// Every placeholder, in order.
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.components
            .iter()
            .flatten()
            .filter_map(|piece| match piece {
                Piece::Value(placeholder) => Some(placeholder),
                Piece::Text(_) => None,
            })
    }
}

fn parse_components(template: &str) -> Result<Vec<Vec<Piece>>, String> {
    if template.is_empty() {
        return Err("the cache key template is empty".into());
    }
    let mut components = vec![Vec::new()];
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => return Err(format!("unclosed placeholder `{{{inner}` in the key")),
                    }
                }
                let current = components.last_mut().expect("never empty");
                if !text.is_empty() {
                    current.push(Piece::Text(std::mem::take(&mut text)));
                }
                current.push(Piece::Value(parse_placeholder(&inner)?));
            }
            '}' => return Err("unmatched `}` in the key; write `}}` for a literal brace".into()),
            ':' => {
                let current = components.last_mut().expect("never empty");
                if !text.is_empty() {
                    current.push(Piece::Text(std::mem::take(&mut text)));
                }
                components.push(Vec::new());
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        components
            .last_mut()
            .expect("never empty")
            .push(Piece::Text(text));
    }
    if components.iter().any(Vec::is_empty) {
        return Err("the key has an empty component (`::`, or `:` at an end)".into());
    }
    Ok(components)
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    let (name, debug) = match inner.split_once(':') {
        None => (inner, false),
        Some((name, "?")) => (name, true),
        Some((_, spec)) => {
            return Err(format!(
                "unsupported format `:{spec}` in `{{{inner}}}`: use `{{name}}` (Display) or `{{name:?}}` (Debug)"
            ));
        }
    };
    let mut parts = name.trim().split('.');
    let first = parts.next().unwrap_or_default();
    let rest: Option<Vec<Field>> = parts.map(field).collect();
    let (true, Some(rest)) = (is_ident(first), rest) else {
        return Err(format!(
            "`{{{inner}}}` is not a placeholder: write `{{argument}}`, `{{argument:?}}`, `{{argument.field}}` or `{{self.field}}`"
        ));
    };
    let target = if first == "self" {
        Target::SelfValue(rest)
    } else {
        Target::Arg(first.to_owned(), rest)
    };
    Ok(Placeholder { target, debug })
}

/// A field in a path: a name, or a tuple index as Rust writes it (`0`,
/// `12`, no sign or leading zero).
fn field(s: &str) -> Option<Field> {
    if is_ident(s) {
        return Some(Field::Named(s.to_owned()));
    }
    let canonical = s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .map(Field::Index)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    fn arg(name: &str, debug: bool) -> Piece {
        Piece::Value(Placeholder {
            target: Target::Arg(name.into(), Vec::new()),
            debug,
        })
    }

    #[test]
    fn splits_components_on_colons() {
        assert_eq!(
            parse_components("profile:{id}").unwrap(),
            vec![vec![text("profile")], vec![arg("id", false)]]
        );
    }

    #[test]
    fn mixes_text_and_placeholders_in_a_component() {
        assert_eq!(
            parse_components("user-{id}-x").unwrap(),
            vec![vec![text("user-"), arg("id", false), text("-x")]]
        );
    }

    #[test]
    fn colon_inside_braces_is_a_format_not_a_separator() {
        assert_eq!(
            parse_components("f:{filter:?}").unwrap(),
            vec![vec![text("f")], vec![arg("filter", true)]]
        );
    }

    #[test]
    fn self_fields() {
        assert_eq!(
            parse_components("{self.tenant.id}").unwrap(),
            vec![vec![Piece::Value(Placeholder {
                target: Target::SelfValue(vec![
                    Field::Named("tenant".into()),
                    Field::Named("id".into())
                ]),
                debug: false,
            })]]
        );
    }

    #[test]
    fn argument_fields() {
        assert_eq!(
            parse_components("{user.id}:{pair.0:?}:{t.10.x}").unwrap(),
            vec![
                vec![Piece::Value(Placeholder {
                    target: Target::Arg("user".into(), vec![Field::Named("id".into())]),
                    debug: false,
                })],
                vec![Piece::Value(Placeholder {
                    target: Target::Arg("pair".into(), vec![Field::Index(0)]),
                    debug: true,
                })],
                vec![Piece::Value(Placeholder {
                    target: Target::Arg(
                        "t".into(),
                        vec![Field::Index(10), Field::Named("x".into())]
                    ),
                    debug: false,
                })],
            ]
        );
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(parse_components("{{x}}").unwrap(), vec![vec![text("{x}")]]);
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in [
            "", "a::b", ":a", "a:", "{id", "a}", "{1x}", "{x:>5}", "{}", "{a.}", "{a..b}",
            "{a.01}", "{a.-1}", "{a.1x}", "{.a}", "{0.a}",
        ] {
            assert!(parse_components(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
