use memo_runtime::cache_memoize;

#[cache_memoize(key = "user:{user_idd}")]
fn user(user_id: u64) -> String {
    user_id.to_string()
}

fn main() {
    user(1);
}
