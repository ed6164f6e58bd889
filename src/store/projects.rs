//! Queries on projects. Binding checks, in the same transaction, that the project's owner can
//! use the instance, and holds the instance row (FOR SHARE) so that a concurrent revoke or delete
//! waits and then sees the new project.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use super::{Store, audit, errors};
use crate::domain::{
    DomainError,
    audit::Audit,
    names::{InstanceName, ProjectName, UserKey, UserName},
    pagination::PageRequest,
    project::Project,
};

#[derive(sqlx::FromRow)]
struct ProjectRow {
    owner: String,
    handle: String,
    description: String,
    instance_owner: String,
    instance_handle: String,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

const SELECT: &str = "SELECT u.handle AS owner, p.handle, p.description, iu.handle AS instance_owner, \
    i.handle AS instance_handle, p.revision, p.create_time, p.update_time \
    FROM projects p JOIN users u ON u.id = p.owner_id \
    JOIN instances i ON i.id = p.instance_id JOIN users iu ON iu.id = i.owner_id";

fn user_key(value: &str) -> Result<UserKey, DomainError> {
    UserKey::parse("stored", value)
        .map_err(|_| DomainError::Internal(format!("malformed stored owner {value:?}")))
}

impl ProjectRow {
    fn into_domain(self) -> Result<Project, DomainError> {
        Ok(Project {
            name: ProjectName::new(user_key(&self.owner)?, errors::stored_handle(&self.handle)?),
            description: self.description,
            instance: InstanceName::new(
                user_key(&self.instance_owner)?,
                errors::stored_handle(&self.instance_handle)?,
            ),
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
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let owner_id = Self::user_id(&mut *tx, name.owner.as_str()).await?;
        let instance_id = Self::usable_instance_id(&mut tx, instance, owner_id).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO projects (owner_id, handle, description, instance_id) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(owner_id)
        .bind(name.handle.as_str())
        .bind(description)
        .bind(instance_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| errors::on_insert(e, &name.to_string()))?;
        let created = Self::project_by_id(&mut tx, id).await?;
        audit::record(
            &mut tx,
            audit,
            &name.to_string(),
            &format!("bound to {instance}"),
        )
        .await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(created)
    }

    async fn project_by_id(
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
    ) -> Result<Project, DomainError> {
        sqlx::query_as::<_, ProjectRow>(AssertSqlSafe(format!("{SELECT} WHERE p.id = $1")))
            .bind(id)
            .fetch_one(&mut **tx)
            .await
            .map_err(errors::db)?
            .into_domain()
    }

    pub async fn find_project(&self, name: &ProjectName) -> Result<Option<Project>, DomainError> {
        sqlx::query_as::<_, ProjectRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE u.handle = $1 AND p.handle = $2"
        )))
        .bind(name.owner.as_str())
        .bind(name.handle.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?
        .map(ProjectRow::into_domain)
        .transpose()
    }

    pub async fn list_projects(
        &self,
        owner: &UserName,
        page: &PageRequest,
    ) -> Result<Vec<Project>, DomainError> {
        let owner_id = Self::user_id(&self.pool, owner.0.as_str()).await?;
        sqlx::query_as::<_, ProjectRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE p.owner_id = $1 AND p.handle > $2 ORDER BY p.handle LIMIT $3"
        )))
        .bind(owner_id)
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?
        .into_iter()
        .map(ProjectRow::into_domain)
        .collect()
    }

    /// Read-modify-write: `change` sees the current project (after the etag check) and returns
    /// the new description and instance; a new instance must be usable by the project's owner.
    pub async fn update_project(
        &self,
        audit: &Audit,
        name: &ProjectName,
        etag: &str,
        change: impl FnOnce(&Project) -> Result<(String, InstanceName), DomainError>,
    ) -> Result<Project, DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let (id, owner_id, current) = Self::lock_project(&mut tx, name).await?;
        crate::domain::check_etag(etag, &current.etag(), &name.to_string())?;
        let (description, instance) = change(&current)?;
        let instance_id = Self::usable_instance_id(&mut tx, &instance, owner_id).await?;
        sqlx::query(
            "UPDATE projects SET description = $2, instance_id = $3, revision = revision + 1, \
             update_time = clock_timestamp() WHERE id = $1",
        )
        .bind(id)
        .bind(&description)
        .bind(instance_id)
        .execute(&mut *tx)
        .await
        .map_err(errors::db)?;
        let updated = Self::project_by_id(&mut tx, id).await?;
        audit::record(
            &mut tx,
            audit,
            &name.to_string(),
            &format!("bound to {instance}"),
        )
        .await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(updated)
    }

    pub async fn delete_project(
        &self,
        audit: &Audit,
        name: &ProjectName,
        etag: &str,
    ) -> Result<(), DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let (id, _, current) = Self::lock_project(&mut tx, name).await?;
        crate::domain::check_etag(etag, &current.etag(), &name.to_string())?;
        sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(errors::db)?;
        audit::record(&mut tx, audit, &name.to_string(), "deleted").await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(())
    }

    /// The project row locked for change: its id, its owner's id, and the project.
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
