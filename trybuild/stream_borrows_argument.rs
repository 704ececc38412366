#![allow(unused_variables)]

use memo_runtime::cache_memoize;

// A stand-in for `futures::Stream`: the attribute knows streams by the
// trait's name and its `Item` binding.
trait Stream {
    type Item;
}

struct Lines(usize);

impl Stream for Lines {
    type Item = String;
}

struct Repo;

impl Repo {
    // `tag` is borrowed but only keys the entry, and `root` lives for
    // `'static`: neither is an error.
    #[cache_memoize(key = "lines:{path}:{tag}:{root}", helpers = false)]
    fn lines(&self, path: &str, tag: &str, root: &'static str) -> impl Stream<Item = String> {
        let _ = self;
        Lines(path.len() + root.len())
    }
}

fn main() {
    let _ = Repo.lines("a", "b", "c");
}
