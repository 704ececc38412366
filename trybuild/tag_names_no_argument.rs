use memo_runtime::cache_memoize;

#[cache_memoize(key = "order:{id}", tags("user:{usr}"), ignore(user))]
fn order(id: u32, user: u32) -> String {
    format!("{id} {user}")
}

fn main() {
    order(1, 2);
}
