//! Deploy 2 of the two-deploy test; see `deploy/program.rs`.

extern crate deploy_v2 as deploy_model;

include!("deploy/program.rs");
