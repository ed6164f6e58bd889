//! Integration tests: the real service on `127.0.0.1:0`, a real PostgreSQL, a fresh database per
//! test. One test binary (so it builds once); one module per area.

mod helpers;

mod api_standards;
mod auth;
mod definitions;
mod dev_mode;
mod hostile_input;
mod instances;
mod pagination;
mod platform;
mod seed;
mod system_guard;
mod users;
