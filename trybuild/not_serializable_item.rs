use memo_runtime::cache_memoize;

struct Connection;

#[cache_memoize(key = "many")]
fn many() -> impl Iterator<Item = Connection> {
    std::iter::once(Connection)
}

fn main() {
    let _ = many();
}
