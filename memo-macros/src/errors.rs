//! Collecting every mistake in an attribute and its function, so that one
//! build reports them all (as serde_derive's `Ctxt` does), and suggesting the
//! name the user probably meant.

use std::fmt::Display;

use proc_macro2::Span;

/// The mistakes found so far.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Records a mistake at `span`.
    pub(crate) fn push(&mut self, span: Span, message: impl Display) {
        self.add(syn::Error::new(span, message));
    }

    /// Records an error built elsewhere (a parse error, say).
    pub(crate) fn add(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Whether nothing is wrong so far.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// All the mistakes as one error, or `Ok` when there were none.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `"; did you mean `x`?"` when one of `known` is close to `unknown`, else "".
pub(crate) fn did_you_mean<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        .map(|candidate| (distance(unknown, candidate), candidate))
        .filter(|&(d, candidate)| d <= 2.max(candidate.len() / 3))
        .min()
        .map(|(_, candidate)| format!("; did you mean `{candidate}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance between two short names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name() {
        let known = ["expiration", "encrypt", "large_data"];
        assert_eq!(
            did_you_mean("expiraton", known),
            "; did you mean `expiration`?"
        );
        assert_eq!(
            did_you_mean("encrypted", known),
            "; did you mean `encrypt`?"
        );
        assert_eq!(did_you_mean("large", known), "");
        assert_eq!(did_you_mean("zzz", known), "");
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
    }

    #[test]
    fn errors_combine() {
        let mut errors = Errors::default();
        assert!(errors.is_empty());
        errors.push(Span::call_site(), "one");
        errors.push(Span::call_site(), "two");
        let all = errors.finish().unwrap_err();
        assert_eq!(all.into_iter().count(), 2);
    }
}
