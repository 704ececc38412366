use memo_runtime::cache_memoize;

struct UserId(u64);

#[cache_memoize(key = "user:{id}")]
fn user(id: UserId) -> String {
    id.0.to_string()
}

fn main() {
    user(UserId(7));
}
