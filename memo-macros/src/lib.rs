//! The `#[cache_memoize]` attribute. Use it through `memo_runtime`.
use proc_macro::TokenStream;

/// Memoizes a function in the configured cache.
#[proc_macro_attribute]
pub fn cache_memoize(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}

/// Memoizes an iterator-returning function in the configured cache.
#[proc_macro_attribute]
pub fn cache_memoize_iter(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}
