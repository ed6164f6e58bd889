//! The gRPC edge: everything a request crosses before a handler sees it, and the one mapping of
//! domain errors to gRPC status on its way out. Read it top to bottom in the order
//! [`crate::server`] stacks the layers:
//!
//! 1. [`trace`]: a span per RPC (method, caller, status, latency).
//! 2. [`authenticate`]: bearer token -> [`Caller`](crate::domain::caller::Caller); nothing is
//!    held for a caller before this.
//! 3. [`body::BodyGate`]: the request body, under its own short deadline, before any slot.
//! 4. [`admission`]: running and queued call limits, fair shares per connection and caller, and
//!    the database circuit breaker.
//! 5. [`refusal_audit`]: refused writes go into the audit trail (bounded, rate-limited).
//! 6. [`system_guard`]: writes under `users/_system` are the admin's alone.
//!
//! Every layer asks [`methods::MethodTable`] what a path is (public, read-only, resolved in its
//! query, which field names its target); [`layer`] is the tower plumbing they share, [`body`]
//! buffers and decodes request frames, and [`status`] turns domain errors into gRPC status.
//!
//! The edge depends on the domain and the store, never on the handlers in [`crate::api`].

pub mod admission;
pub mod authenticate;
pub mod body;
pub mod layer;
pub mod methods;
pub mod refusal_audit;
pub mod status;
pub mod system_guard;
pub mod trace;
