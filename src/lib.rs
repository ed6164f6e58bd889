//! llm-registry: a gRPC registry of LLM and embedding services. See DESIGN.md for the contract
//! and README.md for running it. The binary (`main.rs`) is a thin command line over [`server`].

//!
//! Layers, bottom up (no module imports from one above it): [`pb`] (generated) and
//! [`trace_context`] (W3C trace ids, plain data) and [`metrics`] (usable from every layer,
//! like `tracing`), [`vault`],
//! `domain` (no tonic, no sqlx), `store` (sqlx) and [`providers`] (outbound calls to LLM
//! providers), `api` (handlers) and `grpc` (the edge, in front of the handlers), then
//! [`server`], [`config`], [`tls`] (the listener's TLS) and [`telemetry`] that wire them;
//! [`healthcheck`] is the client side of the `healthcheck` command. Only what
//! the binary, the tests and the benchmarks use is public.

mod api;
pub mod config;
mod domain;
mod grpc;
pub mod healthcheck;
pub mod metrics;
pub mod pb;
pub mod providers;
pub mod server;
mod services;
mod store;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod vault;

/// Bearer tokens as the service issues them (the tests issue their own the same way).
pub use domain::token::IssuedToken;
/// Which method names count as read-only (the tests enumerate the writes with it).
pub use grpc::methods::is_read_only_method;
