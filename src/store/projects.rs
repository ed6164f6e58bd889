//! Queries on projects. Binding checks, in the same transaction, that the project's owner can
//! use the instance, and holds the instance row (FOR SHARE) so that a concurrent revoke or delete
//! waits and then sees the new project.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{
    Store,
    change::Change,
    cursor::{self, HandleKey},
    errors,
    rows::{self, DomainRow},
};
use crate::domain::{
    DomainError,
    audit::Audit,
    names::{InstanceName, ProjectName, UserName},
    pagination::{Page, PageRequest},
    project::{Detachment, Project},
};

#[derive(sqlx::FromRow)]
struct ProjectRow {
    owner: String,
    handle: String,
    description: String,
    instance_owner: Option<String>,
    instance_handle: Option<String>,
    detach_reason: String,
    detach_time: Option<DateTime<Utc>>,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

macro_rules! select_projects {
    () => {
        "SELECT u.handle AS owner, p.handle, p.description, iu.handle AS instance_owner, \
    i.handle AS instance_handle, p.detach_reason, p.detach_time, p.revision, p.create_time, \
    p.update_time \
    FROM projects p JOIN users u ON u.id = p.owner_id \
    LEFT JOIN instances i ON i.id = p.instance_id LEFT JOIN users iu ON iu.id = i.owner_id"
    };
}

impl DomainRow for ProjectRow {
    type Domain = Project;

    fn into_domain(self) -> Result<Project, DomainError> {
        Ok(Project {
            name: ProjectName::new(
                errors::stored_user(&self.owner)?,
                errors::stored_handle(&self.handle)?,
            ),
            description: self.description,
            instance: match (self.instance_owner, self.instance_handle) {
                (Some(owner), Some(handle)) => Some(InstanceName::new(
                    errors::stored_user(&owner)?,
                    errors::stored_handle(&handle)?,
                )),
                _ => None,
            },
            detached: self.detach_time.map(|time| Detachment {
                reason: self.detach_reason,
                time,
            }),
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

impl Store {
    /// The id of `instance` if user `user_id` can use it (owns it or holds a share); NOT_FOUND
    /// otherwise, exactly as for a missing instance.
    ///
    /// The instance row is locked first and the share checked by a second statement: under READ
    /// COMMITTED that statement sees a revoke that committed while we waited for the lock, where a
    /// single locking query would still judge by its older snapshot and bind a project to an
    /// instance its owner just lost.
    async fn usable_instance_id(
        tx: &mut Transaction<'_, Postgres>,
        instance: &InstanceName,
        user_id: i64,
    ) -> Result<i64, DomainError> {
        let not_found = || DomainError::NotFound(instance.to_string());
        let (id, owner_id): (i64, i64) = sqlx::query_as(
            "SELECT i.id, i.owner_id FROM instances i JOIN users o ON o.id = i.owner_id \
             WHERE o.handle = $1 AND i.handle = $2 FOR SHARE OF i",
        )
        .bind(instance.owner.as_str())
        .bind(instance.handle.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(errors::db)?
        .ok_or_else(not_found)?;
        if owner_id == user_id {
            return Ok(id);
        }
        let shared: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM shares WHERE instance_id = $1 AND grantee_id = $2)",
        )
        .bind(id)
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(errors::db)?;
        if shared { Ok(id) } else { Err(not_found()) }
    }

    pub async fn create_project(
        &self,
        audit: &Audit,
        name: &ProjectName,
        description: &str,
        instance: &InstanceName,
    ) -> Result<Project, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let owner_id = Self::user_id(&mut **change.tx(), name.owner.as_str()).await?;
        let instance_id = Self::usable_instance_id(change.tx(), instance, owner_id).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projects (owner_id, handle, description, instance_id) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(owner_id)
        .bind(name.handle.as_str())
        .bind(description)
        .bind(instance_id)
        .fetch_one(&mut **change.tx())
        .await
        .map_err(|e| errors::on_insert(e, &name.to_string()))?;
        let created = Self::project_by_id(change.tx(), id).await?;
        change.commit(&format!("bound to {instance}")).await?;
        Ok(created)
    }

    async fn project_by_id(
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
    ) -> Result<Project, DomainError> {
        rows::one(
            sqlx::query_as::<_, ProjectRow>(concat!(select_projects!(), " WHERE p.id = $1"))
                .bind(id),
            &mut **tx,
        )
        .await
    }

    pub async fn find_project(&self, name: &ProjectName) -> Result<Option<Project>, DomainError> {
        rows::optional(
            sqlx::query_as::<_, ProjectRow>(concat!(
                select_projects!(),
                " WHERE u.handle = $1 AND p.handle = $2"
            ))
            .bind(name.owner.as_str())
            .bind(name.handle.as_str()),
            &self.pool,
        )
        .await
    }

    pub async fn list_projects(
        &self,
        owner: &UserName,
        page: &PageRequest,
    ) -> Result<Page<Project>, DomainError> {
        let owner_id = Self::user_id(&self.pool, owner.0.as_str()).await?;
        let found = rows::all(
            sqlx::query_as::<_, ProjectRow>(concat!(
                select_projects!(),
                " WHERE p.owner_id = $1 AND p.handle > $2 ORDER BY p.handle LIMIT $3"
            ))
            .bind(owner_id)
            .bind(cursor::handle_after(page)?)
            .bind(cursor::fetch_limit(page)),
            &self.pool,
        )
        .await?;
        Ok(cursor::page_of(found, page, |project| {
            HandleKey(project.name.handle.to_string())
        }))
    }

    /// Read-modify-write: `change` sees the current project (after the etag check) and returns
    /// the new description and instance; a new instance must be usable by the project's owner.
    /// Read-modify-write: `change_fields` sees the current project (after the etag check) and
    /// returns its new description and instance, which must be one its owner can use. A detached
    /// project stays detached until an instance is given; binding it clears the detachment.
    pub async fn update_project(
        &self,
        audit: &Audit,
        name: &ProjectName,
        etag: &str,
        change_fields: impl FnOnce(&Project) -> Result<(String, Option<InstanceName>), DomainError>,
    ) -> Result<Project, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let (id, owner_id, current) = Self::lock_project(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let (description, instance) = change_fields(&current)?;
        let instance_id = match &instance {
            Some(instance) => {
                Some(Self::usable_instance_id(change.tx(), instance, owner_id).await?)
            }
            None => None,
        };
        // Binding clears the detachment; leaving a detached project unbound keeps it.
        sqlx::query(
            "UPDATE projects SET description = $2, instance_id = $3, \
             detach_reason = CASE WHEN $3 IS NULL THEN detach_reason ELSE '' END, \
             detach_time = CASE WHEN $3 IS NULL THEN detach_time END, \
             revision = revision + 1, update_time = clock_timestamp() WHERE id = $1",
        )
        .bind(id)
        .bind(&description)
        .bind(instance_id)
        .execute(&mut **change.tx())
        .await
        .map_err(errors::db)?;
        let updated = Self::project_by_id(change.tx(), id).await?;
        let detail = match &instance {
            Some(instance) => format!("bound to {instance}"),
            None => "still detached".to_owned(),
        };
        change.commit(&detail).await?;
        Ok(updated)
    }

    pub async fn delete_project(
        &self,
        audit: &Audit,
        name: &ProjectName,
        etag: &str,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let (id, _, current) = Self::lock_project(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut **change.tx())
            .await
            .map_err(errors::db)?;
        change.commit("deleted").await
    }

    async fn lock_project(
        tx: &mut Transaction<'_, Postgres>,
        name: &ProjectName,
    ) -> Result<(i64, i64, Project), DomainError> {
        let ids: Option<(i64, i64)> = sqlx::query_as(
            "SELECT p.id, p.owner_id FROM projects p JOIN users u ON u.id = p.owner_id \
             WHERE u.handle = $1 AND p.handle = $2 FOR UPDATE OF p",
        )
        .bind(name.owner.as_str())
        .bind(name.handle.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(errors::db)?;
        let (id, owner_id) = ids.ok_or_else(|| DomainError::NotFound(name.to_string()))?;
        Ok((id, owner_id, Self::project_by_id(tx, id).await?))
    }
}
