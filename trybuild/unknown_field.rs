use memo_runtime::cache_memoize;

struct User {
    id: u64,
}

struct Service {
    region: String,
}

#[cache_memoize(key = "user:{user.idd}")]
fn user(user: &User) -> u64 {
    user.id
}

#[cache_memoize(key = "pair:{pair.2:?}")]
fn pair(pair: (u32, u32)) -> u32 {
    pair.0 + pair.1
}

impl Service {
    #[cache_memoize(key = "price:{self.regoin}:{sku}")]
    fn price(&self, sku: u32) -> String {
        format!("{}{sku}", self.region)
    }
}

fn main() {
    user(&User { id: 1 });
    pair((1, 2));
    let _ = Service { region: "eu".into() }.price(1);
}
