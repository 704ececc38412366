use memo_runtime::cache_memoize;

// A stand-in for `futures::Stream`: the attribute knows streams by the
// trait's name and its `Item` binding.
trait Stream {
    type Item;
}

struct Numbers(u8);

impl Stream for Numbers {
    type Item = u8;
}

#[cache_memoize(key = "numbers:{n}")]
async fn numbers(n: u8) -> impl Stream<Item = u8> {
    Numbers(n)
}

fn main() {
    let _ = numbers(3);
}
