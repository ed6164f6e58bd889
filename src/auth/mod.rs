//! Who is calling, and the one rule every write obeys: `users/_system` is the admin's alone.
//!
//! Both are tower layers in front of every service: [`authenticate`] turns the bearer token into
//! a [`Caller`](crate::domain::caller::Caller) in the request's extensions, and [`system_guard`]
//! refuses mutating calls aimed at `users/_system` from anyone but an administrator.

pub mod authenticate;
pub mod system_guard;
pub mod token;

/// Paths that need no token: health checks and server reflection.
pub fn is_public_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Read paths whose store query resolves a user's token itself, in the same statement as the
/// read (see [`Credential::Token`](crate::domain::caller::Credential::Token)). They are the hot
/// paths: a service reading its instance on every request pays one round trip, not two, and
/// GetInstance none of its own when the read cache has the answer.
pub const RESOLVED_IN_QUERY: &[&str] = &[
    "/llmregistry.v1.LlmInstanceService/GetInstance",
    "/llmregistry.v1.ProjectService/GetProjectInstance",
];
