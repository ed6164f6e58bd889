//! llm-registry: a gRPC registry of LLM and embedding services. See DESIGN.md for the contract
//! and README.md for running it. The binary (`main.rs`) is a thin command line over [`server`].

pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
pub mod domain;
pub mod middleware;
pub mod pb;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod vault;
