use memo_runtime::cache_memoize;

fn non_empty(word: &String) -> bool {
    !word.is_empty()
}

#[cache_memoize(key = "words:{text}", cache_if = non_empty)]
fn words(text: &str) -> impl Iterator<Item = String> {
    text.split(' ').map(str::to_owned).collect::<Vec<_>>().into_iter()
}

#[cache_memoize(key = "n:{n}", cache_if = true)]
fn literal(n: u64) -> u64 {
    n
}

#[cache_memoize(key = "m:{n}", store_if = non_empty)]
fn alias(n: u64) -> u64 {
    n
}

fn main() {
    let _ = words("a b").count();
    literal(1);
    alias(1);
}
