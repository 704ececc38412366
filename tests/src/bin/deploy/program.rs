// The program of the two-deploy test (`tests/schema_deploys.rs`), shared by
// `deploy_v1` and `deploy_v2`, which differ only in the model crate they
// link as `deploy_model`.
//
// Usage: `deploy_vN <order|status> <clear|encrypted|large|iter>`, with the
// cache taken from the environment (`MEMO_CACHE_URL`,
// `MEMO_ENCRYPTION_KEY`). Memoizes the deploy's value under a fixed key and
// prints `type=<type name> computed=<bool> value=<value>`.

use std::fmt::Debug;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use memo_runtime::{Config, Options, cache_memoize, cache_memoize_iter, configure};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [what, mode] = args.as_slice() else {
        eprintln!("usage: deploy_vN <order|status> <clear|encrypted|large|iter>");
        return ExitCode::FAILURE;
    };
    match Config::from_env() {
        Ok(config) => configure(config),
        Err(err) => {
            eprintln!("bad cache configuration: {err}");
            return ExitCode::FAILURE;
        }
    }
    let options = match mode.as_str() {
        "clear" | "iter" => Options::new(),
        "encrypted" => Options::new().encrypt(true),
        "large" => Options::new().large_data(true),
        _ => {
            eprintln!("unknown mode {mode}");
            return ExitCode::FAILURE;
        }
    };
    let iter = mode == "iter";
    match what.as_str() {
        "order" => run(deploy_model::order, iter, &options),
        "status" => run(deploy_model::status, iter, &options),
        _ => {
            eprintln!("unknown type {what}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn run<T>(value: fn() -> T, iter: bool, options: &Options)
where
    T: Serialize + DeserializeOwned + Debug,
{
    let computed = AtomicBool::new(false);
    let compute = || {
        computed.store(true, Ordering::SeqCst);
        value()
    };
    let got = if iter {
        let items: Vec<T> =
            cache_memoize_iter("deploy-iter", || vec![compute()], options).collect();
        format!("{items:?}")
    } else {
        format!("{:?}", cache_memoize("deploy-value", compute, options))
    };
    println!(
        "type={} computed={} value={got}",
        std::any::type_name::<T>(),
        computed.load(Ordering::SeqCst)
    );
}
