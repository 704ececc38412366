use memo_runtime::cache_memoize;

struct Connection;

#[cache_memoize(key = "connection")]
async fn connection() -> Connection {
    Connection
}

#[cache_memoize(key = "fallible")]
async fn fallible() -> Result<Connection, String> {
    Ok(Connection)
}

fn main() {
    let _ = connection();
    let _ = fallible();
}
