use memo_runtime::cache_memoize;

trait Catalog {
    #[cache_memoize(key = "title:{id}")]
    fn title(&self, id: u32) -> String;
}

fn main() {}
