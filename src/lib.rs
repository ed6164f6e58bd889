//! llm-registry: a gRPC registry of LLM and embedding services. docs/architecture.md explains
//! how it is built and why; README.md how to run it. The binary (`main.rs`) is a thin command line over [`server`].

//!
//! Layers, bottom up; a module uses only the layers below it, and no two files use each other
//! (checked by `.ci/layers.py`, which holds the same list):
//!
//! 1. [`pb`] (generated), [`trace_context`] (W3C trace ids, plain data), [`metrics`] (usable
//!    from every layer, like `tracing`);
//! 2. [`vault`] (keys at rest);
//! 3. `domain` (names, rules, errors; no tonic, no sqlx);
//! 4. `store` (sqlx), [`providers`] (outbound calls to LLM providers), [`connection`] (what a
//!    request knows of its connection);
//! 5. `rpc` (gRPC vocabulary the handlers and the edge share);
//! 6. `api` (the handlers), `import` (the `import-dhamps-vdb` command);
//! 7. `grpc` (the edge in front of the handlers; it never uses them), [`tls`] (the listener's
//!    connections), [`telemetry`];
//! 8. `services` (the one list of mounted services), [`config`], [`dev_postgres`] (development
//!    mode's own PostgreSQL);
//! 9. `retention` (the sweep `serve` runs over the store, with its settings);
//! 10. [`server`] and [`healthcheck`] (the client side of the `healthcheck` command), which wire
//!     them; then `main.rs`.
//!
//! Only what the binary, the tests and the benchmarks use is public.

mod api;
pub mod config;
pub mod connection;
pub mod dev_postgres;
mod domain;
mod grpc;
pub mod healthcheck;
mod import;
pub mod keys;
pub mod metrics;
pub mod pb;
pub mod providers;
mod retention;
mod rpc;
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
