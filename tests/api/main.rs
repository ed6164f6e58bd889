//! Integration tests: the real service on `127.0.0.1:0`, a real PostgreSQL, a fresh database per
//! test. One test binary (so it builds once); one module per area.

// Test and benchmark code may panic on the unexpected; the service may not (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The lock and blocking-call rules of clippy.toml are the service's; test and benchmark code
// reads its files and /proc directly and keeps std's locks.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod binary;
mod db_proxy;
mod fake_provider;
mod helpers;
mod openbao;
mod raw;

mod api_standards;
mod audit;
mod auth;
mod authorization;
mod canary;
mod compression;
mod connections;
mod create_batches;
mod definitions;
mod dev_mode;
mod embed;
mod embed_canary;
mod embed_policy;
mod flood;
mod hostile_input;
mod hostile_provider;
mod import_dhamps;
mod instances;
mod key_sources;
mod metrics;
mod pagination;
mod platform;
mod processes;
mod projects;
mod properties;
mod quotas;
mod read_cache;
mod read_cache_projects;
mod reliability;
mod revocation;
mod rotation;
mod seed;
mod service_accounts;
mod sharing;
mod system_guard;
mod tls;
mod trace;
mod updates;
mod usage;
mod users;
