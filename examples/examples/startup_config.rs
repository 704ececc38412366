//! Configuring memo once at startup, from the environment or a URL, so that
//! deployment picks the cache: memcached or Redis in production, the
//! embedded store on a laptop.
//!
//! ```text
//! cargo run -p memo-examples --example startup_config
//! MEMO_CACHE_URL='memory://?namespace=shop&expiration=60' cargo run -p memo-examples --example startup_config
//! ```

use memo_runtime::{Config, Options, cache_memoize, configure, make_cache_key};

#[cache_memoize(key = "greeting:{name}")]
fn greeting(name: &str) -> String {
    format!("hello, {name}")
}

fn main() {
    // MEMO_CACHE_URL, MEMO_NAMESPACE, MEMO_ENCRYPTION_KEY, ... or, without
    // any of them, the embedded in-memory backend.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("invalid cache configuration ({error}); using the built-in default");
            Config::from_url("memory://?namespace=example").expect("a valid URL")
        }
    };
    println!("namespace: {:?}", config.get_namespace());
    configure(config);

    println!("{}", greeting("ada"));
    println!("{}", greeting("ada"));
    println!(
        "stored under {:?}",
        make_cache_key(["greeting", "ada"], &Options::new())
    );

    // A URL works the same way, for settings read from a config file.
    match Config::from_url("redis://127.0.0.1:6379?namespace=shop") {
        Ok(_) => println!("redis URL accepted"),
        Err(error) => println!("redis URL: {error}"),
    }
}
