use memo_runtime::cache_memoize;

#[cache_memoize(key = "user:{self.id}:{n}")]
fn user(n: u64) -> String {
    n.to_string()
}

fn main() {
    user(1);
}
