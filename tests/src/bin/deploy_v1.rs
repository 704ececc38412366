//! Deploy 1 of the two-deploy test; see `deploy/program.rs`.

extern crate deploy_v1 as deploy_model;

include!("deploy/program.rs");
