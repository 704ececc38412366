use memo_runtime::cache_memoize;

#[cache_memoize(key = "user:{id")]
fn unclosed(id: u32) -> u32 {
    id
}

#[cache_memoize(key = "user::{id}")]
fn empty_component(id: u32) -> u32 {
    id
}

#[cache_memoize(key = "user:{id:>8}")]
fn format_spec(id: u32) -> u32 {
    id
}

fn main() {
    unclosed(1);
    empty_component(1);
    format_spec(1);
}
