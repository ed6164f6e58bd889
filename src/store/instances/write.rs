//! Changing instances: update (fields and key) and delete, each a [`Change`] that locks the row,
//! asks the policy, checks the etag, writes and records its audit event in one transaction.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use crate::{
    domain::{
        DomainError,
        access::InstanceAction,
        audit::Audit,
        caller::Caller,
        instance::{ApiKeyChange, Instance, InstanceChange},
        names::InstanceName,
    },
    store::{
        Store,
        change::Change,
        dependents::{self, Revoked},
        errors,
    },
    vault::KeyRing,
};

impl Store {
    /// Read-modify-write, for writers and up: `change_spec` sees the instance as the caller does
    /// (after the etag check) and returns the new spec, what happens to the key and the release
    /// opt-in.
    pub async fn update_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        etag: &str,
        ring: &KeyRing,
        change_spec: impl FnOnce(&Instance) -> Result<InstanceChange, DomainError>,
    ) -> Result<Instance, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let (id, current) =
            Self::lock_for(change.tx(), caller, name, InstanceAction::Write).await?;
        change.check_etag(etag, &current)?;
        let InstanceChange {
            spec,
            key: key_change,
            allow_credential_release,
        } = change_spec(&current)?;
        let mut details = Vec::new();
        match &key_change {
            ApiKeyChange::Keep => {}
            ApiKeyChange::Replace(_) => details.push("api_key replaced"),
            ApiKeyChange::Remove => details.push("api_key removed"),
        }
        if allow_credential_release != current.allow_credential_release {
            details.push(if allow_credential_release {
                "credential release allowed"
            } else {
                "credential release disallowed"
            });
        }
        let detail = details.join("; ");
        let tx = change.tx();
        // One round trip: the standard is looked up in the statement (an unknown one leaves it
        // NULL, which the column refuses), and the new version comes back with it. The caller
        // sees the instance as locked above, with the new fields: no read after the write.
        let standard = spec.api_standard.0.as_str();
        let (revision, update_time): (i64, DateTime<Utc>) = sqlx::query_as(
            "UPDATE instances SET endpoint = $2, \
             api_standard_id = (SELECT id FROM api_standards WHERE handle = $3), model = $4, \
             dimensions = $5, context_limit = $6, description = $7, allow_credential_release = $8, \
             revision = revision + 1, update_time = clock_timestamp() WHERE id = $1 \
             RETURNING revision, update_time",
        )
        .bind(id)
        .bind(&spec.endpoint)
        .bind(standard)
        .bind(&spec.model)
        .bind(spec.dimensions)
        .bind(spec.context_limit)
        .bind(&spec.description)
        .bind(allow_credential_release)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| match errors::sqlstate(&e).as_deref() {
            Some(errors::NOT_NULL_VIOLATION) => DomainError::invalid(
                "instance.api_standard",
                format!("unknown API standard apiStandards/{standard}"),
            ),
            _ => errors::on_reference(e, "instance.api_standard"),
        })?;
        let has_api_key = match &key_change {
            ApiKeyChange::Keep => current.has_api_key,
            ApiKeyChange::Replace(_) => true,
            ApiKeyChange::Remove => false,
        };
        Self::store_key(tx, id, &current.uid, key_change, ring).await?;
        change.commit(&detail).await?;
        Ok(Instance {
            spec,
            has_api_key,
            allow_credential_release,
            revision,
            update_time,
            ..current
        })
    }

    /// Deletes an instance (and its shares), for owners and co-owners. While projects use it,
    /// refused, or with `force` they are detached.
    pub async fn delete_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        etag: &str,
        force: bool,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let (id, current) =
            Self::lock_for(change.tx(), caller, name, InstanceAction::Manage).await?;
        change.check_etag(etag, &current)?;
        let dependents = dependents::dependents(change.tx(), Revoked::Instance(id)).await?;
        dependents::refuse_or_detach(
            &mut change,
            caller,
            dependents,
            force,
            &format!("{name} cannot be deleted"),
            &format!("{name} was deleted"),
        )
        .await?;
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id)
            .execute(&mut **change.tx())
            .await
            .map_err(|e| errors::on_delete(e, &name.to_string()))?;
        change.commit("deleted with its shares").await
    }

    async fn store_key(
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
        uid: &str,
        change: ApiKeyChange,
        ring: &KeyRing,
    ) -> Result<(), DomainError> {
        let (ciphertext, key_id) = match change {
            ApiKeyChange::Keep => return Ok(()),
            ApiKeyChange::Remove => (None, None),
            ApiKeyChange::Replace(api_key) => {
                let sealed = ring.seal(&api_key, uid);
                (Some(sealed.ciphertext), Some(sealed.key_id))
            }
        };
        sqlx::query(
            "UPDATE instances SET api_key_ciphertext = $2, api_key_key_id = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(ciphertext)
        .bind(key_id)
        .execute(&mut **tx)
        .await
        .map_err(errors::db)?;
        Ok(())
    }
}
