//! The projects that depend on what a delete or a revocation takes away, and what happens to them
//! (README.md, "Access"; docs/operations.md, "Deletes, revocation and detached projects"). The owner's right to revoke always wins: without
//! `force` the call is refused (naming the caller's own projects and only counting other users',
//! whose names are theirs to know), and with it every dependent project is detached: its binding
//! cleared, the reason and time recorded, one audit event each.
//!
//! Callers lock the instance rows first (FOR UPDATE), and binding a project holds the instance
//! row FOR SHARE, so a bind and a revocation take turns: a bind that commits first is found here
//! and detached; one that waits finds the instance gone or unshared and is refused.

use sqlx::{Postgres, Transaction};

use super::{change::Change, errors};
use crate::domain::{DomainError, caller::Caller, names::ProjectName};

/// How many of the caller's own projects an error names at most.
const MAX_NAMED: usize = 10;

/// Which projects depend on a revocation.
#[derive(Debug, Clone, Copy)]
pub(super) enum Revoked {
    /// Every project bound to this instance.
    Instance(i64),
    /// The grantee's projects bound to this instance.
    Share { instance_id: i64, grantee_id: i64 },
    /// Other users' projects bound to any instance of this user.
    InstancesOf(i64),
}

/// A project bound to what is being revoked; locked until the change commits.
pub(super) struct Dependent {
    id: i64,
    name: ProjectName,
}

/// The projects that depend on `revoked`, locked (FOR UPDATE) for the rest of the change.
pub(super) async fn dependents(
    tx: &mut Transaction<'static, Postgres>,
    revoked: Revoked,
) -> Result<Vec<Dependent>, DomainError> {
    // One statement per scope, so that each walks its own index (projects_instance, or the
    // user's instances) rather than one plan for three predicates joined by OR.
    macro_rules! select_dependents {
        () => {
            "SELECT p.id, u.handle, p.handle FROM projects p JOIN users u ON u.id = p.owner_id"
        };
    }
    macro_rules! order_dependents {
        () => {
            "ORDER BY u.handle, p.handle FOR UPDATE OF p"
        };
    }
    let query = match revoked {
        Revoked::Instance(instance_id) => sqlx::query_as(concat!(
            select_dependents!(),
            " WHERE p.instance_id = $1 ",
            order_dependents!()
        ))
        .bind(instance_id),
        Revoked::Share {
            instance_id,
            grantee_id,
        } => sqlx::query_as(concat!(
            select_dependents!(),
            " WHERE p.instance_id = $1 AND p.owner_id = $2 ",
            order_dependents!()
        ))
        .bind(instance_id)
        .bind(grantee_id),
        Revoked::InstancesOf(user_id) => sqlx::query_as(concat!(
            select_dependents!(),
            " WHERE p.owner_id <> $1 \
             AND p.instance_id IN (SELECT id FROM instances WHERE owner_id = $1) ",
            order_dependents!()
        ))
        .bind(user_id),
    };
    let rows: Vec<(i64, String, String)> = query.fetch_all(&mut **tx).await.map_err(errors::db)?;
    rows.into_iter()
        .map(|(id, owner, handle)| {
            Ok(Dependent {
                id,
                name: ProjectName::new(
                    errors::stored_user(&owner)?,
                    errors::stored_handle(&handle)?,
                ),
            })
        })
        .collect()
}

/// Refuses the change while projects depend on it (without `force`), or detaches them all (with
/// it), recording one audit event per detached project. `refusal` says what cannot happen
/// ("users/a/instances/x cannot be deleted"); `reason` is what the detached projects will show
/// ("users/a/instances/x was deleted").
pub(super) async fn refuse_or_detach(
    change: &mut Change<'_>,
    caller: &Caller,
    dependents: Vec<Dependent>,
    force: bool,
    refusal: &str,
    reason: &str,
) -> Result<(), DomainError> {
    if dependents.is_empty() {
        return Ok(());
    }
    if !force {
        let (own, others): (Vec<_>, Vec<_>) = dependents
            .iter()
            .partition(|dependent| caller.owns(&dependent.name.owner));
        let named: Vec<String> = own
            .iter()
            .take(MAX_NAMED)
            .map(|dependent| dependent.name.to_string())
            .collect();
        let mut parts = Vec::new();
        if !named.is_empty() {
            parts.push(format!("your projects use it: {}", named.join(", ")));
        }
        if !others.is_empty() {
            parts.push(format!(
                "{} project(s) of other users depend on it",
                others.len()
            ));
        }
        return Err(DomainError::in_use(
            format!(
                "{refusal}: {}; bind or delete your projects, or retry with force to detach \
                 every dependent project",
                parts.join("; ")
            ),
            named,
        ));
    }
    let ids: Vec<i64> = dependents.iter().map(|dependent| dependent.id).collect();
    sqlx::query(
        "UPDATE projects SET instance_id = NULL, detach_reason = $2, detach_time = clock_timestamp(), \
         revision = revision + 1, update_time = clock_timestamp() WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(reason)
    .execute(&mut **change.tx())
    .await
    .map_err(errors::db)?;
    for dependent in &dependents {
        change
            .record_also(&dependent.name, &format!("detached: {reason}"))
            .await?;
    }
    Ok(())
}
