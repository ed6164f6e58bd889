//! What blocks a delete: the projects that use an instance. Shared by the three guards (delete an
//! instance, revoke a share, delete a user), which report the blockers by full name.

use sqlx::{Postgres, Transaction};

use super::errors;
use crate::domain::{DomainError, names::ProjectName};

/// How many blockers an error names at most.
const MAX_BLOCKERS: i64 = 10;

/// Full names of projects that use instance `instance_id`, only those of `owner_id` if given.
pub(super) async fn projects_using_instance(
    tx: &mut Transaction<'_, Postgres>,
    instance_id: i64,
    owner_id: Option<i64>,
) -> Result<Vec<String>, DomainError> {
    sqlx::query_as(
        "SELECT u.handle, p.handle FROM projects p JOIN users u ON u.id = p.owner_id \
         WHERE p.instance_id = $1 AND ($2::bigint IS NULL OR p.owner_id = $2) \
         ORDER BY u.handle, p.handle LIMIT $3",
    )
    .bind(instance_id)
    .bind(owner_id)
    .bind(MAX_BLOCKERS)
    .fetch_all(&mut **tx)
    .await
    .map_err(errors::db)
    .and_then(project_names)
}

/// Full names of other users' projects that use any instance of user `user_id`.
pub(super) async fn foreign_projects_using_instances_of(
    tx: &mut Transaction<'_, Postgres>,
    user_id: i64,
) -> Result<Vec<String>, DomainError> {
    sqlx::query_as(
        "SELECT u.handle, p.handle FROM projects p \
         JOIN users u ON u.id = p.owner_id JOIN instances i ON i.id = p.instance_id \
         WHERE i.owner_id = $1 AND p.owner_id <> $1 \
         ORDER BY u.handle, p.handle LIMIT $2",
    )
    .bind(user_id)
    .bind(MAX_BLOCKERS)
    .fetch_all(&mut **tx)
    .await
    .map_err(errors::db)
    .and_then(project_names)
}

/// Full project names from stored (owner, handle) pairs.
fn project_names(rows: Vec<(String, String)>) -> Result<Vec<String>, DomainError> {
    rows.into_iter()
        .map(|(owner, handle)| {
            Ok(ProjectName::new(
                errors::stored_user(&owner)?,
                errors::stored_handle(&handle)?,
            )
            .to_string())
        })
        .collect()
}

/// The FAILED_PRECONDITION answer: `refusal` (what cannot happen, and why), then the projects.
pub(super) fn blocked(refusal: String, projects: Vec<String>) -> DomainError {
    DomainError::in_use(
        format!(
            "{refusal}: {}; bind them to another instance or delete them first",
            projects.join(", ")
        ),
        projects,
    )
}
