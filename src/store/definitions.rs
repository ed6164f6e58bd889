//! Queries on definitions.

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
    audit::Audit,
    definition::{Definition, ServiceSpec},
    names::{ApiStandardName, DefinitionName, UserKey, UserName},
    pagination::{Page, PageRequest},
};

#[derive(sqlx::FromRow)]
struct DefinitionRow {
    owner: String,
    handle: String,
    endpoint: String,
    api_standard: String,
    model: String,
    dimensions: Option<i32>,
    context_limit: Option<i32>,
    description: String,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

macro_rules! select_definitions {
    () => {
        "SELECT u.handle AS owner, d.handle, d.endpoint, s.handle AS api_standard, \
    d.model, d.dimensions, d.context_limit, d.description, d.revision, d.create_time, d.update_time \
    FROM definitions d JOIN users u ON u.id = d.owner_id JOIN api_standards s ON s.id = d.api_standard_id"
    };
}

impl DomainRow for DefinitionRow {
    type Domain = Definition;

    fn into_domain(self) -> Result<Definition, DomainError> {
        let owner = UserKey::parse("stored", &self.owner).map_err(|_| {
            DomainError::Internal(format!("malformed stored owner {:?}", self.owner))
        })?;
        Ok(Definition {
            name: DefinitionName::new(owner, errors::stored_handle(&self.handle)?),
            spec: ServiceSpec {
                endpoint: self.endpoint,
                api_standard: ApiStandardName(errors::stored_handle(&self.api_standard)?),
                model: self.model,
                dimensions: self.dimensions,
                context_limit: self.context_limit,
                description: self.description,
            },
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

impl Store {
    pub async fn create_definition(
        &self,
        audit: &Audit,
        name: &DefinitionName,
        spec: &ServiceSpec,
    ) -> Result<Definition, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let owner_id = Self::user_id(&mut **change.tx(), name.owner.as_str()).await?;
        let standard_id = Self::api_standard_id(
            &mut **change.tx(),
            "definition.api_standard",
            spec.api_standard.0.as_str(),
        )
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO definitions \
             (owner_id, handle, endpoint, api_standard_id, model, dimensions, context_limit, description) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(owner_id)
        .bind(name.handle.as_str())
        .bind(&spec.endpoint)
        .bind(standard_id)
        .bind(&spec.model)
        .bind(spec.dimensions)
        .bind(spec.context_limit)
        .bind(&spec.description)
        .fetch_one(&mut **change.tx())
        .await
        .map_err(|e| match errors::sqlstate(&e).as_deref() {
            Some(errors::FOREIGN_KEY_VIOLATION) => errors::on_reference(e, "definition.api_standard"),
            _ => errors::on_insert(e, &name.to_string()),
        })?;
        let created = Self::definition_by_id(&mut **change.tx(), id).await?;
        change.commit("created").await?;
        Ok(created)
    }

    async fn definition_by_id<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        id: i64,
    ) -> Result<Definition, DomainError> {
        rows::one(
            sqlx::query_as::<_, DefinitionRow>(concat!(select_definitions!(), " WHERE d.id = $1"))
                .bind(id),
            executor,
        )
        .await
    }

    /// The definition, or `None` when it does not exist.
    pub async fn find_definition(
        &self,
        name: &DefinitionName,
    ) -> Result<Option<Definition>, DomainError> {
        rows::optional(
            sqlx::query_as::<_, DefinitionRow>(concat!(
                select_definitions!(),
                " WHERE u.handle = $1 AND d.handle = $2"
            ))
            .bind(name.owner.as_str())
            .bind(name.handle.as_str()),
            &self.pool,
        )
        .await
    }

    /// One owner's definitions in handle order after the cursor; NOT_FOUND if the owner is missing.
    pub async fn list_definitions(
        &self,
        owner: &UserName,
        page: &PageRequest,
    ) -> Result<Page<Definition>, DomainError> {
        let owner_id = Self::user_id(&self.pool, owner.0.as_str()).await?;
        let found = rows::all(
            sqlx::query_as::<_, DefinitionRow>(concat!(
                select_definitions!(),
                " WHERE d.owner_id = $1 AND d.handle > $2 ORDER BY d.handle LIMIT $3"
            ))
            .bind(owner_id)
            .bind(cursor::handle_after(page)?)
            .bind(cursor::fetch_limit(page)),
            &self.pool,
        )
        .await?;
        Ok(cursor::page_of(found, page, |definition| {
            HandleKey(definition.name.handle.to_string())
        }))
    }

    /// Read-modify-write: `change` sees the current definition (after the etag check) and returns
    /// the new, validated spec.
    pub async fn update_definition(
        &self,
        audit: &Audit,
        name: &DefinitionName,
        etag: &str,
        change_spec: impl FnOnce(&Definition) -> Result<ServiceSpec, DomainError>,
    ) -> Result<Definition, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_definition(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let spec = change_spec(&current)?;
        let standard_id = Self::api_standard_id(
            &mut **change.tx(),
            "definition.api_standard",
            spec.api_standard.0.as_str(),
        )
        .await?;
        let id: i64 = sqlx::query_scalar(
            "UPDATE definitions d SET endpoint = $3, api_standard_id = $4, model = $5, dimensions = $6, \
             context_limit = $7, description = $8, revision = d.revision + 1, update_time = clock_timestamp() \
             FROM users u WHERE u.id = d.owner_id AND u.handle = $1 AND d.handle = $2 RETURNING d.id",
        )
        .bind(name.owner.as_str())
        .bind(name.handle.as_str())
        .bind(&spec.endpoint)
        .bind(standard_id)
        .bind(&spec.model)
        .bind(spec.dimensions)
        .bind(spec.context_limit)
        .bind(&spec.description)
        .fetch_one(&mut **change.tx())
        .await
        .map_err(|e| errors::on_reference(e, "definition.api_standard"))?;
        let updated = Self::definition_by_id(&mut **change.tx(), id).await?;
        change.commit("").await?;
        Ok(updated)
    }

    /// Deletes a definition; instances made from it keep their fields and lose the reference.
    pub async fn delete_definition(
        &self,
        audit: &Audit,
        name: &DefinitionName,
        etag: &str,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_definition(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        sqlx::query("DELETE FROM definitions d USING users u WHERE u.id = d.owner_id AND u.handle = $1 AND d.handle = $2")
            .bind(name.owner.as_str())
            .bind(name.handle.as_str())
            .execute(&mut **change.tx())
            .await
            .map_err(|e| errors::on_delete(e, &name.to_string()))?;
        change
            .commit("deleted; its instances keep their fields")
            .await?;
        Ok(())
    }

    async fn lock_definition(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        name: &DefinitionName,
    ) -> Result<Definition, DomainError> {
        rows::optional(
            sqlx::query_as::<_, DefinitionRow>(concat!(
                select_definitions!(),
                " WHERE u.handle = $1 AND d.handle = $2 FOR UPDATE OF d"
            ))
            .bind(name.owner.as_str())
            .bind(name.handle.as_str()),
            &mut **tx,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }
}
