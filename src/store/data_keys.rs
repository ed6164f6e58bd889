//! The `data_keys` table (KEY_SOURCE=vault-transit): data keys kept wrapped by transit, one of
//! them primary. The vault decides what a data key is; this file only stores and moves rows.
//! Every change is on the audit trail, as the rotation of the keys it seals is.

use super::{Store, change::Change, errors};
use crate::{
    domain::{DomainError, audit::Audit},
    vault::wrapper::{DataKeyState, StoredDataKey, WrappedKey},
};

/// The audit trail's resource for data keys.
const RESOURCE: &str = "dataKeys";

type Row = (String, String, i32, String);

fn from_row((id, ciphertext, version, state): Row) -> Result<StoredDataKey, DomainError> {
    let state = DataKeyState::parse(&state)
        .ok_or_else(|| DomainError::Internal(format!("data key {id} has state {state:?}")))?;
    Ok(StoredDataKey {
        id,
        wrapped: WrappedKey {
            ciphertext,
            version,
        },
        state,
    })
}

impl Store {
    /// Every data key, the primary first, then by age.
    pub async fn data_keys(&self) -> Result<Vec<StoredDataKey>, DomainError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, wrapped, wrapped_version, state FROM data_keys \
             ORDER BY state = 'primary' DESC, created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?;
        rows.into_iter().map(from_row).collect()
    }

    /// One data key by id, whatever its state (a replica meeting a key sealed under a data key
    /// made after it started).
    pub async fn data_key(&self, id: &str) -> Result<Option<StoredDataKey>, DomainError> {
        let row: Option<Row> = sqlx::query_as(
            "SELECT id, wrapped, wrapped_version, state FROM data_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?;
        row.map(from_row).transpose()
    }

    /// Stores `key` as the first primary unless another replica stored one first: `false` then
    /// (the caller reads the winner's).
    pub async fn insert_first_data_key(
        &self,
        audit: &Audit,
        id: &str,
        wrapped: &WrappedKey,
    ) -> Result<bool, DomainError> {
        let mut change = Change::begin(self, audit, RESOURCE).await?;
        let inserted = sqlx::query(
            "INSERT INTO data_keys (id, wrapped, wrapped_version, state) \
             VALUES ($1, $2, $3, 'primary') ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&wrapped.ciphertext)
        .bind(wrapped.version)
        .execute(&mut **change.tx())
        .await
        .map_err(errors::db)?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        change
            .commit(&format!(
                "data key {id} made primary (wrapped under transit key version {})",
                wrapped.version
            ))
            .await?;
        Ok(true)
    }

    /// Makes `id` the primary data key in one transaction: the primary before it becomes
    /// previous (it still opens what it sealed).
    pub async fn promote_new_data_key(
        &self,
        audit: &Audit,
        id: &str,
        wrapped: &WrappedKey,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, RESOURCE).await?;
        let tx = change.tx();
        let demoted: Vec<String> = sqlx::query_scalar(
            "UPDATE data_keys SET state = 'previous' WHERE state = 'primary' RETURNING id",
        )
        .fetch_all(&mut **tx)
        .await
        .map_err(errors::db)?;
        sqlx::query(
            "INSERT INTO data_keys (id, wrapped, wrapped_version, state) VALUES ($1, $2, $3, 'primary')",
        )
        .bind(id)
        .bind(&wrapped.ciphertext)
        .bind(wrapped.version)
        .execute(&mut **tx)
        .await
        .map_err(errors::db)?;
        let mut detail = format!(
            "data key {id} made primary (wrapped under transit key version {})",
            wrapped.version
        );
        if !demoted.is_empty() {
            detail.push_str(&format!("; {} now previous", demoted.join(", ")));
        }
        change.commit(&detail).await
    }

    /// Retires every previous data key that seals no stored key; returns their ids. A replica
    /// that has not yet seen the new primary may still seal under a retired key: such a key is
    /// still opened (see `keys`), and the next rotation moves it.
    pub async fn retire_unused_data_keys(&self, audit: &Audit) -> Result<Vec<String>, DomainError> {
        let mut change = Change::begin(self, audit, RESOURCE).await?;
        let retired: Vec<String> = sqlx::query_scalar(
            "UPDATE data_keys AS d SET state = 'retired', retired_at = now() \
             WHERE d.state = 'previous' \
               AND NOT EXISTS (SELECT 1 FROM instances AS i WHERE i.api_key_key_id = d.id) \
             RETURNING d.id",
        )
        .fetch_all(&mut **change.tx())
        .await
        .map_err(errors::db)?;
        if retired.is_empty() {
            return Ok(retired);
        }
        change
            .commit(&format!(
                "data key(s) {} retired (no stored key uses them)",
                retired.join(", ")
            ))
            .await?;
        Ok(retired)
    }

    /// Replaces the wrapped form of `id` if it is still `before` (a concurrent rewrap wins
    /// otherwise): whether it was replaced.
    pub async fn rewrap_data_key(
        &self,
        audit: &Audit,
        id: &str,
        before: &WrappedKey,
        after: &WrappedKey,
    ) -> Result<bool, DomainError> {
        let mut change = Change::begin(self, audit, RESOURCE).await?;
        let replaced = sqlx::query(
            "UPDATE data_keys SET wrapped = $3, wrapped_version = $4 WHERE id = $1 AND wrapped = $2",
        )
        .bind(id)
        .bind(&before.ciphertext)
        .bind(&after.ciphertext)
        .bind(after.version)
        .execute(&mut **change.tx())
        .await
        .map_err(errors::db)?
        .rows_affected();
        if replaced == 0 {
            return Ok(false);
        }
        change
            .commit(&format!(
                "data key {id} rewrapped from transit key version {} to {}",
                before.version, after.version
            ))
            .await?;
        Ok(true)
    }
}
