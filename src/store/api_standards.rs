//! Queries on API standards.

use chrono::{DateTime, Utc};

use super::{
    Store,
    change::Change,
    cursor::{self, HandleKey},
    errors,
    rows::{self, DomainRow},
};
use crate::domain::{
    DomainError,
    api_standard::{ApiStandard, ApiStandardFields},
    audit::Audit,
    embedding::EmbeddingProtocol,
    names::ApiStandardName,
    pagination::{Page, PageRequest},
};

#[derive(sqlx::FromRow)]
struct ApiStandardRow {
    handle: String,
    description: String,
    auth_header: String,
    auth_scheme: String,
    protocol: i16,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "handle, description, auth_header, auth_scheme, protocol, revision, create_time, update_time"
    };
}

impl DomainRow for ApiStandardRow {
    type Domain = ApiStandard;

    fn into_domain(self) -> Result<ApiStandard, DomainError> {
        Ok(ApiStandard {
            handle: errors::stored_handle(&self.handle)?,
            fields: ApiStandardFields {
                description: self.description,
                auth_header: self.auth_header,
                auth_scheme: self.auth_scheme,
                protocol: EmbeddingProtocol::from_number(i32::from(self.protocol)).ok_or_else(
                    || DomainError::Internal(format!("unknown stored protocol {}", self.protocol)),
                )?,
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
        let mut change = Change::begin(self, audit, name).await?;
        let created = rows::inserted(sqlx::query_as::<_, ApiStandardRow>(concat!(
            "INSERT INTO api_standards (handle, description, auth_header, auth_scheme, protocol) \
             VALUES ($1, $2, $3, $4, $5) RETURNING ",
            columns!()
        ))
        .bind(name.0.as_str())
        .bind(&fields.description)
        .bind(&fields.auth_header)
        .bind(&fields.auth_scheme)
        .bind(stored_protocol(fields.protocol)), &mut **change.tx(), &name.to_string()).await?;
        change.commit("created").await?;
        Ok(created)
    }

    pub async fn get_api_standard(
        &self,
        name: &ApiStandardName,
    ) -> Result<ApiStandard, DomainError> {
        rows::optional(
            sqlx::query_as::<_, ApiStandardRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_standards WHERE handle = $1"
            ))
            .bind(name.0.as_str()),
            &self.pool,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }

    pub async fn list_api_standards(
        &self,
        page: &PageRequest,
    ) -> Result<Page<ApiStandard>, DomainError> {
        let found = rows::all(
            sqlx::query_as::<_, ApiStandardRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_standards WHERE handle > $1 ORDER BY handle LIMIT $2"
            ))
            .bind(cursor::handle_after(page)?)
            .bind(cursor::fetch_limit(page)),
            &self.pool,
        )
        .await?;
        Ok(cursor::page_of(found, page, |standard| {
            HandleKey(standard.handle.to_string())
        }))
    }

    /// Read-modify-write: `change` sees the current standard (after the etag check).
    pub async fn update_api_standard(
        &self,
        audit: &Audit,
        name: &ApiStandardName,
        etag: &str,
        change_fields: impl FnOnce(&ApiStandard) -> Result<ApiStandardFields, DomainError>,
    ) -> Result<ApiStandard, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_api_standard(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let fields = change_fields(&current)?;
        let updated = rows::one(sqlx::query_as::<_, ApiStandardRow>(concat!("UPDATE api_standards SET description = $2, auth_header = $3, auth_scheme = $4, \
             protocol = $5, revision = revision + 1, update_time = clock_timestamp() WHERE handle = $1 RETURNING ", columns!()))
        .bind(name.0.as_str())
        .bind(&fields.description)
        .bind(&fields.auth_header)
        .bind(&fields.auth_scheme)
        .bind(stored_protocol(fields.protocol)), &mut **change.tx()).await?;
        change.commit("").await?;
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
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_api_standard(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let (definitions, instances): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM definitions d WHERE d.api_standard_id = s.id), \
                    (SELECT count(*) FROM instances i WHERE i.api_standard_id = s.id) \
             FROM api_standards s WHERE s.handle = $1",
        )
        .bind(name.0.as_str())
        .fetch_one(&mut **change.tx())
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
            .execute(&mut **change.tx())
            .await
            .map_err(|e| errors::on_delete(e, &resource))?;
        change.commit("deleted").await?;
        Ok(())
    }

    /// The standard's row, locked for the rest of the change.
    async fn lock_api_standard(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        name: &ApiStandardName,
    ) -> Result<ApiStandard, DomainError> {
        rows::optional(
            sqlx::query_as::<_, ApiStandardRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_standards WHERE handle = $1 FOR UPDATE"
            ))
            .bind(name.0.as_str()),
            &mut **tx,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }
}

/// The `api_standards.protocol` number of a protocol (the proto enum's, always 0..=3).
fn stored_protocol(protocol: EmbeddingProtocol) -> i16 {
    // The numbers are small constants; the fallback is unreachable.
    i16::try_from(protocol.number()).unwrap_or_default()
}
