//! Imported API standards, definitions and instances: batched inserts, single-row updates, and
//! the lookups an import needs (seeded standards and `_system` definitions by handle, who owns a
//! definition, an instance's stored key).

use std::collections::HashMap;

use anyhow::Context as _;

use super::{ImportTx, Times};
use crate::vault::Sealed;

/// An API standard to create.
#[derive(Debug, Clone)]
pub struct NewStandard {
    pub handle: String,
    pub description: String,
    pub auth_header: String,
    pub auth_scheme: String,
    pub times: Times,
}

/// A definition to create.
#[derive(Debug, Clone)]
pub struct NewDefinition {
    pub owner_id: i64,
    pub handle: String,
    pub service: ServiceFields,
    pub times: Times,
}

/// An instance to create; its uid is drawn by the caller, since the key is sealed with it.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub uid: String,
    pub owner_id: i64,
    pub handle: String,
    pub definition_id: Option<i64>,
    pub service: ServiceFields,
    pub sealed: Option<Sealed>,
    pub times: Times,
}

/// The service fields definitions and instances share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFields {
    pub endpoint: String,
    pub api_standard_id: i64,
    pub model: String,
    pub dimensions: Option<i32>,
    pub context_limit: Option<i32>,
    pub description: String,
}

/// A changed source row laid over the definition or instance it became.
#[derive(Debug, Clone)]
pub struct ServiceUpdate {
    pub id: i64,
    pub service: ServiceFields,
    /// Instances only: the definition it came from.
    pub definition_id: Option<i64>,
    /// Instances only: the key, if it changes (`Some(None)` removes it).
    pub key: Option<Option<Sealed>>,
    pub updated: chrono::DateTime<chrono::Utc>,
}

/// An instance's id, uid, and stored key (ciphertext and key id), as read.
type StoredKeyRow = (i64, String, Option<Vec<u8>>, Option<String>);

fn service_columns<'a, T: 'a>(
    rows: impl Iterator<Item = &'a T> + Clone,
    service: impl Fn(&'a T) -> &'a ServiceFields,
) -> ServiceColumns<'a> {
    ServiceColumns {
        endpoints: rows.clone().map(|r| service(r).endpoint.as_str()).collect(),
        standards: rows.clone().map(|r| service(r).api_standard_id).collect(),
        models: rows.clone().map(|r| service(r).model.as_str()).collect(),
        dimensions: rows.clone().map(|r| service(r).dimensions).collect(),
        context_limits: rows.clone().map(|r| service(r).context_limit).collect(),
        descriptions: rows.map(|r| service(r).description.as_str()).collect(),
    }
}

struct ServiceColumns<'a> {
    endpoints: Vec<&'a str>,
    standards: Vec<i64>,
    models: Vec<&'a str>,
    dimensions: Vec<Option<i32>>,
    context_limits: Vec<Option<i32>>,
    descriptions: Vec<&'a str>,
}

impl ImportTx {
    /// The registry's API standards by handle.
    pub async fn standard_ids(
        &mut self,
        handles: &[String],
    ) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT handle, id FROM api_standards WHERE handle = ANY($1)")
                .bind(handles)
                .fetch_all(&mut *self.tx)
                .await
                .context("reading API standards")?;
        Ok(rows.into_iter().collect())
    }

    /// Creates API standards; their ids by handle.
    pub async fn insert_standards(
        &mut self,
        rows: &[NewStandard],
    ) -> anyhow::Result<HashMap<String, i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let created: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO api_standards (handle, description, auth_header, auth_scheme, \
                 create_time, update_time) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::timestamptz[], $6::timestamptz[]) \
             RETURNING handle, id",
        )
        .bind(rows.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.description.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.auth_header.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.auth_scheme.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.times.created).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.updated).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("creating API standards")?;
        self.wrote(super::Table::ApiStandards, created.len())
            .await?;
        Ok(created.into_iter().collect())
    }

    /// Lays a changed source standard over the one it became; its new revision.
    pub async fn update_standard(&mut self, id: i64, row: &NewStandard) -> anyhow::Result<i64> {
        sqlx::query_scalar(
            "UPDATE api_standards SET description = $2, auth_header = $3, auth_scheme = $4, \
                 revision = revision + 1, update_time = $5 WHERE id = $1 RETURNING revision",
        )
        .bind(id)
        .bind(&row.description)
        .bind(&row.auth_header)
        .bind(&row.auth_scheme)
        .bind(row.times.updated)
        .fetch_one(&mut *self.tx)
        .await
        .context("updating an API standard")
    }

    /// The `_system` definitions by handle.
    pub async fn system_definition_ids(
        &mut self,
        handles: &[String],
    ) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.handle, d.id FROM definitions d JOIN users u ON u.id = d.owner_id \
             WHERE u.handle = '_system' AND d.handle = ANY($1)",
        )
        .bind(handles)
        .fetch_all(&mut *self.tx)
        .await
        .context("reading _system definitions")?;
        Ok(rows.into_iter().collect())
    }

    /// Who owns each of these definitions.
    pub async fn definition_owners(&mut self, ids: &[i64]) -> anyhow::Result<HashMap<i64, i64>> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT id, owner_id FROM definitions WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut *self.tx)
                .await
                .context("reading definitions")?;
        Ok(rows.into_iter().collect())
    }

    /// Creates definitions; their ids by (owner, handle).
    pub async fn insert_definitions(
        &mut self,
        rows: &[NewDefinition],
    ) -> anyhow::Result<HashMap<(i64, String), i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let columns = service_columns(rows.iter(), |r| &r.service);
        let created: Vec<(i64, String, i64)> = sqlx::query_as(
            "INSERT INTO definitions (owner_id, handle, endpoint, api_standard_id, model, \
                 dimensions, context_limit, description, create_time, update_time) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                 $6::integer[], $7::integer[], $8::text[], $9::timestamptz[], $10::timestamptz[]) \
             RETURNING owner_id, handle, id",
        )
        .bind(rows.iter().map(|r| r.owner_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>())
        .bind(columns.endpoints)
        .bind(columns.standards)
        .bind(columns.models)
        .bind(columns.dimensions)
        .bind(columns.context_limits)
        .bind(columns.descriptions)
        .bind(rows.iter().map(|r| r.times.created).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.updated).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("creating definitions")?;
        self.wrote(super::Table::Definitions, created.len()).await?;
        Ok(created
            .into_iter()
            .map(|(owner, handle, id)| ((owner, handle), id))
            .collect())
    }

    /// Lays a changed source definition over the one it became; its new revision.
    pub async fn update_definition(&mut self, update: &ServiceUpdate) -> anyhow::Result<i64> {
        let s = &update.service;
        sqlx::query_scalar(
            "UPDATE definitions SET endpoint = $2, api_standard_id = $3, model = $4, \
                 dimensions = $5, context_limit = $6, description = $7, \
                 revision = revision + 1, update_time = $8 WHERE id = $1 RETURNING revision",
        )
        .bind(update.id)
        .bind(&s.endpoint)
        .bind(s.api_standard_id)
        .bind(&s.model)
        .bind(s.dimensions)
        .bind(s.context_limit)
        .bind(&s.description)
        .bind(update.updated)
        .fetch_one(&mut *self.tx)
        .await
        .context("updating a definition")
    }

    /// Creates instances; their ids by uid.
    pub async fn insert_instances(
        &mut self,
        rows: &[NewInstance],
    ) -> anyhow::Result<HashMap<String, i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let columns = service_columns(rows.iter(), |r| &r.service);
        let created: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO instances (uid, owner_id, handle, definition_id, endpoint, \
                 api_standard_id, model, dimensions, context_limit, description, \
                 api_key_ciphertext, api_key_key_id, create_time, update_time) \
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
                 $6::bigint[], $7::text[], $8::integer[], $9::integer[], $10::text[], $11::bytea[], \
                 $12::text[], $13::timestamptz[], $14::timestamptz[]) \
             RETURNING uid::text, id",
        )
        .bind(rows.iter().map(|r| r.uid.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.owner_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.definition_id).collect::<Vec<_>>())
        .bind(columns.endpoints)
        .bind(columns.standards)
        .bind(columns.models)
        .bind(columns.dimensions)
        .bind(columns.context_limits)
        .bind(columns.descriptions)
        .bind(
            rows.iter()
                .map(|r| r.sealed.as_ref().map(|s| s.ciphertext.as_slice()))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.sealed.as_ref().map(|s| s.key_id.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.times.created).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.updated).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("creating instances")?;
        self.wrote(super::Table::Instances, created.len()).await?;
        Ok(created.into_iter().collect())
    }

    /// Lays a changed source instance over the one it became; its new revision.
    pub async fn update_instance(&mut self, update: &ServiceUpdate) -> anyhow::Result<i64> {
        let s = &update.service;
        let (change_key, sealed) = match &update.key {
            None => (false, None),
            Some(sealed) => (true, sealed.as_ref()),
        };
        sqlx::query_scalar(
            "UPDATE instances SET endpoint = $2, api_standard_id = $3, model = $4, \
                 dimensions = $5, context_limit = $6, description = $7, definition_id = $8, \
                 api_key_ciphertext = CASE WHEN $9 THEN $10 ELSE api_key_ciphertext END, \
                 api_key_key_id = CASE WHEN $9 THEN $11 ELSE api_key_key_id END, \
                 revision = revision + 1, update_time = $12 WHERE id = $1 RETURNING revision",
        )
        .bind(update.id)
        .bind(&s.endpoint)
        .bind(s.api_standard_id)
        .bind(&s.model)
        .bind(s.dimensions)
        .bind(s.context_limit)
        .bind(&s.description)
        .bind(update.definition_id)
        .bind(change_key)
        .bind(sealed.map(|s| s.ciphertext.as_slice()))
        .bind(sealed.map(|s| s.key_id.as_str()))
        .bind(update.updated)
        .fetch_one(&mut *self.tx)
        .await
        .context("updating an instance")
    }

    /// The uid and stored key of each of these instances, to compare with the source's key.
    pub async fn instance_keys(
        &mut self,
        ids: &[i64],
    ) -> anyhow::Result<HashMap<i64, (String, Option<Sealed>)>> {
        let rows: Vec<StoredKeyRow> = sqlx::query_as(
            "SELECT id, uid::text, api_key_ciphertext, api_key_key_id FROM instances \
             WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&mut *self.tx)
        .await
        .context("reading stored keys")?;
        Ok(rows
            .into_iter()
            .map(|(id, uid, ciphertext, key_id)| {
                let sealed = ciphertext
                    .zip(key_id)
                    .map(|(ciphertext, key_id)| Sealed { key_id, ciphertext });
                (id, (uid, sealed))
            })
            .collect())
    }
}
