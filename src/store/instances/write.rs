//! Changing instances: update (fields and key), optimistic (read, decide, then one statement
//! that writes the row and its audit event only if nothing moved, group-committed with the
//! updates that arrive with it, see `update_batches.rs`; see [`Store::update_instance`]), and
//! delete, a [`Change`] that locks the row, asks the policy,
//! checks the etag, writes and records its audit event in one transaction.

use crate::{
    domain::{
        DomainError,
        access::{self, InstanceAction},
        audit::{Audit, resource_owner},
        caller::Caller,
        check_etag,
        instance::{ApiKeyChange, Instance, InstanceChange},
        names::InstanceName,
    },
    store::{
        Store,
        change::Change,
        dependents::{self, Revoked},
        errors,
        group_commit::BatchOutcome,
        instances::{
            last_test_of,
            update_batches::{UpdateValues, update_one},
            update_hints::UpdateHints,
        },
        quotas,
    },
    vault::KeyRing,
};

/// How many times an update reads and writes without a lock before its last attempt, which
/// locks the row (and so cannot lose to another write).
const UPDATE_ATTEMPTS: usize = 3;

impl Store {
    /// Read-modify-write, for writers and up: `change_spec` sees the instance as the caller does
    /// (after the etag check) and returns the new spec, what happens to the key and the release
    /// opt-in.
    ///
    /// Optimistic, so that a write holds the row only for one statement and costs at most two
    /// round trips: the instance is read without a lock, the policy and the etag decide, and one
    /// statement writes the new fields and the audit event *if* the row is still at the version
    /// read and the caller's share still gives the role decided on. If another write came
    /// between, the attempt starts over from a new read (where an etag, if sent, now refuses);
    /// the last attempt locks the row first, so an unconditional update never fails for losing
    /// races. A caller's next update of an instance starts from the version it last wrote
    /// ([`UpdateHints`]) instead of the read: one round trip.
    pub async fn update_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        etag: &str,
        ring: &KeyRing,
        change_spec: impl Fn(&Instance) -> Result<InstanceChange, DomainError>,
    ) -> Result<Instance, DomainError> {
        let hint_key = UpdateHints::key(caller, name);
        let mut hint = hint_key
            .as_ref()
            .and_then(|key| self.update_hints.take(key));
        let mut attempt = 0;
        loop {
            // A hint is an extra attempt: it does not count against the reads.
            let hinted = hint.take();
            if hinted.is_none() {
                attempt += 1;
            }
            let mut locked = if attempt == UPDATE_ATTEMPTS {
                Some(self.pool.begin().await.map_err(errors::db)?)
            } else {
                None
            };
            let from_hint = hinted.is_some();
            let current = match (locked.as_mut(), hinted) {
                (Some(tx), _) => Self::lock_for(tx, caller, name, InstanceAction::Write)
                    .await
                    .map(|(_, instance)| Some(instance)),
                (None, Some(hinted)) => Ok(Some(hinted)),
                (None, None) => self.find_instance(caller, name).await,
            }?;
            let decided = decide(current, name, etag, &change_spec);
            let (current, change) = match decided {
                Ok(decided) => decided,
                // Decided on a hint, a refusal may be the hint's age: decide again on a read.
                Err(_) if from_hint => continue,
                Err(refused) => return Err(refused),
            };
            let (share_grantee, share_role) = share_check(caller, &current).unzip();
            let (key_changes, ciphertext, key_id) = match &change.key {
                ApiKeyChange::Keep => (false, None, None),
                ApiKeyChange::Remove => (true, None, None),
                ApiKeyChange::Replace(api_key) => {
                    let sealed = ring.seal(api_key, &current.uid);
                    (true, Some(sealed.ciphertext), Some(sealed.key_id))
                }
            };
            let resource = name.to_string();
            let values = UpdateValues {
                id: current.sequence,
                read_revision: current.revision,
                endpoint: change.spec.endpoint.clone(),
                standard: change.spec.api_standard.0.as_str().to_owned(),
                model: change.spec.model.clone(),
                dimensions: change.spec.dimensions,
                context_limit: change.spec.context_limit,
                description: change.spec.description.clone(),
                allow_credential_release: change.allow_credential_release,
                quota: quotas::quota_to_json(change.quota.as_ref()),
                key_changes,
                ciphertext,
                key_id,
                share_grantee,
                share_role,
                audit_caller: audit.caller.clone(),
                audit_method: audit.method,
                resource_owner: resource_owner(&resource).map(str::to_owned),
                resource,
                detail: update_detail(&current, &change),
                audit_subject: audit.subject.clone(),
            };
            let written = match locked.as_mut() {
                Some(tx) => update_one(&mut **tx, &values).await?,
                // Without a lock, updates that arrive together are written together.
                None => match self.update_batches.submit(values).await {
                    BatchOutcome::Done(updated) => Some(updated),
                    BatchOutcome::Unavailable => return Err(DomainError::Unavailable),
                    BatchOutcome::RunAlone(values) => update_one(&self.pool, &values).await?,
                },
            };
            if let Some(tx) = locked {
                tx.commit().await.map_err(errors::db)?;
            }
            let Some(written) = written else {
                if attempt >= UPDATE_ATTEMPTS {
                    // The last attempt held the row's lock from its read to its write.
                    return Err(DomainError::Internal(format!(
                        "{name} changed under its own lock"
                    )));
                }
                continue;
            };
            let has_api_key = match &change.key {
                ApiKeyChange::Keep => current.has_api_key,
                ApiKeyChange::Replace(_) => true,
                ApiKeyChange::Remove => false,
            };
            let updated = Instance {
                spec: change.spec,
                has_api_key,
                allow_credential_release: change.allow_credential_release,
                quota: change.quota,
                revision: written.revision,
                update_time: written.update_time,
                // Recorded by TestInstance without a new version: as written, not as read.
                last_test: last_test_of(
                    written.last_test_time,
                    written.last_test_code,
                    written.last_test_message,
                    written.last_test_dimensions,
                    written.last_test_latency_ms,
                ),
                ..current
            };
            if let Some(key) = hint_key {
                self.update_hints.keep(key, updated.clone());
            }
            return Ok(updated);
        }
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
}

/// Whether `caller` may write `current` (`None`: not found) as `etag` asks, and what the change
/// is.
fn decide(
    current: Option<Instance>,
    name: &InstanceName,
    etag: &str,
    change_spec: impl Fn(&Instance) -> Result<InstanceChange, DomainError>,
) -> Result<(Instance, InstanceChange), DomainError> {
    access::authorize_instance(
        current.as_ref().map(|instance| instance.access_role),
        InstanceAction::Write,
        name,
    )?;
    let current = current.ok_or_else(|| access::hidden(name))?;
    check_etag(etag, &current.etag(), &name.to_string())?;
    let change = change_spec(&current)?;
    Ok((current, change))
}

/// The share role `caller` holds `current` by, if that is where its role comes from.
fn share_check(caller: &Caller, current: &Instance) -> Option<(i64, &'static str)> {
    match caller {
        Caller::User(user) if !caller.is_admin() && !caller.owns(&current.name.owner) => {
            Some((user.id, current.access_role.as_str()))
        }
        _ => None,
    }
}

/// The audit event's detail: what happened to the key and to the release opt-in.
fn update_detail(current: &Instance, change: &InstanceChange) -> String {
    let mut details: Vec<String> = Vec::new();
    match &change.key {
        ApiKeyChange::Keep => {}
        ApiKeyChange::Replace(_) => details.push("api_key replaced".to_owned()),
        ApiKeyChange::Remove => details.push("api_key removed".to_owned()),
    }
    if change.quota != current.quota {
        details.push(match &change.quota {
            Some(quota) => format!("quota {}", quotas::describe(quota)),
            None => "no quota".to_owned(),
        });
    }
    if change.allow_credential_release != current.allow_credential_release {
        details.push(
            if change.allow_credential_release {
                "credential release allowed"
            } else {
                "credential release disallowed"
            }
            .to_owned(),
        );
    }
    details.join("; ")
}
