use memo_runtime::cache_memoize;

#[cache_memoize(key = "page:{page}")]
fn page(page: u32, per_page: u32) -> Vec<u32> {
    (page * per_page..(page + 1) * per_page).collect()
}

fn main() {
    page(1, 10);
}
