use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use memo_runtime::cache_memoize;

struct Row;

struct Rows;

impl Stream for Rows {
    type Item = Row;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Row>> {
        Poll::Ready(None)
    }
}

#[cache_memoize(key = "rows")]
fn rows() -> impl Stream<Item = Row> {
    Rows
}

fn main() {
    let _ = rows();
}
