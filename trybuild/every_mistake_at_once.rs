use memo_runtime::cache_memoize;

// One build shows every mistake of the function, and call sites of the
// function and its helpers raise nothing more.
#[cache_memoize(key = "report:{idd}", expiraton = 60, compress)]
fn report(id: u32, format: &str) -> String {
    format!("{id} as {format}")
}

fn main() {
    let _ = report(1, "pdf");
    let _ = report_invalidate(1, "pdf");
}
