//! Bazaar's end-to-end tests: the real `spin.toml`, built with
//! `bazaar build` and served by `bazaar up`, driven over HTTP as a client
//! would, through the gateway only.
//!
//! Registered as a test target of the `bazaar` package (see
//! `host/Cargo.toml`) so it runs the very `bazaar` binary cargo just built.

#[path = "../../host/tests/common/mod.rs"]
mod common;

mod bad_input;
mod chaos;
mod container;
mod gateway;
mod harness;
mod metrics;
mod orders;
mod payments;
mod products;
mod read_model;
mod replicas;
mod resilience;
mod saga;
mod serial;
mod test_server;
mod topology;
mod traces;
mod users;
