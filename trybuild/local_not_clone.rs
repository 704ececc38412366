use memo_runtime::cache_memoize;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Report {
    total: u64,
}

#[cache_memoize(key = "report:{id}", local = 60)]
fn report(id: u64) -> Report {
    Report { total: id }
}

#[cache_memoize(key = "fallible:{id}", local = 60)]
fn fallible(id: u64) -> Result<Report, String> {
    Ok(Report { total: id })
}

#[cache_memoize(key = "async:{id}", local = 60)]
async fn fetched(id: u64) -> Report {
    Report { total: id }
}

fn main() {
    let _ = report(1);
    let _ = fallible(1);
    let _ = fetched(1);
}
