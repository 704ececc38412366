use memo_runtime::cache_memoize;

struct Path<T>(T);

#[cache_memoize(key = "report:{id}")]
fn report(Path((id, lang)): Path<(u32, String)>) -> String {
    format!("{lang}:{id}")
}

#[cache_memoize(key = "triple:{a}", ignore(c))]
async fn triple((a, b, c): (u32, u32, u32)) -> u32 {
    a + b + c
}

fn main() {
    report(Path((1, "en".into())));
    let _ = triple((1, 2, 3));
}
