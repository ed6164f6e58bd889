//! Queries on API standards.

use chrono::{DateTime, Utc};

use sqlx::AssertSqlSafe;

use super::{Store, audit, errors};
use crate::domain::{
    DomainError,
    api_standard::{ApiStandard, ApiStandardFields},
    audit::Audit,
    names::ApiStandardName,
    pagination::PageRequest,
};

#[derive(sqlx::FromRow)]
struct ApiStandardRow {
    handle: String,
    description: String,
    auth_header: String,
    auth_scheme: String,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

const COLUMNS: &str =
    "handle, description, auth_header, auth_scheme, revision, create_time, update_time";

impl ApiStandardRow {
    fn into_domain(self) -> Result<ApiStandard, DomainError> {
        Ok(ApiStandard {
            handle: errors::stored_handle(&self.handle)?,
            fields: ApiStandardFields {
                description: self.description,
                auth_header: self.auth_header,
                auth_scheme: self.auth_scheme,
            },
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

impl Store {
    pub async fn create_api_standard(
        &self,
        audit: &Audit,
        name: &ApiStandardName,
        fields: &ApiStandardFields,
    ) -> Result<ApiStandard, DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let created = sqlx::query_as::<_, ApiStandardRow>(AssertSqlSafe(format!(
            "INSERT INTO api_standards (handle, description, auth_header, auth_scheme) \
             VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
        )))
        .bind(name.0.as_str())
        .bind(&fields.description)
        .bind(&fields.auth_header)
        .bind(&fields.auth_scheme)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| errors::on_insert(e, &name.to_string()))?
        .into_domain()?;
        audit::record(&mut tx, audit, &name.to_string(), "created").await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(created)
    }

    pub async fn get_api_standard(
        &self,
        name: &ApiStandardName,
    ) -> Result<ApiStandard, DomainError> {
        sqlx::query_as::<_, ApiStandardRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_standards WHERE handle = $1"
        )))
        .bind(name.0.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))?
        .into_domain()
    }

    pub async fn list_api_standards(
        &self,
        page: &PageRequest,
    ) -> Result<Vec<ApiStandard>, DomainError> {
        sqlx::query_as::<_, ApiStandardRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_standards WHERE handle > $1 ORDER BY handle LIMIT $2"
        )))
        .bind(page.after.as_deref().unwrap_or(""))
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?
        .into_iter()
        .map(ApiStandardRow::into_domain)
        .collect()
    }

    /// Read-modify-write: `change` sees the current standard (after the etag check).
    pub async fn update_api_standard(
        &self,
        audit: &Audit,
        name: &ApiStandardName,
        etag: &str,
        change: impl FnOnce(&ApiStandard) -> Result<ApiStandardFields, DomainError>,
    ) -> Result<ApiStandard, DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let current = sqlx::query_as::<_, ApiStandardRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_standards WHERE handle = $1 FOR UPDATE"
        )))
        .bind(name.0.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(errors::db)?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))?
        .into_domain()?;
        crate::domain::check_etag(etag, &current.etag(), &name.to_string())?;
        let fields = change(&current)?;
        let updated = sqlx::query_as::<_, ApiStandardRow>(AssertSqlSafe(format!(
            "UPDATE api_standards SET description = $2, auth_header = $3, auth_scheme = $4, \
             revision = revision + 1, update_time = clock_timestamp() WHERE handle = $1 RETURNING {COLUMNS}"
        )))
        .bind(name.0.as_str())
        .bind(&fields.description)
        .bind(&fields.auth_header)
        .bind(&fields.auth_scheme)
        .fetch_one(&mut *tx)
        .await
        .map_err(errors::db)?
        .into_domain()?;
        audit::record(&mut tx, audit, &name.to_string(), "").await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(updated)
    }

    /// Deletes a standard; refused, with counts, while definitions or instances use it.
    pub async fn delete_api_standard(
        &self,
        audit: &Audit,
        name: &ApiStandardName,
        etag: &str,
    ) -> Result<(), DomainError> {
        let resource = name.to_string();
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let current = sqlx::query_as::<_, ApiStandardRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_standards WHERE handle = $1 FOR UPDATE"
        )))
        .bind(name.0.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(errors::db)?
        .ok_or_else(|| DomainError::NotFound(resource.clone()))?
        .into_domain()?;
        crate::domain::check_etag(etag, &current.etag(), &resource)?;
        let (definitions, instances): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM definitions d WHERE d.api_standard_id = s.id), \
                    (SELECT count(*) FROM instances i WHERE i.api_standard_id = s.id) \
             FROM api_standards s WHERE s.handle = $1",
        )
        .bind(name.0.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(errors::db)?;
        if definitions > 0 || instances > 0 {
            return Err(DomainError::in_use(
                format!(
                    "{resource} is used by {definitions} definition(s) and {instances} instance(s); \
                     change or delete those first"
                ),
                Vec::new(),
            ));
        }
        sqlx::query("DELETE FROM api_standards WHERE handle = $1")
            .bind(name.0.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| errors::on_delete(e, &resource))?;
        audit::record(&mut tx, audit, &resource, "deleted").await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(())
    }
}
